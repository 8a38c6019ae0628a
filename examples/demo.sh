#!/usr/bin/env bash
# `make demo`: the whole system on this machine, in about a minute, on the
# secure defaults.
#   1. a control plane on the embedded SQLite store (loopback, temp dir):
#      the Kubernetes API over HTTPS with a generated CA, the admin
#      credential in <data>/admin.kubeconfig, the robots' plain-HTTP agent
#      listener beside it
#   2. a join token, and a connected agent registering as robot "demo-robot"
#      on the agent listener
#   3. two Jobs applied through the kubeconfig (kubectl if installed, else
#      curl with the kubeconfig's CA and client certificate):
#      examples/quickstart.yaml, a plain job (init task, template, 2 replicas),
#      and examples/demo.yaml: an init daemon serves a file, the group's Envoy
#      proxies to it, and the task fetches it through 127.0.0.1:$PROXY_WEB_PORT
#   4. the result, the task's output, the dashboard's URL and the token to
#      log in with (the server reads it from --admin-token-file), then
#      everything is stopped.
# Set KEEP=1 to leave the server and agent running (it prints how to stop).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bins
bin=target/debug
work=$(mktemp -d -t k8s4r-demo.XXXXXX)
# Run as root, the agent starts each group's Envoy as an unprivileged user,
# which must pass through this (0700) directory to its config.
chmod 711 "$work"
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

step "control plane (SQLite in $work/server): HTTPS, a generated CA and admin kubeconfig"
# A random admin token for the dashboard's login page (kubectl keeps using
# the kubeconfig's client certificate), in a file only this user can read.
(umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$work/admin-token")
"$bin/k8s4r" server --listen 127.0.0.1:0 --agent-listen 127.0.0.1:0 --data "$work/server" \
  --admin-token-file "$work/admin-token" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
wait_until "the server" 20 grep -q "^export KUBECONFIG=" "$work/server.out"
cat "$work/server.out"
url=$(sed -n 's/^listening on //p' "$work/server.out")
agent_url=$(sed -n 's/^agent channel on //p' "$work/server.out")
KUBECONFIG=$(sed -n 's/^export KUBECONFIG=//p' "$work/server.out")
export KUBECONFIG # kubectl and the k8s4r CLI find the server and credentials there
echo "point kubectl at it: export KUBECONFIG=$KUBECONFIG"

# curl (kubectl's stand-in when it is missing) with the kubeconfig's CA and
# admin client certificate, in files only this user can read.
kubeconfig_field() { sed -n "s/^ *$1: //p" "$KUBECONFIG" | head -n 1 | base64 -d; }
(umask 077
 kubeconfig_field certificate-authority-data >"$work/ca.pem"
 kubeconfig_field client-certificate-data >"$work/admin.pem"
 kubeconfig_field client-key-data >"$work/admin-key.pem")
api() { curl -fsS --cacert "$work/ca.pem" --cert "$work/admin.pem" --key "$work/admin-key.pem" "$@"; }

step "join token (k8s4r token create, through the kubeconfig)"
token=$("$bin/k8s4r" token create 2>/dev/null | tail -n 1)
echo "$token"

step "agent: robot demo-robot (labels demo=true) on the agent listener $agent_url"
"$bin/k8s4r-agent" --server "$agent_url" --join-token "$token" --name demo-robot --labels demo=true \
  --data-dir "$work/agent" --no-cgroups >"$work/agent.log" 2>&1 &
agent_pid=$!
robot_online() { api "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots/demo-robot" | grep -q '"phase":"Online"'; }
wait_until "the robot to come Online" 30 robot_online

kc() { kubectl --cache-dir "$work/kube-cache" "$@"; }
apply() {
  if command -v kubectl >/dev/null 2>&1; then
    kc apply -f "$1"
  else
    "$bin/k8s4r" validate -f "$1" >/dev/null
    python3 -c 'import sys,json,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' "$1" |
      api -X POST -H 'Content-Type: application/json' --data-binary @- \
        "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs" >/dev/null
    echo "$1 created (kubectl not installed; used the REST API)"
  fi
}
step "apply examples/quickstart.yaml (plain) and examples/demo.yaml (through Envoy)"
apply examples/quickstart.yaml
apply examples/demo.yaml

job_done() { api "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/$1" | grep -Eq '"state":"(completed|failed)"'; }
wait_until "the quickstart job to finish" 90 job_done quickstart
wait_until "the demo job to finish" 90 job_done demo

step "result"
if command -v kubectl >/dev/null 2>&1; then
  kc get robots,jobs,taskgroups,tasks
else
  api "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/demo"; echo
fi

step "agent log"
cat "$work/agent.log"

step "task output, fetched from the robot by the control plane (k8s4r logs TASK)"
"$bin/k8s4r" logs quickstart-hello-r1-greet
"$bin/k8s4r" logs demo-hello-r0-fetch

job_ok() { api "$url/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/$1" | grep -q '"state":"completed"'; }
if job_ok quickstart && job_ok demo; then
  step "demo succeeded: both jobs completed; the demo task reached its upstream through the group's Envoy"
else
  step "demo FAILED"; exit 1
fi
step "dashboard"
echo "open $url/ui/ in a browser (trust the cluster CA in $work/ca.pem, or accept the certificate warning)"
echo "log in with the admin token in $work/admin-token:"
echo "  $(cat "$work/admin-token")"
echo "(other users: a --token-auth-file line 'TOKEN,NAME,UID,k8s4r:viewers' or k8s4r:operators)"
[ -n "${KEEP:-}" ] || echo "the server stops now; run KEEP=1 make demo to keep it (and the dashboard) up"
if [ -n "${KEEP:-}" ]; then
  echo "left running: server pid $server_pid ($url, robots on $agent_url), agent pid $agent_pid, data in $work"
  echo "  export KUBECONFIG=$KUBECONFIG; kubectl get robots,jobs,tasks"
  echo "stop with: kill $agent_pid $server_pid; $bin/k8s4r-agent stop-all --data-dir $work/agent"
fi
