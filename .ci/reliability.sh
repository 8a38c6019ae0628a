#!/usr/bin/env bash
# `make reliability`: run the fault, bad-input and isolation tests and print
# one table (also written to target/reliability.md): what is attacked, what
# must happen, the test that proves it, and whether it passed now.
set -uo pipefail
cd "$(dirname "$0")/.."

# area | fault or input | what must happen | test binary | test name
cases=(
  "fault|agent kill -9 with 10 running tasks|same 10 pids re-adopted, none duplicated, a later exit noticed|agent_run|agent_killed_with_9_readopts_its_ten_tasks"
  "fault|task exits while the agent is down|reported, restart policy applied|agent_run|a_task_that_ended_while_the_agent_was_down_is_reported_and_restarted"
  "fault|agent kill -9 under busybox init|init respawns it, task re-adopted, poweroff stops all|robot_image|x86_64_image_boots_respawns_the_agent_and_powers_off_cleanly"
  "fault|server down, task finishes, agent kill -9, server back|status delivered exactly once, nothing lost|e2e_connected|statuses_survive_a_server_outage_and_an_agent_kill"
  "fault|server kill -9 after acknowledged writes|every acknowledged write still there|server_api|acknowledged_writes_survive_a_crash"
  "fault|server restart|robots, tokens and assignments intact|server_fleet|restart_keeps_robots_tokens_and_assignments"
  "fault|SQLite on a full disk (2 MiB tmpfs)|5xx Status naming the cause, nothing lost, recovers when space returns|server_full_disk|a_full_disk_gives_clear_errors_and_loses_nothing"
  "fault|Envoy kill -9|proxy brought back, same config|envoy_live|after_kill_9_prepare_and_start_bring_the_proxy_back"
  "fault|robot offline|tasks Unknown then Lost, service tasks moved|server_fleet|offline_robots_lose_tasks_and_service_jobs_move"
  "fault|a real robot goes silent, then returns|task moves to the other robot; the returning one stops its copy|e2e_connected|a_lost_robots_service_task_moves_and_never_runs_twice"
  "fault|network cut (netns + veth down) past offline, then back|tasks keep running; replace:false keeps the process; one copy each after|e2e_connected|a_network_cut_keeps_tasks_running_and_nothing_runs_twice_after"
  "fault|etcd leader replica kill -9 during Job creates; an etcd member killed|new leader in ~3 s, every Job scheduled exactly once, service continues|server_etcd_ha|replicas_share_one_etcd_and_survive_failures"
  "fault|timeout on a 3-generation process tree|whole tree killed|agent_run|timeout_kills_a_process_tree_of_three_generations"
  "fault|task printing 50 MiB|log files stay under the cap|agent_run|log_rotation_cap_holds_under_50_mib_of_output"
  "bad input|malformed JSON/YAML, wrong types, huge bodies, bad UTF-8, unknown kinds|4xx Status naming the field, 413 on size|server_api|validation_errors_and_hostile_input"
  "bad input|3,000 mutated manifests, deep nesting, invalid UTF-8|errors, never a panic|fuzz_api|mutated_manifests_never_panic"
  "bad input|path traversal in templates and artifacts, symlinks|refused, nothing written outside|agent_run|path_traversal_is_refused_lexically_and_through_symlinks"
  "bad input|artifact checksum mismatch|task fails clearly, nothing half-written|agent_run|templates_and_artifacts_are_in_place_and_a_bad_checksum_fails_cleanly"
  "isolation|robot token used on another robot|401/403, notAssigned|server_fleet|robots_only_see_their_own_objects"
  "isolation|API without the operator token|401|server_api|operator_token_guards_the_api"
  "isolation|task with user: set, agent root|runs unprivileged|agent_run|tasks_run_as_their_user_when_the_agent_is_root"
  "isolation|Envoy admin|private unix socket (0600), no TCP port|envoy_live|admin_is_a_private_unix_socket_and_flags_avoid_collisions"
  "isolation|wrong or foreign SPIFFE ID|mTLS refused, no byte reaches PostgreSQL|e2e_postgres|"
)

mkdir -p target
out=target/reliability.md
{
  echo "| area | fault or input | what must happen | test | result |"
  echo "|---|---|---|---|---|"
} > "$out"
pass=0 fail=0
for c in "${cases[@]}"; do
  IFS='|' read -r area what expect bin name <<<"$c"
  filter=()
  [ -n "$name" ] && filter=("$name" --exact)
  if cargo test --quiet --test "$bin" -- "${filter[@]}" >/tmp/reliability.$$.log 2>&1; then
    result=pass; pass=$((pass + 1))
  else
    result="**FAIL**"; fail=$((fail + 1))
    tail -20 /tmp/reliability.$$.log >&2
  fi
  echo "| $area | $what | $expect | \`$bin${name:+::$name}\` | $result |" >> "$out"
done
rm -f /tmp/reliability.$$.log
cat "$out"
echo
echo "reliability: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
