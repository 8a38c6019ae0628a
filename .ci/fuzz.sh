#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target of tests/fuzz/ for FUZZ_SECS seconds
# (default 120) each, seeded from tests/fuzz/corpus/<target>/ (read-only;
# what the fuzzer adds goes to target/fuzz-corpus/<target>/ and is kept
# between runs). A crash, timeout or out-of-memory input is copied to
# tests/fuzz/regressions/<target>/, where `cargo test --test fuzz_api`
# replays it; then this exits non-zero. FUZZ_TARGETS picks targets.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECS:-120}
targets=${FUZZ_TARGETS:-manifest agent_api envoy_render units execute}

# Nightly and cargo-fuzz, idempotently (fast when present).
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal || exit 1
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked || exit 1

# No sanitizer: the code is safe Rust (the one unsafe module is syscalls the
# targets never reach), and without ASan the targets build faster and run
# ~2x more inputs. Panics, stack overflows, timeouts and OOMs are caught all
# the same; debug assertions (-a) add overflow checks.
flags=(--fuzz-dir tests/fuzz --sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}" || exit 1
bin=tests/fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

failed=()
for t in $targets; do
  work=target/fuzz-corpus/$t
  artifacts=tests/fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts"
  before=$(ls "$artifacts" | sort)
  echo "== fuzz $t for ${secs}s"
  # The binary cargo-fuzz built, run directly: `cargo fuzz run` would
  # rebuild first whenever src/ changed since the build. One process, one
  # core: no -jobs/-workers (with them libFuzzer forks workers that log to
  # ./fuzz-N.log).
  dict=()
  case $t in manifest | envoy_render | execute) dict=(-dict=tests/fuzz/manifest.dict) ;; esac
  "$bin/$t" "$work" "tests/fuzz/corpus/$t" -artifact_prefix="$artifacts/" "${dict[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 >"target/fuzz-$t.log" 2>&1
  status=$?
  grep -aE 'DONE|Done [0-9]+ runs|stat::number_of_executed_units|panicked at|ERROR|Test unit written|SUMMARY' \
    "target/fuzz-$t.log" | head -20
  new=$(comm -13 <(echo "$before") <(ls "$artifacts" | sort) | grep -E '^(crash|timeout|oom|leak)-' || true)
  if [ -n "$new" ]; then
    mkdir -p "tests/fuzz/regressions/$t"
    for f in $new; do cp "$artifacts/$f" "tests/fuzz/regressions/$t/$f"; done
    echo "!! fuzz $t FOUND $(echo "$new" | wc -l) failing input(s), kept in tests/fuzz/regressions/$t/:"
    echo "$new" | sed 's/^/     /'
    echo "   replay: cargo test --test fuzz_api fuzz_corpus_and_regressions_replay"
    echo "   or:     cargo +nightly fuzz run ${flags[*]} $t tests/fuzz/regressions/$t/<file>"
    failed+=("$t")
  elif [ "$status" -ne 0 ]; then
    echo "!! fuzz $t exited with $status and left no input (see target/fuzz-$t.log)"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "make fuzz: failing inputs found by: ${failed[*]} (logs: target/fuzz-<target>.log)"
  exit 1
fi
echo "make fuzz: no failures in ${secs}s per target (logs: target/fuzz-<target>.log)"
