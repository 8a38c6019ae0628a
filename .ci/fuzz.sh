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
targets=${FUZZ_TARGETS:-manifest agent_api envoy_render units}

# Nightly and cargo-fuzz, idempotently (fast when present).
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal || exit 1
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked || exit 1

# No sanitizer: the code is safe Rust (the one unsafe module is syscalls the
# targets never reach), and without ASan the targets build faster and run
# ~2x more inputs. Panics, stack overflows, timeouts and OOMs are caught all
# the same; debug assertions (-a) add overflow checks.
# One fuzzing process at a time, one core: no -jobs/-workers (with -jobs
# libFuzzer forks workers logging to ./fuzz-N.log).
flags=(--fuzz-dir tests/fuzz --sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}" || exit 1

failed=()
for t in $targets; do
  work=target/fuzz-corpus/$t
  artifacts=tests/fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts"
  before=$(ls "$artifacts" | sort)
  echo "== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "tests/fuzz/corpus/$t" -- \
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
    echo "   or:     cargo +nightly fuzz run --fuzz-dir tests/fuzz $t tests/fuzz/regressions/$t/<file>"
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
