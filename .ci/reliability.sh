#!/usr/bin/env bash
# `make reliability`: run the fault, bad-input and isolation tests and print
# one table (also written to target/reliability.md): what is attacked, what
# must happen, the test that proves it, and whether it passed now.
set -uo pipefail
cd "$(dirname "$0")/.."

# area | fault or input | what must happen | test binary | test name
cases=(
  "delta assignments|one task added to a robot with 40, three removed, the kept set tampered while the agent is down, the state file deleted|the answer carries the added task only (< 3 KB) and names the removed ones, their processes stop; a digest mismatch brings the complete set; every task runs once, none twice|delta_assignments|a_real_agent_applies_deltas_and_recovers_from_a_set_that_is_not_the_servers"
  "delta assignments|since forgotten (older than the last two sets), unknown, or no delta=1|the complete set, marked so, digest matching|delta_assignments|the_poll_answers_with_what_changed_when_the_robot_asks_for_deltas"
  "delta assignments|a digest that does not match the kept set|the agent asks for the complete set and keeps running what it had|lib|agent::connected::desired::tests::a_digest_mismatch_asks_for_the_complete_set"
  "agent update|a signed AgentRelease (a patched second build) to a connected robot with two running tasks|the agent execs in place (same pid), the Robot reports the new version, lastUpdate Applied, AgentUpdated event; both tasks keep their pids and never restart; a task killed afterwards is reaped with its real signal|agent_update|a_signed_release_replaces_the_agent_in_place_and_no_task_restarts"
  "agent update|a release that exits at every start (restarted as init would)|three starts, then .prev restored and exec'd; lastUpdate RolledBack, event, release halted; tasks keep pids; not downloaded again|agent_update|a_release_that_dies_at_start_is_rolled_back_after_three_starts"
  "agent update|a new agent whose answers never verify while the server answers, --update-deadline 3s|rolled back at the deadline, same agent pid, tasks keep pids, AgentUpdateRolledBack event|agent_update|a_release_that_never_reaches_the_server_is_rolled_back_at_its_deadline"
  "bad input|an AgentRelease signed by another key|refused before any download: no request for the binary, no swap, no .prev; lastUpdate Refused names the signature; AgentUpdateRefused event|agent_update|a_bad_signature_is_refused_before_any_download"
  "agent update|kill -9 mid download, after verify, after rename, right after exec|the binary in place runs after each kill; the restarted agent resumes (one Range request) and installs; tasks keep pids and never start twice; only update/last.json is left|agent_update|kill_9_at_every_step_leaves_a_working_agent_and_starts_no_task_twice"
  "rollout|a good version, maxParallel 1, three real robots|each robot gets it only after the previous one ran it minHealthyTime; all end on it; Table 3/3 Succeeded|e2e_rollout|a_good_version_rolls_one_robot_at_a_time_each_after_the_previous_is_healthy"
  "rollout|a bad version (exits 1), canary 1, autoRevert|runs on exactly one robot, which goes back; the others never run it; rollout Failed|e2e_rollout|a_bad_canary_with_auto_revert_runs_on_one_robot_only_and_is_reverted"
  "rollout|canary, then pause, promote, resume and revert by k8s4r job|the canary alone until promoted; pause holds the rest; revert puts version 1 on every robot at once|e2e_rollout|canary_promote_pause_resume_and_revert_by_command"
  "rollout|a robot cut off (relay) during a good, then a bad rollout|skipped and counted pending; back, it runs the settled version, never the abandoned one|e2e_rollout|a_robot_cut_off_during_rollouts_ends_on_the_settled_version"
  "rollout|the canary robot cut off while its new version fails|the robot goes back to the previous version on its own while cut off; back online it reports RolledBack and the server fails the rollout|e2e_rollout|a_canary_cut_off_reverts_itself_and_the_server_then_fails_the_rollout"
  "rollout|a task holding k8s4r-update.lock|its robot keeps the old version and the rollout waits (LOCKED 1); lock removed: it goes on; held past lockDeadline: overridden|e2e_rollout|a_locked_robot_is_waited_for_and_overridden_at_its_deadline"
  "agent|http check: 200, 301, 404, a query, a path without / against Python's http.server|2xx/3xx healthy (redirect not followed), 404 unhealthy naming the status, a bad path refused by name|lib|agent::supervisor::checks::tests::http_probes_against_a_real_http_server"
  "agent|http check: a silent server|unhealthy at the check's timeout|lib|agent::supervisor::checks::tests::http_probe_times_out_on_a_silent_server"
  "agent|agent killed between fork and saving state: leftover leaders in /proc (by cwd, by K8S4R_TASK_DIR), the task's own setsid child, strangers|the unit's process is adopted, no second start; children and strangers untouched|lib|agent::supervisor::tests::a_live_process_the_last_agent_did_not_record_is_claimed_and_a_stranger_is_not"
  "agent|a unit name part that is \"..\", \"/x\" or empty|the group fails naming the field; nothing started|lib|agent::reconcile::tests::a_name_that_would_leave_the_data_directory_fails_its_group"
  "agent|an init task fails|the group fails with its reason; no task starts|lib|agent::reconcile::tests::a_failed_init_task_fails_its_group_and_starts_nothing_more"
  "agent|a unit's start cannot be prepared (unknown user)|the unit fails with the reason; no exec|lib|agent::supervisor::tests::a_start_that_cannot_be_prepared_fails_the_unit_with_the_reason"
  "agent|agent restarts with one live and one dead leftover process|live one re-adopted, dead one ended (exit unknown), nothing started twice|lib|agent::supervisor::tests::the_next_supervisor_adopts_a_live_process_and_sees_a_dead_one_ended"
  "bad input|\${VAR} odd forms: unterminated \${, undefined name, \$\${, a value holding \${B}|copied as written, never expanded twice|lib|agent::expand::tests::odd_dollar_forms_are_copied_through"
  "bad input|a manifest repeating \${BIG}|substituted values add at most 1 MiB, the rest kept as written|lib|agent::expand::tests::growth_is_bounded"
  "bad input|garbage, bad chunk sizes, truncated or unparsable HTTP answers (TCP or Envoy's admin socket)|errors, never short bodies or panics|lib|http_client::tests::whole_answers_plain_chunked_and_garbage"
  "api|kubectl logs -f --tail 1 on a real agent's task; kubectl get pods -w and get nodes -w|the newest line, then every new line once and in order, ending by itself when the task completes; the watches show the robot Ready and the pod Running then Completed|server_kubectl|kubectl_follows_logs_and_watches_pods_and_nodes"
  "examples|kubectl apply -f examples/ against a robot labelled like make demo's (real agent, real Envoy)|every Job completes (batch) or runs; no Robot object besides the agent's own|e2e_connected|kubectl_apply_examples_directory_runs_every_example_on_the_demo_robot"
  "dashboard|a real agent, and a robot reporting 1,234 undelivered statuses|the fleet page shows each robot's agent version, its backlog (0 and 1234) and its labels once|ui_browser|a_tasks_log_tail_updates_live_from_a_real_agent"
  "proxy|four gRPC streams stalled against a group's Envoy (the upstream never reads, the client pushes 16 MiB on each)|each stream stays under 1 MiB through (128 KiB measured); Envoy RSS grows at most 2 MiB (+0.93 to +1.25 MiB measured)|envoy_limits|stalled_h2::four_stalled_grpc_streams_add_at_most_2_mib_to_the_proxy"
  "proxy|peers of two groups in one shared Envoy, each group's inbound admitting only its own peer|a peer group A admits is refused by group B's inbound in the handshake, and the other way round; neither task sees the crossing peer|envoy_shared|inbound_rbac_holds_per_group_in_one_shared_envoy"
  "bench|k8s4r bench robots on a pipe, then bench report|plain progress lines at each tenth and at the end, no redraws; report.md links control-plane.svg drawn from the run|server_fleet|bench_tool_runs_a_small_fleet"
  "bench|k8s4r bench soak of 20 robots for 11 s, a new Job version every 5 s; --every 0s, --churn 25h, --duration soon|a sample a second, each version reaches all 20, exit 1 exactly when memory is not flat; soak.svg and the report's Soak section; each bad duration refused naming its flag|server_fleet|soak_tool_samples_a_small_fleet_over_versions_and_draws_it"
  "compat|a label-selector watch while a robot's labels change away and back|DELETED when it stops matching, ADDED when it matches again (decided by the state before each change)|server_api|watch_resumes_and_expires"
  "bench|k8s4r bench robots on a pseudo-terminal|a bar redrawn in place, ending with the plain line|server_fleet|bench_tool_draws_a_progress_bar_on_a_terminal"
  "compat|k8s4r migrate with stderr not a terminal|progress as plain lines ending 'copying objects: N/N copied'|server_etcd_migrate|migrate_moves_a_fleet_from_sqlite_to_etcd"
  "link|20% of connections dropped, 20% of answers cut, 1 s ±0.3 s latency, 64 kbit/s (lossy relay)|a 20-task Job converges: 20 tasks running on the server|link_faults|twenty_tasks_converge_over_a_lossy_slow_narrow_link"
  "link|50 answers stalled (1.5 s, then cut) or cut halfway|every status applied once: the agent's outbox empties, one Completed event per task, no Started repeated|link_faults|statuses_arrive_exactly_once_across_50_stalls_and_resets"
  "link|1 s ±0.5 s added latency each way, --poll-interval 3s (Offline after 9 s)|the robot stays Online for 30 s, at least 5 polls|link_faults|a_second_of_latency_each_way_never_marks_the_robot_offline"
  "link|link cut for K8S4R_LINK_CUT_SECS (600 s in make reliability; 15 s in make test)|robot Offline during the cut, its task keeps running; Online within 90 s after; a Job posted during the cut runs|link_faults|a_cut_link_recovers_and_converges"
  "link|a held poll (default --poll-hold) on a real veth link, --offline-after 6s, 18 s quiet; then the link cut (ip link down), then back|Online throughout on keepalive probes alone (< 2.5 KB crossed in 18 s); Offline within 15 s of the cut; the agent gives up the silent connection and is Online again|link_hold|a_held_poll_keeps_a_quiet_robot_online_on_probes_alone_and_a_cut_link_turns_it_offline"
  "link|a held poll behind a TCP-terminating relay (it answers the server's probes itself, sends none on), --offline-after 6s|the agent gives the silent poll up, says so once, polls once unheld and holds again: Online for 18 s, no backoff, a Job's task runs|link_hold|behind_a_proxy_that_swallows_the_probes_the_agent_falls_back_and_stays_online"
  "link|a held poll gone silent (unit: the poller)|no outage: not offline, no backoff; the next poll waits the interval unheld, the one after holds again|lib|agent::connected::channel_tests::a_silent_held_poll_is_polled_again_unheld_at_once"
  "link|a held request whose connection receives nothing for 2.5 s / one probed every second|the silent one is given up naming the silence, well before its 30 s timeout; the probed one gets its answer at 4 s|lib|http_client::tests::a_held_request_gives_up_on_a_silent_connection_but_not_on_a_probed_one"
  "api|a batch Job completes|kubectl wait --for=condition=Complete returns once the task completes; Robot and Task Ready/Succeeded conditions are waited on too|server_kubectl|kubectl_wait_for_conditions_of_robots_tasks_and_jobs"
  "api|a Task unschedulable|kubectl describe job shows the Task's FailedScheduling warning; another Job's describe does not|server_kubectl|describe_job_shows_the_events_of_its_tasks"
  "bad input|kubectl patch --type=json with a failing test op|nothing applied; the error names the operation and its path; an invalid result is refused by validation|server_kubectl|kubectl_patch_type_json"
  "api|apply --server-side by two managers, then kubectl label|create, update and removal by the owner; 409 naming the field and the other manager; --force-conflicts takes ownership|server_kubectl|kubectl_apply_server_side_create_update_conflict_force"
  "api|kubectl get pods/nodes, logs --tail, delete pod|tables with READY/STATUS/NODE and Ready/robot; the log tail fetched from the robot; delete refused|server_kubectl|core_view_get_pods_nodes_and_kubectl_logs"
  "api|agent labels, kubectl label, an original-CRD Robot manifest|one metadata.labels set that -l and the scheduler match; the operator's values win; operator-only labels claimed by a robot dropped|server_kubectl|one_label_set_per_robot_for_agents_selectors_and_kubectl_label"
  "dashboard|wrong token at the login page; a logged-out session cookie|refused (401 page), no cookie; sent to the login page (303), no data|ui_browser|an_admin_logs_in_sees_the_fleet_and_a_new_job_appears_live"
  "dashboard|a viewer's forged POST (no / wrong / own CSRF token), a POST without cookie, an operator's POST from another origin|403 / 403 / 403 / 401 / 403; the Job kept; no delete control shown to the viewer|ui_browser|a_viewer_sees_no_mutating_control_and_forged_posts_are_refused"
  "dashboard|a task writing its log on a real agent|the task page's log tail grows without reload|ui_browser|a_tasks_log_tail_updates_live_from_a_real_agent"
  "dashboard|markup in a search; every page and asset|escaped; each response < 50 KB with a strict CSP (no inline script)|ui_browser|pages_are_small_and_carry_a_strict_content_security_policy"
  "dashboard|session table full or a session expired|the oldest dropped, the count bounded; an expired session refused|lib|server::auth::session::tests::the_table_is_bounded_and_drops_the_oldest"
  "files|a symlink planted at an atomic write's temp name|the target is written, the link's victim untouched|lib|atomic_file::tests::never_writes_through_a_link_at_the_temp_name"
  "proxy|two groups in --proxy-mode shared (real agent)|one robot-envoy; each group's PROXY_DB_* port reaches only its own upstream; every listener names only its own group's cluster|agent_shared_proxy|two_groups_share_one_envoy_each_reaching_only_its_own_upstream"
  "proxy|a group joins then finishes while another group holds a long-lived connection (shared mode)|the joining group is served once its task runs, its listener goes when it finishes; the other connection stays up; same Envoy pid|agent_shared_proxy|a_group_joins_and_leaves_while_another_groups_connection_stays_up"
  "fault|kill -9 of robot-envoy|a new Envoy serves every group; tasks keep their pids and are not restarted|agent_shared_proxy|a_killed_shared_envoy_comes_back_with_every_group_and_tasks_untouched"
  "fault|agent restarted with --proxy-mode shared over per-group proxies|per-group Envoys stopped, robot-envoy serves both groups, tasks adopted (same pids, none restarted)|agent_shared_proxy|switching_from_per_group_to_shared_across_an_agent_restart_keeps_tasks_running"
  "fault|agent restarted with --proxy-mode per-group over robot-envoy|robot-envoy stopped, each group's Envoy serves it, tasks adopted (same pids, none restarted)|agent_shared_proxy|switching_back_from_shared_to_per_group_keeps_tasks_running"
  "channel|a man in the middle between a real agent and the real server (in the agent's session): a byte flipped in a status body, a Task injected into a long-poll answer, an earlier empty answer replayed, a status report replayed|each refused and logged (server: bad signature / replayed counter, counted; agent: refused answer); the task keeps its process, the injected task never runs; the recorded bytes hold no join secret, env value, template text or Authorization header|robot_channel_mitm|a_man_in_the_middle_can_neither_read_nor_forge_the_robot_channel"
  "channel|registration with a wrong join-token proof; the same signed registration sent twice|401 (proof does not match / replayed counter), signed, counted; no Robot|server_robot_channel|a_wrong_proof_or_a_replayed_registration_is_refused"
  "channel|assignments carrying a task env value|sealed to the robot (no env, task name or command in the bytes), answer signature valid only for its request|server_robot_channel|assignments_are_sealed_to_the_robot_and_every_answer_is_signed"
  "channel|a byte flipped in a sealed status body; the same status request replayed|signed 401, counted; the task's status unchanged|server_robot_channel|a_tampered_or_replayed_status_report_changes_nothing"
  "channel|a robot request 1h off the server's clock|signed 401 naming the skew and --robot-clock-skew; the robot takes the server's time and its next request passes; --robot-clock-skew over 24h refused|server_robot_channel|a_request_an_hour_off_gets_a_signed_401_and_the_robot_takes_the_servers_time"
  "channel|robot-keys rotate --overlap 5s|old-key robots answered with K8s4r-Next-Key, switch and keep working; new join tokens pin the new key; after the overlap the old key is refused|server_robot_channel|after_a_key_rotation_robots_switch_and_the_old_key_retires"
  "channel|the join secret|in no answer (headers or body) and no file of the data directory|server_robot_channel|no_answer_or_stored_value_holds_the_join_secret"
  "channel|requests in a session by hand against the real server: replayed, MAC altered, another robot's name, a session made with another key, a burst of new sessions, a session at registration|answers in a session carry its MAC and are sealed with it; each attack gets a signed 401 naming why; the robot's own session keeps working|server_robot_channel|a_session_is_taken_only_from_its_robot_and_answered_in_it"
  "channel|the agent against a scripted server: sessions advertised, a tampered answer in the session, a session answered with a signature|signed until advertised, then one session; the tampered answer is refused; the signed answer ends the session and the request goes again at once, signed; requests stay signed for a while|lib|agent::connected::channel_tests::sessions_start_when_the_server_takes_them_and_end_when_it_does_not"
  "channel|answers to the agent: body byte flipped, sealed byte flipped, earlier answer replayed, bound to another request, unsigned 401, injected plain JSON, 302 redirect|refused and logged, desired set unchanged, identity kept, treated as unreachable (no re-registration)|lib|agent::connected::channel_tests::a_tampered_forged_or_replayed_answer_is_refused_and_changes_nothing"
  "channel|registration answered by a key not matching the token's pin, or a forged signature|refused, nothing saved, retried|lib|agent::connected::channel_tests::registration_proves_the_token_without_sending_it_and_trusts_only_the_pinned_key"
  "channel|robot clock a day off (no RTC)|a signed 401 corrects the clock, one immediate retry|lib|agent::connected::channel_tests::a_signed_401_about_the_clock_corrects_it_and_retries_once"
  "channel|K8s4r-Next-Key forged or garbage / validly endorsed|ignored / stored and used from then on|lib|agent::connected::channel_tests::a_next_server_key_is_adopted_only_with_a_valid_endorsement"
  "channel|agent restart mid counter reservation|a counter is never reused|lib|agent::connected::counter::tests::counters_only_grow_across_restarts_and_write_once_per_step"
  "channel|robot.key damaged, world-readable, or a symlink|clear error, the key is never replaced|lib|agent::connected::keys::tests::damaged_exposed_or_linked_keys_are_errors_not_replaced"
  "auth|requests without credentials or with an unknown token|401 on the API, discovery, /metrics and /agent/v1 operator paths; 200 on /healthz /livez /readyz /version|server_auth|anonymous_requests_get_401_outside_the_health_paths"
  "auth|viewer creates/deletes a Job; operator creates a Robot or a join token|403 with kube-apiserver's message; viewer reads, operator runs Jobs, nobody-group sees discovery only, admins do everything|server_auth|each_group_gets_what_its_rules_give"
  "auth|a robot's signed request, or a bearer shaped like an old robot token, on the API, join tokens and whoami|401 / 403, nothing created|server_auth|a_robot_is_never_a_user"
  "bad input|token file with a missing field, a short token, an unclosed quote|the server refuses to start naming file, line and field|server_auth|a_malformed_token_file_stops_the_server"
  "auth|create, delete, a refused create (403), an anonymous delete (401), a join token create|one audit.k8s.io/v1 Event each with user, verb, resource, name, code, sourceIP; reads not logged; file 0600|server_auth|mutating_requests_are_audited_allowed_or_not"
  "fault|audit log on a device that refuses writes (/dev/full)|requests still succeed, failures counted in /metrics, no panic|server_auth|a_failing_audit_log_is_counted_not_fatal"
  "auth|SelfSubjectAccessReview / SelfSubjectReview per group|allowed matches what the API then does; whoami shows user and groups|server_auth|reviews_answer_from_the_same_rules"
  "auth|kubectl auth can-i create jobs.robot.k8s4r.io / whoami over https|viewer no, operator and admin yes; whoami user and groups|server_auth|kubectl_auth_can_i_and_whoami"
  "bad input|plain HTTP to the HTTPS port|no HTTP answer; server unharmed|server_tls|plain_http_to_the_https_port_gets_no_answer"
  "isolation|a client verifying the server as localhost, 127.0.0.1, a --tls-san name/IP, an unlisted name, or trusting another CA|the first four verify, the last two fail the handshake|server_tls|the_certificate_verifies_for_localhost_loopback_and_tls_sans_only"
  "bad input|--insecure-http with --listen 0.0.0.0:0|refuses to start naming --insecure-http and loopback; on 127.0.0.1 it serves|server_tls|insecure_http_is_refused_off_loopback_and_serves_on_it"
  "isolation|Kubernetes API, metrics, join-token paths, the dashboard, a Job POST and an HTTP/2 client on the plain agent listener|404, nothing created, no HTTP/2 spoken; register and polls served there and on HTTPS|server_tls|the_agent_listener_serves_the_agent_protocol_only"
  "isolation|--tls-cert-file without its key; BYO chain and --client-ca-file; a client cert from the generated CA|exit 1 naming both flags; the chain verifies, the operator's client cert is accepted, the generated CA's refused in the handshake|server_tls|bring_your_own_serving_certificate_and_client_ca"
  "bad input|k8s4r kubeconfig with an empty, control-character or 300-byte name; a --data without a server|exit 2 naming the flag; exit 1 naming k8s4r.db; a valid one is 0600 with CN and every O, accepted by the server and kubectl|server_tls|kubeconfig_issues_client_certificates_the_server_accepts"
  "fault|server restart|same CA; the earlier admin certificate still accepted (kubectl too); admin.kubeconfig 0600, data dir 0700|server_tls|the_admin_kubeconfig_is_private_and_survives_a_restart"
  "compat|Kubernetes' official Python client (37.0.2) from admin.kubeconfig|create/get/list a Job through CustomObjectsApi and read /version|server_tls|the_official_python_client_works_from_the_generated_kubeconfig"
  "fault|two replicas on one etcd, one with another --tls-san|one CA; each accepts the other's admin certificate; the serving certificate covers both replicas' names|server_tls|replicas_on_one_etcd_share_the_ca_and_the_serving_certificate"
  "bad input|etcd requires a client certificate the server was not given|the server exits within seconds with etcd's alert and the flags that would help; never hangs|server_etcd_tls|without_a_client_certificate_etcd_refuses_and_the_server_says_so"
  "bad input|etcd's serving certificate from another CA than --etcd-cafile|the server exits: invalid peer certificate (UnknownIssuer) and what to check|server_etcd_tls|an_etcd_certificate_from_another_ca_is_refused"
  "bad input|https:// URL to an etcd member serving plain HTTP|the server exits saying the member is not serving TLS|server_etcd_tls|https_to_a_member_serving_plain_http_is_refused_clearly"
  "bad input|https:// etcd without --etcd-cafile; cert without key; missing CA file; mixed http/https; TLS flags on http://|refused before any connection, naming the flag (and file)|server_etcd_tls|mistakes_in_the_etcd_flags_are_refused_before_connecting"
  "compat|etcd serving clients over TLS with --client-cert-auth, server restarted|a Job created through the API is in etcd and served again after the restart|server_etcd_tls|the_server_keeps_its_objects_in_etcd_over_tls_with_a_client_certificate"
  "compat|k8s4r migrate into an etcd over TLS|without --etcd-cafile refused; with the three flags the SQLite Job moves and the server on TLS etcd serves it|server_etcd_tls|migrate_moves_a_sqlite_fleet_into_etcd_over_tls"
  "proxy|1,100 idle TCP connects to a group's inbound port|the app's outbound proxy keeps forwarding (new and open connections), the excess refused by the inbound limit, idle peers dropped at the handshake timeout and logged|envoy_limits|an_inbound_flood_does_not_starve_the_apps_outbound_proxy"
  "proxy|a config using an extension the renderer never emits|refused by Envoy under the agent's --disable-extensions list; every rendered variant still validates|envoy_validate|disabled_extensions_are_refused_by_envoy"
  "proxy|two groups in one robot-wide Envoy (envoy::shared)|each reaches only its own upstream; a listener naming another group's cluster is refused by the check; a port clash names both groups|envoy_shared|two_groups_share_one_envoy_each_reaching_only_its_own_upstream"
  "proxy|a group added and another removed in the shared Envoy; Envoy killed -9|the remaining group's open connection stays up (same pid); after kill -9 every group is back|envoy_shared|groups_come_and_go_while_another_groups_connection_stays_up"
  "fault|agent kill -9 with 10 running tasks|same 10 pids re-adopted, none duplicated, a later exit noticed|agent_run|agent_killed_with_9_readopts_its_ten_tasks"
  "fault|task exits while the agent is down|reported, restart policy applied|agent_run|a_task_that_ended_while_the_agent_was_down_is_reported_and_restarted"
  "fault|agent kill -9 under busybox init|init respawns it, task re-adopted, poweroff stops all|robot_image|x86_64_image_boots_respawns_the_agent_and_powers_off_cleanly"
  "fault|server down, task finishes, agent kill -9, server back|status delivered exactly once, nothing lost|e2e_connected|statuses_survive_a_server_outage_and_an_agent_kill"
  "fault|server kill -9 after acknowledged writes|every acknowledged write still there|server_api|acknowledged_writes_survive_a_crash"
  "fault|server kill -9 during a burst of 1,000 status updates|every acknowledged update survives, none applied twice, all 1,000 re-sent come back duplicate|server_fleet|a_server_kill_9_during_1000_status_updates_loses_and_duplicates_nothing"
  "fault|server restart|robots, their keys and assignments intact; counters go on|server_fleet|restart_keeps_robots_keys_and_assignments"
  "fault|SQLite on a full disk (2 MiB tmpfs)|5xx Status naming the cause, nothing lost, recovers when space returns|server_full_disk|a_full_disk_gives_clear_errors_and_loses_nothing"
  "fault|Envoy kill -9|proxy brought back, same config|envoy_live|after_kill_9_prepare_and_start_bring_the_proxy_back"
  "fault|a group's Envoy killed -9 under the agent|a new Envoy carries traffic on the same port; the group's task keeps its pid, never restarted|agent_faults|a_killed_group_proxy_is_restarted_and_its_tasks_are_untouched"
  "fault|robot offline|tasks Unknown then Lost, service tasks moved|server_fleet|offline_robots_lose_tasks_and_service_jobs_move"
  "fault|a real robot goes silent, then returns|task moves to the other robot; the returning one stops its copy|e2e_connected|a_lost_robots_service_task_moves_and_never_runs_twice"
  "fault|network cut (netns + veth down) for 60 s (make reliability; past the offline limit in make test), then back|tasks keep running; replace:false keeps the process; one copy each after|e2e_connected|a_network_cut_keeps_tasks_running_and_nothing_runs_twice_after"
  "fault|a status report held up by a cut link lands after the server reset the task on the robot's return (shown in a complete set while the report was in flight)|the status is sent again once acknowledged; a status merely not yet applied (a delta) is not|lib|agent::connected::outbox::tests::a_status_the_server_disputed_while_in_flight_is_sent_again_once_acknowledged"
  "fault|etcd leader replica kill -9 during Job creates; an etcd member killed|new leader in ~3 s, every Job scheduled exactly once, service continues|server_etcd_ha|replicas_share_one_etcd_and_survive_failures"
  "fault|etcd member kill -9 and restart during Job creates|every acknowledged create exists once with its tasks; the member catches up|server_etcd_ha|an_etcd_member_restart_during_writes_loses_and_duplicates_nothing"
  "fault|300 Tasks of one robot in one store revision (one etcd transaction), a second thread reading as a poll does while the cache takes them|the robot's revision shows it only once all 300 are in the cache (a poll answered between two of them would miss the rest)|lib|server::controllers::tests::a_robot_woken_at_a_shared_revision_finds_all_of_it_in_the_cache"
  "fault|writers waiting for their etcd echo; a publish below their revision; one that gave up|each answered only when its revision (or a reset past it) is published; nothing left waiting|lib|server::store::log::tests::a_writer_is_answered_when_its_revision_is_published_and_not_before"
  "fault|the events store on etcd before anything watches it, then two watchers|no etcd watch (no replica decodes every event) until the first watch; then one watch that replays what was written since the store connected and follows|server_etcd_store|an_on_demand_store_watches_etcd_only_once_watched"
  "fault|SIGTERM while a robot holds a 600 s poll and an operator watches Jobs|the poll is answered (200, signed) and the watch ends as HTTP ends a body, at once; the server exits 0 (before: both waited out, the stop hung)|server_robustness|a_stopping_server_answers_held_polls_and_exits"
  "fault|the controllers' cache watch 25 changes behind a history of 10, then 40 more behind|kept for it (no re-list) up to 4 times the history; beyond, expired like any watcher; caught up or gone, the history is trimmed back|lib|server::store::log::tests::a_holding_watcher_rides_out_a_burst_within_its_bound"
  "fault|a robot registers, changes phase, changes nothing liveness reads, is deleted|a whole-fleet liveness scan is queued on the phase change and the delete, never on a registration (one per registration made registering N robots O(N^2))|lib|server::controllers::tests::liveness_is_queued_when_a_robot_leaves_or_changes_phase_not_when_one_registers"
  "compat|events repeated within one write batch and across two|one Event per object and reason with the count of both|lib|server::events::tests::a_batch_of_events_folds_repeats_and_counts_up_stored_ones"
  "fault|agent kill -9 while it starts 50 tasks, then 10 more kills at different moments|the same 50 pids after every round, none started twice (unrecorded children found in /proc)|agent_faults|fifty_tasks_survive_ten_agent_kill_9s_with_none_lost_or_duplicated"
  "fault|robot clock jumps +1 h / -1 h (libfaketime) during a timeout and restart backoff|timeout neither early nor missed, backoff spacing kept (monotonic clocks)|agent_faults|clock_jumps_change_neither_timeouts_nor_restart_backoff"
  "fault|timeout on a 3-generation process tree|whole tree killed|agent_run|timeout_kills_a_process_tree_of_three_generations"
  "fault|task printing 50 MiB|log files stay under the cap|agent_run|log_rotation_cap_holds_under_50_mib_of_output"
  "bad input|malformed JSON/YAML, wrong types, huge bodies, bad UTF-8, 100k-deep nesting, unknown kinds, names with .. — Kubernetes and agent API|4xx Status naming the field, 413 on size, 0 panics (counted by the server's panic hook, /metrics)|server_api|validation_errors_and_hostile_input"
  "bad input|3,000 mutated manifests, deep nesting, invalid UTF-8|errors, never a panic|fuzz_api|mutated_manifests_never_panic"
  "bad input|every cargo-fuzz corpus input and kept crash input (manifest, agent API, Envoy renderer, units; make fuzz runs each 2 min)|no panic; rendered configs pass the structural check|fuzz_api|fuzz_corpus_and_regressions_replay"
  "bad input|seeded random network blocks rendered to Envoy configs|structural check (loopback listeners, clusters and secrets resolve); a sample passes envoy --mode validate|fuzz_api|random_networks_render_to_sound_envoy_configs"
  "bad input|path traversal in templates and artifacts, symlinks|refused, nothing written outside|agent_run|path_traversal_is_refused_lexically_and_through_symlinks"
  "bad input|artifact checksum mismatch|task fails clearly, nothing half-written|agent_run|templates_and_artifacts_are_in_place_and_a_bad_checksum_fails_cleanly"
  "bad input|artifact download truncated (Content-Length, chunked), redirect loop, oversized (announced, streamed)|task fails naming the URL and reason; nothing left at the destination|agent_faults|broken_artifact_downloads_fail_cleanly_and_leave_nothing"
  "isolation|robot token used on another robot|401/403, notAssigned|server_fleet|robots_only_see_their_own_objects"
  "isolation|API without the operator token|401|server_api|operator_token_guards_the_api"
  "isolation|a robot's signed request on the Kubernetes API (create Job, list, mint join tokens)|401 with an operator token configured|server_isolation|a_robot_signature_is_never_an_operator_credential"
  "isolation|an agent registers claiming k8s4r.io/env=production (operator-only) and zone=lab; an operator labels it|the claim is dropped with an OperatorLabelsIgnored event; a Job selecting k8s4r.io/env is not placed until the operator labels it; the operator's zone wins over the robot's|server_isolation|a_robot_cannot_label_itself_into_an_operator_selector"
  "isolation|a join token asked to live longer than --max-join-token-ttl|400 naming ttlSeconds and the limit; exactly the limit is accepted; no --ttl gets the limit when shorter than a day|server_isolation|join_token_lifetimes_are_capped_by_the_server"
  "isolation|a third robot registering with a token created with --uses 2|429 naming --uses 2, no Robot created; registering a known name again uses nothing; list shows 2/2|server_isolation|a_join_token_with_uses_registers_that_many_robots"
  "isolation|another robot name registering with a token created with --name r1|403 naming the binding to r1, no Robot created; r1 registers; list shows the name|server_isolation|a_join_token_bound_to_a_name_registers_only_that_robot"
  "isolation|a join token used to register a name bound to other keys|409 naming k8s4r robot reset; the real robot keeps its keys, labels and task, the impostor's keys open nothing; the robot itself re-registers; after reset the new keys take the name and the old ones are refused|server_isolation|a_join_token_cannot_take_over_a_registered_robot"
  "isolation|an expired join token|401 \"invalid or expired\", listed as expired|server_isolation|join_tokens_expire"
  "isolation|a revoked join token (by id prefix or whole text)|401; robots registered with it keep working; secrets never listed|server_isolation|join_tokens_are_revoked_by_id_or_text_and_robots_keep_their_keys"
  "isolation|k8s4r robot reset NAME (or token revoke --robot)|the robot's requests 401 (unknown robot) until a join token binds the name again|server_isolation|a_reset_robot_is_refused_until_it_registers_again"
  "isolation|task with user: set, agent root|runs unprivileged; task dir, local/, secrets/ 0700 the task's; logs/ 0700 the agent's; templates without perms 0600|agent_run|tasks_run_as_their_user_when_the_agent_is_root"
  "isolation|task with user: nobody (agent root)|cannot write root-owned files or dirs; uid/gid 65534; no capabilities; NoNewPrivs|agent_faults|a_task_with_a_user_has_no_privileges_left"
  "isolation|group Envoy sockets seen by ss|listeners on 127.0.0.1 only, no TCP admin port, admin socket without group/other bits|agent_faults|the_group_proxy_listens_on_loopback_only_with_a_private_admin_socket"
  "isolation|Envoy admin|private unix socket (0600), no TCP port|envoy_live|admin_is_a_private_unix_socket_and_flags_avoid_collisions"
  "isolation|inbound peer with a valid chain but an unlisted SPIFFE ID (and its health checks)|handshake refused; the task's port never sees a connection|envoy_mtls|inbound_rbac_allows_the_listed_id_and_refuses_another"
  "bad input|watch timeoutSeconds=10^19, 2^64-1, 10 years+1 s; join token ttlSeconds 10^19; long-poll wait 3·10^15 h (no credentials)|400 naming the parameter and the 10-year limit (wait capped by the poll interval); next request answered, 0 panics|server_robustness|durations_beyond_the_clock_are_refused_and_the_server_lives"
  "bad input|server flags --poll-interval/--offline-after 3·10^15 h, --max-poll-rate NaN, --max-watches 10^11|usage error (exit 2) naming the flag|server_robustness|server_flags_with_unbounded_durations_are_refused"
  "fault|a handler panics (K8S4R_TEST_PANIC_ROUTE test route), three times|500 InternalError each time, k8s4r_panics_total counts each, the next request is answered|server_robustness|a_panicking_handler_answers_500_and_the_server_lives"
  "fault|release profile set to abort on panic|test fails: the server's release build must unwind (only the musl agent aborts)|server_robustness|the_release_server_unwinds"
  "bad input|more watches than --max-watches|429 TooManyRequests with Retry-After; lists still served; slots freed when watches end|server_robustness|watches_are_capped"
  "bad input|a second long poll from the same robot|the first ends at once with 429, the second is answered; one poll open per robot|server_robustness|a_second_long_poll_of_a_robot_ends_the_first"
  "bad input|agent report with more updates than --max-status-updates|413 naming updates and the flag; a report at the limit applies|server_robustness|status_updates_per_report_are_capped"
  "bad input|deviceInfo over --max-device-info at register and in a report|413 naming deviceInfo; no Robot created; a small one is stored|server_robustness|device_info_size_is_capped"
  "isolation|more registrations with one join token than --max-robots-per-join-token|429, no Robot created; re-registering a known name is free; another token works|server_robustness|a_join_token_creates_at_most_its_limit_of_robots"
  "channel|bearer token, malformed, oversized or missing signature headers on /agent/v1/robots/*|signed 401 naming the header, counted; no counter spent|server_robustness|unsigned_or_malformed_robot_requests_get_a_signed_401"
  "isolation|a Job POSTed as text/plain, form data, multipart or without Content-Type (what a web page can send)|415 UnsupportedMediaType, nothing created; JSON, YAML, merge patch, delete bodies and the agent unaffected|server_robustness|bodies_of_other_media_types_get_415"
  "bad input|/version/, /apis/, /api/, group and group-version paths with a trailing slash|same answer as without the slash, same auth rules|server_robustness|discovery_paths_answer_with_a_trailing_slash"
  "fault|a task (as nobody) swaps its local/ for a symlink to a root-owned directory and exits; the agent restarts it|the restart refuses the symlink with a message; the target keeps its owner and mode (ownership set through O_NOFOLLOW descriptors, never a path)|agent_privileges|a_task_that_swaps_local_for_a_symlink_gets_nothing_at_its_restart"
  "isolation|a task (as nobody) rewrites its own check script|the check runs as the task runs: uid/gid 65534, no capabilities, NoNewPrivs (never root)|agent_privileges|a_check_script_rewritten_by_its_task_runs_as_the_task_user"
  "fault|a fork bomb task (resources.pids: 16) beside a counting task|the bomb's cgroup never exceeds 16 processes (cgroup v2, or v1 pids on hybrid hosts); the other task keeps counting; SIGTERM stops everything|agent_privileges|a_fork_bomb_stays_under_pids_max_while_the_agent_and_another_task_carry_on"
  "isolation|--allow-root-tasks=false: a task without user and one with user: root; --default-user nobody|both refused with a clear status naming the flag; a task with a user runs; the default user applies|agent_privileges|root_tasks_follow_the_robot_policy"
  "isolation|a connected robot with --allow-root-tasks false given a task with no user|the task fails; its status message and a Warning Failed event name the refusal and the flag; nothing ran|e2e_connected|a_root_task_on_a_robot_that_forbids_them_fails_with_a_status_and_an_event"
  "isolation|a group's tasks as one user; as two users with a group in common; as two with none|its shared dir is that user's 0700 (a file passes between its tasks); root's with the common group 02770 (a file passes); the agent's 0755|agent_privileges|the_groups_shared_directory_belongs_to_its_users"
  "isolation|the group's Envoy under a root agent|runs as the proxy user (65534 here): no capabilities, NoNewPrivs; every config file and dir root's, not writable by it; only its admin/ dir (sticky) writable; traffic flows|agent_faults|the_group_proxy_runs_as_an_unprivileged_user_that_cannot_rewrite_its_config"
  "fault|12 tasks finish together on a server that takes 4 statuses per report (--max-status-updates 4)|the agent halves its batches on 413 and sends oldest first; every status arrives, the Job completes|e2e_connected|statuses_beyond_the_servers_per_report_cap_arrive_in_batches"
  "fault|robot long-polls the etcd replica that does not lead, for 3× the offline limit|stays Online, heartbeat never older than limit/3, task running; no event but one RobotOnline|server_etcd_ha|a_robot_polling_a_replica_that_does_not_lead_stays_online"
  "fault|robots long-polling (waits longer than limit/3) and polling 10×/s for 3× the offline limit|lastHeartbeatTime never older than limit/3 (+1 s rounding); one store write per limit/3, not per poll|server_fleet|last_heartbeat_time_stays_fresh_while_robots_poll"
  "bad input|robot image not configured (no server, no job file) under busybox init|agent stays up as one process, < 1% CPU over 60 s, says what is missing once a minute|robot_image|an_unconfigured_image_waits_quietly"
  "bad input|agent config file empty, then given a server|waits, says what is missing once per interval, registers in the same process once the file names a server|agent_unconfigured|an_agent_without_a_server_waits_then_registers_once_its_config_names_one"
  "isolation|an agent registers with a join token from its config file|the file's K8S4R_JOIN_TOKEN is blanked (other lines as written), the file becomes 0600; the agent carries on with its robot token|agent_unconfigured|an_agent_without_a_server_waits_then_registers_once_its_config_names_one"
  "bad input|join token refused (401), then fixed in the config file|agent waits in the same process, then registers|agent_unconfigured|a_refused_agent_waits_then_registers_once_its_join_token_is_fixed"
  "bad input|an agent flag it cannot run with, exit repeated|exits 2 only after a delay that doubles (1 s, 2 s), recorded in the data dir|agent_unconfigured|an_error_it_cannot_wait_out_exits_after_a_growing_delay"
  "bad input|Job with timeout: 3000000000000000h|refused by k8s4r validate (exit 1) with the field path and the 87600h limit|api_validation|k8s4r_validate_refuses_a_huge_timeout_with_its_field_path"
  "bad input|run -f of a Job with a duration past 87600h|exit 2 naming the field and the limit; nothing runs|agent_run|run_refuses_a_duration_past_the_limit_with_its_field_path"
  "bad input|huge durations written into a connected agent's assignments.json (bypassing validation): timeout, killTimeout, restart delay/interval, check interval, stopOnClientAfter; API POST of the same Job|API 422 with the field; the agent re-adopts, goes offline, schedules the restart never, never aborts; heals when the server returns|e2e_connected|huge_durations_in_cached_assignments_do_not_abort_the_agent"
  "bad input|400 seeded generated Jobs (durations up to and past any clock) and the examples, on reconcile + lifecycle machines with a fake clock near the ends of Instant and a scripted world (make fuzz: execute target 2 min)|no panic; process table and machines agree; no process outlives its unit; withdrawing the Job stops everything|fuzz_api|generated_jobs_execute_under_reconcile_and_the_machines"
  "compat|original manifest patterns: Nomad /local /secrets /alloc destPath/relativeDest, checks on a portLabel that names no port|validate with warnings naming the field (k8s4r validate exit 0)|api_validation|original_manifest_patterns_validate_with_warnings"
  "compat|the same patterns under run -f|files land in the task/alloc dirs, secrets/ 0700; warnings on stderr; the unresolvable checks never run while a runnable one does|agent_run|original_manifest_patterns_run_with_warnings"
  "compat|POST of a Job with a check on no port|201 with the Warning header and one ValidationWarning event on the Job; a dry run records none|server_fleet|a_check_on_no_port_is_accepted_with_a_warning_header_and_a_job_event"
  "bad input|http artifact without a checksum|accepted; warning naming artifacts[i].getterSource (integrity not verified); https, file:// and checksummed ones not warned; k8s4r validate exit 0|api_validation|plain_http_artifacts_without_a_checksum_are_a_warning_with_their_path"
  "bad input|POST of a Job with an http artifact without a checksum|201 with the Warning header and a ValidationWarning event on the Job; its checksummed neighbour not warned about|server_fleet|an_unverified_http_artifact_is_accepted_with_a_warning_header_and_a_job_event"
  "isolation|run --require-artifact-checksums: a task with a checksummed and an unchecksummed http artifact, beside a task with a checksummed one|the first fails naming the artifact and the flag, no request for any of its artifacts reaches the server, nothing in local/; the checksummed task runs; without the flag all run, with the warning|agent_run|require_artifact_checksums_refuses_unverified_http_before_any_download"
  "isolation|a connected robot with --require-artifact-checksums given a task with an http artifact without a checksum|the task fails; its status and a Failed event name the artifact and the flag; the HTTP server received no request|e2e_connected|an_unverified_artifact_on_a_robot_that_requires_checksums_fails_before_any_download"
  "isolation|wrong or foreign SPIFFE ID|mTLS refused, no byte reaches PostgreSQL|e2e_postgres|"
  "agent update|kill -9 mid download, after verify, after rename, right after exec, in the busybox-init image x86_64 (init respawns), plus a good release, one dying at start, a forged one|each release still ends Applied; same two task processes; new binary in place; only update/last.json left; the dying one rolled back after 3 starts; forged: nothing downloaded|robot_image|x86_64_image_updates_its_agent_over_the_air"
  "agent update|the same, with the four kill -9 steps, aarch64 image under qemu-user|as x86_64|robot_image|aarch64_image_updates_its_agent_over_the_air_under_qemu_user"
  "bad input|an AgentRelease at a namespaced path; a namespaced kind at a cluster path; releases stored under a namespace before|404 for the wrong scope; stored ones moved to the cluster scope, kept to their namespace (spec.namespaces), renamed <ns>-<name> on a clash, nothing lost|agent_update|agent_releases_are_cluster_scoped_and_namespaced_ones_move_there_unwidened"
  "rollout|a task added to the group (v2), maxParallel 1, three real robots|each robot gets the added task only after the previous one ran it minHealthyTime; all end running it; 3/3 Succeeded|e2e_rollout|an_added_task_rolls_one_robot_at_a_time_each_after_the_previous_is_healthy"
  "rollout|a task added to a service job's group (3 replicas), maxParallel 1|one replica at a time, each after the previous is healthy; one replica per robot|e2e_rollout|a_task_added_to_a_service_job_rolls_one_replica_at_a_time"
  "rollout|an added task that exits 1, canary 1, autoRevert|only the canary runs it and stops it on its own (RolledBack: the previous version has no such task); rollout Failed; the task is gone from every robot; the others never run it|e2e_rollout|a_bad_added_task_runs_on_the_canary_only_which_stops_it_itself_and_it_is_gone_everywhere"
  "rollout|a task removed from the group, maxParallel 1, then k8s4r job revert|robots not yet updated keep it running (same process); the updated robot's agent stops it; the revert re-creates it there only|e2e_rollout|a_removed_task_keeps_running_where_not_yet_updated_and_revert_brings_it_back"
  "rollout|a task deleted by hand after a rollout failed without autoRevert (two-task replicas)|re-created at the version its replica is on: the base where the rollout did not reach, the new version on the updated canary|e2e_rollout|after_a_failed_rollout_a_deleted_task_comes_back_at_its_replicas_version"
  "agent update|an AgentRelease created paused, resumed, then k8s4r release revert NAME; a NAME with a slash|not offered while paused; after revert the robot is back on the earlier release with its tasks' pids, status says reverted; the bad NAME is refused before any request|agent_update|release_revert_by_command_takes_its_robots_back_and_pause_stops_offers"
  "bad input|a mirror serves other bytes of the signed size for a release (one bit flipped)|downloaded once, refused naming the SHA-256; the running binary untouched, no .prev, no part left (only update/last.json), same agent pid and task pids; failedUpdates lists it; AgentUpdateRefused event|agent_update|a_served_binary_that_is_not_the_signed_one_is_refused_and_nothing_is_left"
  "agent update|a forged release refused after a rolled-back one (lastUpdate overwritten)|the rolled-back version stays in status.failedUpdates and is never offered or downloaded again|agent_update|a_release_that_dies_at_start_is_rolled_back_after_three_starts"
  "agent update|a new agent whose first verified answer changes nothing and offers nothing|the main thread is woken: probation ends at once, not at the update deadline|lib|agent::connected::channel_tests::the_first_answer_wakes_the_main_thread_even_when_nothing_changed"
  "agent update|a release rolled out to 1,000 simulated robots, canary 1%, minHealthyTime 5s (k8s4r bench rollout, make bench)|no robot beyond the canaries is offered it before minHealthyTime after the last canary reported (counted from the end of the reported second)|lib|server::agent_rollout::tests::a_canary_goes_first_and_the_rest_wait_until_it_stays_online_on_the_version_for_min_healthy_time"
  "agent update|a release halted by a robot's rollback, autoRevert set|robots already on it get the previous release (downgrade allowed for that offer only); tasks keep their pids|agent_update|a_halted_release_with_auto_revert_takes_its_robots_back_to_the_previous_release"
  "device facts|uptime, counters and small moves of memory or disk; a new address, memory or a disk past a step; 6 h without a send; a send that failed|only real changes are sent, the 6 h refresh bounds the rest, a failed send is retried|lib|agent::connected::device_facts::tests::only_changes_worth_a_message_are_sent_and_a_refresh_bounds_the_rest"
  "delta assignments|a TaskGroup's shared data changes (its init daemon) on a robot with 10 of its tasks|the group's part reaches the robot once; the daemon is replaced; the tasks keep running (same pids)|delta_assignments|the_group_form_sends_a_groups_shared_data_once_and_the_robot_follows"
  "delta assignments|a group's replicas disagree mid-rollout, a tie, a group removed, a set remembered in the other form|the differing tasks travel with their own fields and are rebuilt exactly; on a tie the part the robot holds stays; removed groups are named; the other form gets the complete set|lib|server::assignments::tests::the_group_form_sends_a_groups_data_once_and_its_tasks_without_it"
  "agent|assignments.json in the group form across a restart; a group change after the reload; an older agent reading the file|tasks are filled from their group, the digest matches, the next group change reaches them; the file holds whole tasks|lib|agent::connected::desired::tests::the_group_form_keeps_each_groups_data_once_and_fills_its_tasks"
  "rollout|robot cut off by a network namespace (veth link down) during a good rollout and again during a bad one|back, it runs the version each rollout settled on, never the abandoned one; it is counted pending, never failed|e2e_rollout|a_robot_cut_off_by_a_network_namespace_during_rollouts_ends_on_the_settled_version"
  "rollout bench|bad version with 5% canaries and a good one with maxParallel 10% on 20 simulated robots|only the one canary ran the bad version and reverted on its own; every robot back on good within healthyDeadline + one poll; the good version reaches all|server_fleet|bench_tool_rolls_a_job_out_to_a_small_fleet"
  "delta assignments|a crash mid-append to assignments.log, a line left from before the snapshot, a line whose task lacks a version|replay stops at the last line that follows on; the set is at that revision (the server verifies it on resume); the next save is a new snapshot|lib|agent::connected::desired::tests::a_torn_or_stale_log_line_ends_the_replay_and_the_next_save_is_a_snapshot"
  "delta assignments|deltas applied, agent restarted|one appended line per delta, snapshot untouched; same revision and digest after restart|lib|agent::connected::desired::tests::a_delta_is_one_appended_line_and_a_restart_replays_it"
  "delta assignments|a group-only change, a task arriving in a new group, a group removed with its tasks; agent restarted|one appended line per delta carrying the group part; after restart and after compaction the set equals the kept one (tasks, groups, versions, digest)|lib|agent::connected::desired::tests::a_delta_that_changes_a_group_is_one_appended_line_and_a_restart_replays_it"
  "delta assignments|58 deltas of a 4 KiB task|log folded into a new snapshot once it outgrows it or 64 KiB; replayed set equals the kept one|lib|agent::connected::desired::tests::the_log_is_folded_into_the_snapshot_once_it_outgrows_it"
  "agent|statuses queued within the counter's reservation, then a power loss that takes every line after the last flushed one|only the write raising the counter was flushed; the statuses queued again after it are numbered above every number given before|lib|agent::connected::outbox::tests::only_a_raised_counter_is_flushed_and_a_power_loss_never_reuses_a_number"
  "agent|30 start/stop cycles as quick as the benchmark's (a task started and done within milliseconds)|their statuses share reports: no more reports than 20 ms spacings fit in the run (57 reports for 30 cycles without the spacing); no task's exit breaks the long poll|supervision_bench|quick_cycles_share_status_reports"
  "agent|a thread other than the supervision loop's, asleep in a socket read with a timeout, sent SIGCHLD (a task's exit) with the agent's handler installed|its read is not cut short (a plain thread's is: EINTR, which made the long poll fail and reconnect when a task ended)|agent_supervisor|a_tasks_exit_signal_never_cuts_a_worker_threads_read"
  "agent|a signal sent to a task's new process while it is held in its setup before exec (it shares the agent's memory then), with a handler installed in the agent|the process takes the signal's default action (it dies of it); the agent's handler never runs in it|lib|agent::supervisor::sys::launch::tests::a_signal_before_exec_never_runs_the_agents_handler_in_the_child"
  "agent|a task's new process stopped with SIGSTOP before its exec (as a process of the task's user could once it has switched users)|the start gives up at its deadline, kills and reaps the process and fails with the reason; the agent is not held|lib|agent::supervisor::sys::launch::tests::a_child_stopped_before_its_exec_is_killed_and_the_start_gives_up_in_time"
  "agent|a task started while the agent holds many descriptors, blocks a signal in the starting thread and ignores SIGPIPE|the task has exactly descriptors 0, 1, 2 (stdin /dev/null), no blocked signal, SIGPIPE at its default, its directory and only its environment|lib|agent::supervisor::sys::launch::tests::a_started_program_gets_its_directory_environment_and_output_and_nothing_of_the_agent"
  "bad input|requests to the agent listener framed ambiguously (Content-Length with Transfer-Encoding, two lengths, a signed length, gzip, chunked on HTTP/1.0, a bad chunk), a head over 8 KiB or 64 fields, a body over the limit, HTTP/2's preface, TLS bytes|400/413/431/501/505 with Connection: close, the connection closed, nothing reaches a handler (a body over the limit is refused before it is read)|lib|server::http::agent_http1::tests::ambiguous_malformed_or_oversized_requests_are_refused_unread_and_closed"
  "bad input|an agent-listener request head never finished; a body that stalls|408 when the head is not complete within its deadline; a stalled body is dropped unanswered; both connections closed, nothing reaches a handler|lib|server::http::agent_http1::tests::a_slow_head_is_answered_408_and_a_stalled_body_is_dropped"
  "server|a robot that closes its connection while its poll is held|the held request is dropped (its handler's future freed) and the connection's task ends|lib|server::http::agent_http1::tests::a_peer_that_closes_while_its_answer_is_pending_drops_the_request"
  "server|a panicking handler behind the agent listener|500 naming the request, and the kept connection serves its next request|lib|server::http::agent_http1::tests::a_panicking_handler_answers_500_and_the_connection_goes_on"
  "bad input|a command found nowhere, a command in PATH that is not executable, a missing task directory, a NUL byte in an argument|an error naming the step (command not found, permission denied, entering its directory, preparing the start); no process left behind, not even a zombie|lib|agent::supervisor::sys::launch::tests::a_start_that_fails_says_which_step_and_leaves_no_process_behind"
  "bad input|a task whose command is found nowhere and one whose command is a file it may not run, beside a good task (a real agent)|each fails at once naming why (command not found; permission denied); the good task runs; the agent exits 1|agent_run|a_task_that_cannot_start_says_why_and_its_neighbour_runs"
  "agent|state journal lines for starts, restarts, ends, a re-run and removals, then a power loss that takes every line after the last flushed one|only lines recording an end, replacing or dropping one, or a new boot were flushed; every end is back after the loss, only running processes of the old boot are forgotten; a crash loses nothing|lib|agent::supervisor::state::tests::only_ends_are_flushed_and_a_power_loss_forgets_no_end"
  "delta assignments|deltas that add, change, remove and add again, each followed by a power loss that takes every line after the last flushed one, before and after the supervisor settles the flush it owes|saving never waits for the disk; only stops and changes owe a flush; the set after the loss is at the last settled stop or change, never before it; a crash loses nothing|lib|agent::connected::desired::tests::a_delta_that_stops_owes_a_flush_and_a_power_loss_never_revives_a_stop"
  "delta assignments|a plan that starts one task and forgets an ended one, one that stops a task, a new revision, one that only starts|the owed flush is settled before the stop, the replacement or the forgetting, never before the start|lib|agent::supervisor::tests::an_owed_flush_is_settled_before_a_stop_a_replacement_or_forgetting_not_before_a_start"
  "agent|log pipes in the supervisor's epoll set: one written, one closed, one hung up|a wake-up returns what is ready (again while unread); a closed fd leaves the set; a hung-up pipe is ready|lib|agent::supervisor::watcher::tests::a_wait_returns_what_is_ready_and_a_closed_fd_leaves_the_set"
  "agent|an fd the kernel will not add to the epoll set|every wait is short and the loop looks at every pipe and pidfd|lib|agent::supervisor::watcher::tests::an_fd_that_cannot_be_added_makes_every_wait_short"
  "agent|a task that exits 3 and leaves an orphan behind (the agent is the subreaper)|the task is reaped alone through its pidfd with its exit code, no waitpid(-1) walk of every child for it; the orphan is still reaped by the sweep, no zombie|agent_supervisor|a_child_is_reaped_through_its_pidfd_and_its_orphan_by_the_sweep_after"
  "agent|the agent started with an open-file soft limit of 256 (1,000 tasks need three descriptors each)|the agent raises its own soft limit to the hard one; its task still gets 256|agent_run|tasks_get_the_open_file_limit_the_agent_was_given"
  "agent|stop-all on a data directory where a task runs that no state records (the agent was killed while starting it)|the task is stopped too, found by the unit directory it runs in|agent_run|stop_all_stops_a_task_that_was_never_recorded"
  "agent|a port probe's socket still open in another process (as in a child forked while it existed, before its exec), then a listener on the port|the probe never listens, so the listener binds; a listener held elsewhere is reported busy|lib|envoy::ports::tests::a_probe_left_open_does_not_block_the_listener_after_it"
  "agent|statuses of 50 tasks queued in one pass, then a restart|one outbox write, one sequence number each, all kept|lib|agent::connected::outbox::tests::a_batch_of_statuses_is_one_write_and_survives_a_restart"
  "agent|an acknowledgement, then a restart before any other write|no write of its own: the next status write takes it along, else a write 1 s later with nothing to send; a restart sends the status once more under the same sequence number (the server answers duplicate)|lib|agent::connected::outbox::tests::acknowledgements_ride_on_the_next_write"
  "agent|a task's spec unchanged from one answer to the next, another changed|the unchanged one keeps its shared spec (hashed once), the changed one gets a new one|lib|agent::connected::tests::an_unchanged_spec_is_shared_with_the_previous_set"
  "agent|a task's log pipe and its pidfd in the supervisor's epoll set (and a pipe closed since)|a wake-up names the unit each belongs to, so only that unit's pipe is read and only that child is reaped; a pidfd wakes once; a closed pipe names no unit|lib|agent::supervisor::watcher::tests::pipes_and_children_name_their_units"
  "agent|a group's proxy port already taken when its files are written|the group fails naming the port; its proxy unit is not started|lib|agent::reconcile::tests::a_proxy_whose_port_is_taken_fails_its_group_when_its_files_are_written"
  "agent|no Envoy binary for a group with a network (planned without a process or a data dir)|the group fails with the reason; its tasks do not start|lib|agent::reconcile::tests::no_envoy_binary_fails_the_group_with_the_reason"
)

