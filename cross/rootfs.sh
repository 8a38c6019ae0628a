#!/usr/bin/env bash
# Build a minimal robot root filesystem: busybox-static as init and shell, the
# static k8s4r agent, an inittab that respawns it, config under /etc/k8s4r and
# state under /var/lib/k8s4r. Optionally pack it as a tarball to flash.
#
#   cross/rootfs.sh --arch x86_64 --agent target/x86_64-unknown-linux-musl/release/k8s4r-agent \
#       --out target/rootfs-x86_64 [--tar target/k8s4r-rootfs-x86_64.tar.gz] \
#       [--job examples/quickstart.yaml] [--server URL --join-token TOKEN --name ROBOT]
#
# The join token (`k8s4r token create`: K8R1<server pin>::<id>.<secret>) may
# come from a file (--join-token-file FILE) to keep it off this host's
# process list. The image holds it in /etc/k8s4r/agent.env (0600) only
# until the robot has registered: the agent then blanks it, and keeps its
# own key in /var/lib/k8s4r (0700).
#
# busybox: the host's Debian busybox-static for x86_64; for aarch64 the
# arm64 busybox-static .deb is fetched with `apt-get download` (needs
# `dpkg --add-architecture arm64`, done by `make tools`).
set -euo pipefail

arch=x86_64 agent="" out="" tar="" job="" server="" token="" name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --agent) agent=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tar) tar=$2; shift 2 ;;
    --job) job=$2; shift 2 ;;
    --server) server=$2; shift 2 ;;
    --join-token) token=$2; shift 2 ;;
    --join-token-file) token=$(tr -d ' \t\r\n' < "$2"); shift 2 ;;
    --name) name=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "rootfs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$agent" ] && [ -n "$out" ] || { echo "rootfs.sh: --agent and --out are required" >&2; exit 2; }
[ -x "$agent" ] || { echo "rootfs.sh: $agent is not an executable" >&2; exit 1; }
# A token without the server's pin (from before the signed robot channel)
# would only make the robot wait for a new one: refuse it here.
case "$token" in
  ""|K8R1*::*.*) ;;
  *) echo "rootfs.sh: the join token has no server pin (K8R1<pin>::<id>.<secret>): create one with \`k8s4r token create\`" >&2; exit 2 ;;
esac

busybox_for_arch() {
  case "$1" in
    x86_64)
      [ "$(uname -m)" = x86_64 ] || { echo "x86_64 busybox only on an x86_64 host" >&2; return 1; }
      command -v busybox ;;
    aarch64)
      local cache
      cache="$(cd "$(dirname "$0")/.." && pwd)/target/busybox-arm64"
      mkdir -p "$(dirname "$cache")"
      # Several images are built at once (the tests): one fills the cache,
      # in a directory of its own renamed into place, while the others wait
      # on the lock; a half-extracted busybox copied into an image dies of
      # SIGBUS under qemu.
      (
        flock 9
        if [ ! -x "$cache/bin/busybox" ]; then
          tmp=$(mktemp -d "$cache.XXXXXX") && chmod 0755 "$tmp"
          (cd "$tmp" && apt-get download busybox-static:arm64 >/dev/null && dpkg-deb -x busybox-static_*_arm64.deb .) \
            || { rm -rf "$tmp"; echo "rootfs.sh: cannot get busybox-static:arm64 (needs 'dpkg --add-architecture arm64' and apt-get update; make tools does it)" >&2; exit 1; }
          rm -rf "$cache" && mv "$tmp" "$cache"
        fi
      ) 9>"$cache.lock" || return 1
      echo "$cache/bin/busybox" ;;
    *) echo "unsupported arch $1" >&2; return 1 ;;
  esac
}

bb=$(busybox_for_arch "$arch")
rm -rf "$out"
mkdir -p "$out"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/k8s4r,var/lib/k8s4r,var/log,proc,sys,dev,tmp,run,root}
chmod 1777 "$out/tmp"
chmod 0700 "$out/var/lib/k8s4r"
install -m 0755 "$bb" "$out/bin/busybox"
install -m 0755 "$agent" "$out/usr/bin/k8s4r-agent"

