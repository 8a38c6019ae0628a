//! `disconnect.reconcile` on the real server with simulated robots (the
//! agent API spoken by the test): a robot goes silent, its service replica
//! moves to a second robot, the first comes back, and the group's mode
//! decides which copy survives. Exactly one robot keeps the task in its
//! desired set afterwards; the other is told to stop (the task is gone
//! from its set). The same with real agents and processes:
//! `e2e_connected::keep_original_*`.

mod common;
mod server_util;

use serde_json::{json, Value};
use server_util::{wait_for, Robot, Server};
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";

fn job(name: &str, selector: Value, disconnect: Value) -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "service", "robotSelector": selector, "taskGroups": [{
            "name": "g", "count": 1, "disconnect": disconnect,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]
        }]}
    })
}

fn target(server: &Server, task: &str) -> Option<String> {
    server.object("tasks", task)?["spec"]["targetRobot"]
        .as_str()
        .map(String::from)
}

fn phase(server: &Server, robot: &str) -> Option<String> {
    server.object("robots", robot)?["status"]["phase"]
        .as_str()
        .map(String::from)
}

struct Case {
    /// Job name and the robots' `pair` label.
    name: &'static str,
    mode: &'static str,
    /// The replacement's robot also carries a ballast task (so it scores worse).
    ballast: bool,
    /// Which copy survives: true = the returning robot's.
    original_wins: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "ko",
        mode: "keepOriginal",
        ballast: false,
        original_wins: true,
    },
    Case {
        name: "kr",
        mode: "keepReplacement",
        ballast: false,
        original_wins: false,
    },
    Case {
        name: "lr",
        mode: "longestRunning",
        ballast: false,
        original_wins: true,
    },
    Case {
        name: "bs",
        mode: "bestScore",
        ballast: true,
        original_wins: true,
    },
    Case {
        name: "tie",
        mode: "bestScore",
        ballast: false,
        original_wins: false,
    },
];

#[test]
fn each_reconcile_mode_keeps_exactly_the_copy_it_names() {
    let server = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let join = server.join_token();
    let mut originals: Vec<Robot> = CASES
        .iter()
        .map(|c| Robot::register(&server, &join, &format!("{}-a", c.name), json!({"pair": c.name})))
        .collect();
    for c in &CASES {
        let r = server.send_json(
            "POST",
            JOBS,
            &job(c.name, json!({"pair": c.name}), json!({"reconcile": c.mode})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let task = |c: &Case| format!("{}-g-r0-t", c.name);
    // Every replica on its first robot, running there.
    for (c, a) in CASES.iter().zip(originals.iter_mut()) {
        let t = task(c);
        wait_for(&format!("{t} placed on {}", a.name), Duration::from_secs(30), || {
            (target(&server, &t)? == a.name).then_some(())
        });
        assert_eq!(a.task_names(), [t.as_str()]);
        a.report(&t, "running");
    }
    // The second robots join; the ballast job lands only on bs-b.
    let mut replacements: Vec<Robot> = CASES
        .iter()
        .map(|c| {
            let mut labels = json!({"pair": c.name});
            if c.ballast {
                labels["ballast"] = json!("yes");
            }
            Robot::register(&server, &join, &format!("{}-b", c.name), labels)
        })
        .collect();
    let r = server.send_json("POST", JOBS, &job("ballast", json!({"ballast": "yes"}), json!({})));
    assert_eq!(r.status, 201, "{}", r.body);

    // The first robots go silent (no poll): Offline, their replicas Lost
    // and placed on the second robots, which keep polling.
    wait_for(
        "every replica moved to its second robot",
        Duration::from_secs(30),
        || {
            for b in replacements.iter_mut() {
                b.poll("0s");
            }
            CASES
                .iter()
                .zip(&replacements)
                .all(|(c, b)| target(&server, &task(c)).as_deref() == Some(b.name.as_str()))
                .then_some(())
        },
    );
    for (c, b) in CASES.iter().zip(replacements.iter_mut()) {
        b.report(&task(c), "running");
    }
    for a in &originals {
        assert_eq!(phase(&server, &a.name).as_deref(), Some("Offline"));
    }

    // They come back: only keepReplacement lets its robot drop the copy at
    // once; the others keep it in the robot's desired set until settled.
    for (c, a) in CASES.iter().zip(originals.iter_mut()) {
        let names = a.task_names();
        if c.mode == "keepReplacement" {
            assert!(names.is_empty(), "{}: {names:?}", c.name);
        } else if c.original_wins {
            assert_eq!(names, [task(c)], "{}: the returning copy is not stopped early", c.name);
        }
    }
    for (i, c) in CASES.iter().enumerate() {
        let t = task(c);
        let (winner, loser) = if c.original_wins {
            (originals[i].name.clone(), replacements[i].name.clone())
        } else {
            (replacements[i].name.clone(), originals[i].name.clone())
        };
        wait_for(
            &format!("{} ({}): only {winner} keeps {t}", c.name, c.mode),
            Duration::from_secs(30),
            || {
                for r in originals.iter_mut().chain(replacements.iter_mut()) {
                    r.poll("0s");
                }
                let obj = server.object("tasks", &t)?;
                let settled = obj["spec"]["targetRobot"] == winner.as_str()
                    && obj["metadata"]["annotations"]["robot.k8s4r.io/original-robot"].is_null();
                settled.then_some(())
            },
        );
        let [w, l] = [&winner, &loser].map(|n| {
            originals
                .iter_mut()
                .chain(replacements.iter_mut())
                .find(|r| &r.name == n)
                .unwrap()
                .task_names()
        });
        assert!(w.contains(&t), "{}: the winner {winner} runs {t}: {w:?}", c.name);
        assert!(!l.contains(&t), "{}: the loser {loser} is told to stop: {l:?}", c.name);
    }
    // The returning robot's status counts again where its copy won.
    let a = &mut originals[0];
    let reply = a.report("ko-g-r0-t", "running");
    assert_eq!(reply["results"][0]["outcome"], "applied", "{reply}");
    let t = server.object("tasks", "ko-g-r0-t").unwrap();
    assert_eq!(t["status"]["state"], "running", "{t}");
}
