#!/usr/bin/env bash
# The agent's own tests as aarch64 binaries under qemu-user (`make
# test-aarch64`; .cargo/config.toml sets the runner). Tests that spawn the
# aarch64 agent need binfmt_misc (`make tools` registers qemu-aarch64 where
# the kernel allows); without it only the unit tests run, and this says so.
#
# Why every run here has a time bound and a run that *hangs* gets one more
# try: qemu-user can hang for ever when a multithreaded guest forks (the
# child never reaches exec, so the parent's spawn waits on its exec-status
# pipe for ever; known qemu-user behaviour, e.g. mamba-org/mamba#1611,
# astral-sh/uv#6105). It cannot happen on aarch64 hardware, and every wait in
# the tests themselves is bounded, so a run that outlives BOUND is the
# emulator. A run that *fails* fails at once, never retried.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
TARGET=aarch64-unknown-linux-musl
BOUND=${K8S4R_AARCH64_BOUND:-600}

if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  select=(--lib --test agent_run --test agent_supervisor)
else
  echo "note: qemu-aarch64 not registered with binfmt_misc: aarch64 unit tests only"
  select=(--lib)
fi

# Build outside the bound: compile time is not the emulator's.
"$CARGO" test --target "$TARGET" --no-default-features "${select[@]}" --no-run

# Run `$@` under the bound; once more only if it was killed for time.
bounded() {
  local rc=0
  for attempt in 1 2; do
    rc=0
    timeout --kill-after=10 "$BOUND" "$@" || rc=$?
    case $rc in
      124 | 137) echo "test-aarch64: '$*' outlived ${BOUND}s under qemu-user (attempt $attempt of 2)" >&2 ;;
      *) return "$rc" ;;
    esac
  done
  return "$rc"
}

bounded "$CARGO" test --target "$TARGET" --no-default-features "${select[@]}"
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  # The release agent runs the quickstart Job to its end.
  d=$(mktemp -d)
  trap 'rm -rf "$d"' EXIT
  bounded qemu-aarch64-static "target/$TARGET/release/k8s4r-agent" run -f examples/quickstart.yaml \
    --data-dir "$d/data" --no-cgroups
fi