# Applet links. The host busybox lists the applets (the arm64 one may not run
# here); Debian builds both from the same config.
for applet in $(busybox --list-full 2>/dev/null || true); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$out/$(dirname "$applet")"
  ln -sf /bin/busybox "$out/$applet"
done
ln -sf /bin/busybox "$out/sbin/init"

cat > "$out/etc/inittab" <<'INITTAB'
# busybox init: mount the basics, then keep the agent running.
::sysinit:/etc/init.d/rcS
::respawn:/etc/init.d/k8s4r-agent
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/k8s4r-shutdown
INITTAB

cat > "$out/etc/init.d/rcS" <<'RCS'
#!/bin/sh
# Early boot: pseudo filesystems and writable scratch space.
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
mkdir -p /var/lib/k8s4r /var/log
[ -f /etc/hostname ] && hostname -F /etc/hostname
echo "rcS: boot done" > /run/boot-done
RCS

cat > "$out/etc/init.d/k8s4r-agent" <<'AGENT'
#!/bin/sh
# Started (and restarted) by init. Settings come from /etc/k8s4r/agent.env:
#   K8S4R_SERVER, K8S4R_JOIN_TOKEN, K8S4R_NAME, K8S4R_LABELS  -> connected mode
#   K8S4R_JOB_FILE                                             -> standalone run -f
# The agent reads the file itself (a job file without a server: it runs
# `run -f`) and re-reads it while it has nothing to do (no server, no job
# file yet): nothing is exported from here, as a value exported at boot
# would shadow the file's later fixes.
. /etc/k8s4r/agent.env
data=${K8S4R_DATA_DIR:-/var/lib/k8s4r}
exec /usr/bin/k8s4r-agent --data-dir "$data" >>/var/log/k8s4r-agent.log 2>&1
AGENT

cat > "$out/etc/init.d/k8s4r-shutdown" <<'SHUT'
#!/bin/sh
# On poweroff/reboot: stop every task the agent started, gracefully.
/usr/bin/k8s4r-agent stop-all --data-dir "${K8S4R_DATA_DIR:-/var/lib/k8s4r}" >>/var/log/k8s4r-agent.log 2>&1
echo "shutdown: tasks stopped" >> /var/log/k8s4r-agent.log
SHUT
chmod 0755 "$out"/etc/init.d/*

{
  echo "# k8s4r agent settings, read by /etc/init.d/k8s4r-agent"
  echo "K8S4R_SERVER=$server"
  echo "K8S4R_JOIN_TOKEN=$token"
  echo "K8S4R_NAME=${name:-robot}"
  echo "K8S4R_DATA_DIR=/var/lib/k8s4r"
  if [ -n "$job" ]; then
    install -m 0644 "$job" "$out/etc/k8s4r/job.yaml"
    echo "K8S4R_JOB_FILE=/etc/k8s4r/job.yaml"
  else
    echo "K8S4R_JOB_FILE="
  fi
} > "$out/etc/k8s4r/agent.env"
# It holds the join token until the agent has registered (then the agent
# blanks it): readable by root only.
chmod 0600 "$out/etc/k8s4r/agent.env"
echo "${name:-robot}" > "$out/etc/hostname"
# k8s4r-proxy: the groups' Envoys run as this dedicated account (the
# agent's --proxy-user default when it exists), not as root or nobody.
printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "k8s4r-proxy:x:998:998::/nonexistent:/bin/false" \
  "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" > "$out/etc/passwd"
printf '%s\n' "root:x:0:" "k8s4r-proxy:x:998:" "nogroup:x:65534:" > "$out/etc/group"

if [ -n "$tar" ]; then
  tar -C "$out" --numeric-owner -czf "$tar" .
  echo "rootfs: $tar ($(du -h "$tar" | cut -f1))"
fi
echo "rootfs: $out"
