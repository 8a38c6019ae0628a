#!/usr/bin/env bash
# `make demo`: the whole system on this machine, in about a minute.
#   1. a control plane on the embedded SQLite store (loopback, temp dir)
#   2. a join token, and a connected agent registering as robot "demo-robot"
#   3. two Jobs applied (kubectl if installed, else plain HTTP):
#      examples/quickstart.yaml, a plain job (init task, template, 2 replicas),
#      and examples/demo.yaml: an init daemon serves a file, the group's Envoy
#      proxies to it, and the task fetches it through 127.0.0.1:$PROXY_WEB_PORT
#   4. the result, the task's output, then everything is stopped.
# Set KEEP=1 to leave the server and agent running (it prints how to stop).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bins
bin=target/debug
work=$(mktemp -d -t k8s4r-demo.XXXXXX)
# Run as root, the agent starts each group's Envoy as an unprivileged user,
# which must pass through this (0700) directory to its config.
chmod 711 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
server_pid="" agent_pid=""

cleanup() {
  [ -n "${KEEP:-}" ] && return
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  "$bin/k8s4r-agent" stop-all --data-dir "$work/agent" >/dev/null 2>&1 || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_until() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "demo: timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "control plane on $url (SQLite in $work/server)"
"$bin/k8s4r" server --listen "127.0.0.1:$port" --data "$work/server" >"$work/server.log" 2>&1 &
server_pid=$!
wait_until "the server" 20 grep -q "listening on" "$work/server.log"

step "join token"
token=$("$bin/k8s4r" token create --server "$url" 2>/dev/null | tail -n 1)
echo "$token"

step "agent: robot demo-robot (labels demo=true)"
"$bin/k8s4r-agent" --server "$url" --join-token "$token" --name demo-robot --labels demo=true \
  --data-dir "$work/agent" --no-cgroups >"$work/agent.log" 2>&1 &
agent_pid=$!
robot_online() { curl -fsS "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots/demo-robot" | grep -q '"phase":"Online"'; }
wait_until "the robot to come Online" 30 robot_online

kc() { kubectl --server "$url" --cache-dir "$work/kube-cache" "$@"; }
apply() {
  if command -v kubectl >/dev/null 2>&1; then
    KUBECONFIG=/dev/null kc apply -f "$1"
  else
    "$bin/k8s4r" validate -f "$1" >/dev/null
    python3 -c 'import sys,json,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' "$1" |
      curl -fsS -X POST -H 'Content-Type: application/json' --data-binary @- \
        "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs" >/dev/null
    echo "$1 created (kubectl not installed; used the REST API)"
  fi
}
step "apply examples/quickstart.yaml (plain) and examples/demo.yaml (through Envoy)"
apply examples/quickstart.yaml
apply examples/demo.yaml

job_done() { curl -fsS "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/$1" | grep -Eq '"state":"(completed|failed)"'; }
wait_until "the quickstart job to finish" 90 job_done quickstart
wait_until "the demo job to finish" 90 job_done demo

step "result"
if command -v kubectl >/dev/null 2>&1; then
  KUBECONFIG=/dev/null kc get robots,jobs,taskgroups,tasks
else
  curl -fsS "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/demo"; echo
fi

step "agent log"
cat "$work/agent.log"

step "task output, fetched from the robot by the control plane (k8s4r logs TASK)"
"$bin/k8s4r" logs quickstart-hello-r1-greet --server "$url"
"$bin/k8s4r" logs demo-hello-r0-fetch --server "$url"

job_ok() { curl -fsS "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/$1" | grep -q '"state":"completed"'; }
if job_ok quickstart && job_ok demo; then
  step "demo succeeded: both jobs completed; the demo task reached its upstream through the group's Envoy"
else
  step "demo FAILED"; exit 1
fi
if [ -n "${KEEP:-}" ]; then
  echo "left running: server pid $server_pid ($url), agent pid $agent_pid, data in $work"
  echo "stop with: kill $agent_pid $server_pid; $bin/k8s4r-agent stop-all --data-dir $work/agent"
fi