# --table: print the table without running anything (for README.md).
if [ "${1:-}" = "--table" ]; then
  echo "| area | fault or input | what must happen | test |"
  echo "|---|---|---|---|"
  for c in "${cases[@]}"; do
    IFS='|' read -r area what expect bin name <<<"$c"
    echo "| $area | $what | $expect | \`$bin${name:+::$name}\` |"
  done
  exit 0
fi

# --from-log FILE: build the table from a `cargo test` log that already ran
# these tests (CI's short form: `make test` output, nothing runs twice).
from_log=
if [ "${1:-}" = "--from-log" ]; then
  from_log=${2:?--from-log needs a file}
  # "bin::test ok|FAILED" for every test result in the log.
  results=$(awk '
    /^ *Running tests\// { bin = $2; sub(/^tests\//, "", bin); sub(/\.rs$/, "", bin); next }
    # The library'"'"'s own tests (rows name them "lib|module::path::test").
    /^ *Running unittests src\/lib\.rs/ { bin = "lib"; next }
    /^ *Running unittests / { bin = ""; next }
    # A server log line may share the line with a result: match anywhere.
    bin != "" && match($0, /test [A-Za-z0-9_:]+ \.\.\. (ok|FAILED|ignored)/) {
      n = split(substr($0, RSTART, RLENGTH), f, " "); print bin "::" f[2], f[n]
    }
  ' "$from_log")
fi

# The result of one row from the log: pass, **FAIL** or "not run".
logged_result() {
  local bin=$1 name=$2 lines
  if [ -n "$name" ]; then
    lines=$(grep -F -x -e "$bin::$name ok" -e "$bin::$name FAILED" <<<"$results")
  else
    lines=$(grep -E "^$bin::[^ ]+ (ok|FAILED)$" <<<"$results")
  fi
  if [ -z "$lines" ]; then echo "not run"
  elif grep -q "FAILED$" <<<"$lines"; then echo "**FAIL**"
  else echo pass
  fi
}

# The long form: the network cut lasts a minute (make test: just past the
# offline limit).
export K8S4R_CUT_SECS=${K8S4R_CUT_SECS:-60}
export K8S4R_LINK_CUT_SECS=${K8S4R_LINK_CUT_SECS:-600}

mkdir -p target
out=target/reliability.md
{
  echo "| area | fault or input | what must happen | test | result |"
  echo "|---|---|---|---|---|"
} > "$out"
pass=0 fail=0
for c in "${cases[@]}"; do
  IFS='|' read -r area what expect bin name <<<"$c"
  if [ -n "$from_log" ]; then
    result=$(logged_result "$bin" "$name")
    case $result in
      pass) pass=$((pass + 1)) ;;
      "not run") ;;
      *) fail=$((fail + 1)) ;;
    esac
    echo "| $area | $what | $expect | \`$bin${name:+::$name}\` | $result |" >> "$out"
    continue
  fi
  filter=()
  [ -n "$name" ] && filter=("$name" --exact)
  target=(--test "$bin")
  [ "$bin" = lib ] && target=(--lib)
  if cargo test --quiet "${target[@]}" -- "${filter[@]}" >/tmp/reliability.$$.log 2>&1; then
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
echo "reliability: $pass passed, $fail failed, $((${#cases[@]} - pass - fail)) not run"
[ "$fail" -eq 0 ]
