#![cfg(feature = "server")]
//! The dashboard (`/ui/`) in a real headless Chromium driven over
//! WebDriver (tests/ui_util), against the real server binary: log in with
//! a token, the fleet of registered robots, a Job applied with kubectl
//! appearing without a reload, a viewer without mutating controls whose
//! forged POSTs are refused. Screenshots go to target/ui/.

mod common;
mod server_util;
mod ui_util;

use common::ConnectedAgent;
use serde_json::json;
use server_util::{have_kubectl, wait_for, Robot, Server};
use std::time::{Duration, Instant};
use ui_util::{Browser, Http};

const T: Duration = Duration::from_secs(20);
const ADMIN: &str = "ui-admin-token-0123456789abcdef";
const VIEWER: &str = "ui-viewer-token-0123456789abcdef";
const OPERATOR: &str = "ui-operator-token-0123456789abcdef";

/// A server with an admin, a viewer and an operator token (their files
/// live as long as the returned directory).
fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{VIEWER},vera,1,k8s4r:viewers\n{OPERATOR},otto,2,k8s4r:operators\n"),
    )
    .unwrap();
    let admin = dir.path().join("admin-token");
    std::fs::write(&admin, ADMIN).unwrap();
    let s = Server::start_with(&[
        "--token-auth-file",
        tokens.to_str().unwrap(),
        "--admin-token-file",
        admin.to_str().unwrap(),
    ]);
    (s, dir)
}

/// A Job of one task running `command args`.
fn job_yaml(name: &str, command: &str, args: &str) -> String {
    format!(
        "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  taskGroups:\n    - name: g\n      tasks:\n        - {{name: t, driver: exec, config: {{execConfig: {{command: {command}, args: {args}}}}}}}\n"
    )
}

fn apply_yaml(s: &Server, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("job.yaml");
    std::fs::write(&f, yaml).unwrap();
    s.kubectl_ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn apply(s: &Server, name: &str) {
    apply_yaml(s, &job_yaml(name, "/bin/sleep", "['60']"));
}

/// Whether Job `name` exists, asked with kubectl (the admin's kubeconfig).
fn job_exists(s: &Server, name: &str) -> bool {
    let out = s.kubectl(&["get", "job", name, "-o", "name"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("NotFound"),
        "kubectl get job {name}: {err}"
    );
    out.status.success()
}

fn log_in(b: &Browser, s: &Server, token: &str) {
    b.goto(&s.url("/ui/"));
    wait_for("the login page", T, || b.url().ends_with("/ui/login").then_some(()));
    b.type_into("#token", token);
    b.click("#login-submit");
    wait_for("the fleet page after login", T, || {
        b.url().ends_with("/ui/fleet").then_some(())
    });
}

/// Wait until the page's live stream is open (the dot in the header).
fn live(b: &Browser) {
    wait_for("the live stream to open", T, || b.find("#live.on").map(|_| ()));
}

#[test]
fn an_admin_logs_in_sees_the_fleet_and_a_new_job_appears_live() {
    assert!(have_kubectl(), "kubectl is needed: run `bash .ci/install-tools.sh`");
    let (s, _tokens) = server();
    let join = s.join_token();
    let _robots: Vec<Robot> = ["arm-1", "arm-2", "cart-7"]
        .iter()
        .map(|n| Robot::register(&s, &join, n, json!({"site": "lab"})))
        .collect();
    let b = Browser::start();

    // A page without a session sends the browser to log in; a wrong token
    // is refused there.
    b.goto(&s.url("/ui/fleet"));
    wait_for("the login page", T, || b.url().ends_with("/ui/login").then_some(()));
    b.type_into("#token", "not-a-token-of-this-server");
    b.click("#login-submit");
    wait_for("the refusal", T, || {
        b.text(".error").contains("not valid").then_some(())
    });
    log_in(&b, &s, ADMIN);

    let cookie = b.cookie("k8s4r_session").expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert!(cookie["value"].as_str().unwrap().len() >= 64, "{cookie}");

    // Every registered robot is listed with its phase and labels.
    let table = b.text("#robots");
    for n in ["arm-1", "arm-2", "cart-7"] {
        assert!(table.contains(n), "fleet lacks {n}:\n{table}");
    }
    assert!(table.contains("site=lab"), "{table}");
    b.screenshot("fleet");

    // A robot's page: its device information as the agent reported it.
    b.click("#robots a[href$='/arm-1']");
    wait_for("the robot page", T, || {
        b.text("pre.device").contains("arm-1.local").then_some(())
    });
    b.screenshot("robot");

    // Search by name, on the server.
    b.goto(&s.url("/ui/fleet?q=arm"));
    let table = b.text("#robots");
    assert!(
        table.contains("arm-1") && table.contains("arm-2") && !table.contains("cart-7"),
        "{table}"
    );

    // A Job applied with kubectl shows up on the open jobs page without a
    // reload (a marker set in the page survives) within 1 s.
    b.goto(&s.url("/ui/jobs"));
    live(&b);
    b.script("window.__sameDocument = 42;");
    apply(&s, "ui-live");
    let applied = Instant::now();
    wait_for("the new job on the jobs page", Duration::from_secs(1), || {
        b.find("#jobs tr[data-name='ui-live']").map(|_| ())
    });
    let took = applied.elapsed();
    assert_eq!(
        b.script("return window.__sameDocument;"),
        json!(42),
        "the page was reloaded"
    );
    eprintln!("the job appeared {took:?} after kubectl apply returned");
    // Its first version (a Rollout) shows in the Rollout column, live too.
    wait_for("the job's rollout on the jobs page", T, || {
        let cell = b.text("#jobs tr[data-name='ui-live'] td.rollout");
        cell.starts_with("v1 ").then_some(())
    });
    b.screenshot("jobs");

    // The admin sees the delete control on the job's page, and it works.
    b.goto(&s.url("/ui/jobs/default/ui-live"));
    b.element("#delete-job");
    assert!(job_exists(&s, "ui-live"));
    b.screenshot("job");
    b.click("#delete-job button");
    wait_for("the jobs page after deleting", T, || {
        b.url().ends_with("/ui/jobs").then_some(())
    });
    wait_for("the job to be gone", T, || (!job_exists(&s, "ui-live")).then_some(()));

    // The events page lists what the controllers recorded.
    b.goto(&s.url("/ui/events"));
    wait_for("the events of the job", T, || {
        b.text("#events").contains("ui-live").then_some(())
    });

    // Log out: the cookie names no session any more.
    b.goto(&s.url("/ui/fleet"));
    b.click("header form button");
    wait_for("the login page after logout", T, || {
        b.url().ends_with("/ui/login").then_some(())
    });
    let old = format!("k8s4r_session={}", cookie["value"].as_str().unwrap());
    let r = Http::new(&s.base, &s.kubeconfig).send("GET", "/ui/fleet", None, &[("Cookie", &old)]);
    assert_eq!(r.status, 303, "a logged-out session still works");
    assert_eq!(r.header("location"), Some("/ui/login"));
}

#[test]
fn a_viewer_sees_no_mutating_control_and_forged_posts_are_refused() {
    assert!(have_kubectl(), "kubectl is needed: run `bash .ci/install-tools.sh`");
    let (s, _tokens) = server();
    apply(&s, "kept");
    let b = Browser::start();
    log_in(&b, &s, VIEWER);
    b.goto(&s.url("/ui/jobs/default/kept"));
    b.element("table.groups");
    assert!(b.find("#delete-job").is_none(), "a viewer is shown the delete control");
    assert!(b.find("form[method='post'][action*='delete']").is_none());
    b.screenshot("job-as-viewer");

    let session = b.cookie("k8s4r_session").expect("a session cookie");
    let cookie = format!("k8s4r_session={}", session["value"].as_str().unwrap());
    // The viewer's real CSRF token (their logout form carries it).
    let csrf = b.script("return document.querySelector(\"input[name='csrf']\").value;");
    let csrf = csrf.as_str().expect("a CSRF token").to_string();
    let http = Http::new(&s.base, &s.kubeconfig);
    let post =
        |body: &str, headers: &[(&str, &str)]| http.send("POST", "/ui/jobs/default/kept/delete", Some(body), headers);
    let no_csrf = post("", &[("Cookie", &cookie)]);
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let wrong = post("csrf=0123456789abcdef", &[("Cookie", &cookie)]);
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let right_but_viewer = post(&format!("csrf={csrf}"), &[("Cookie", &cookie)]);
    assert_eq!(right_but_viewer.status, 403, "{}", right_but_viewer.body);
    assert!(right_but_viewer.body.contains("vera"), "{}", right_but_viewer.body);
    let no_cookie = post(&format!("csrf={csrf}"), &[]);
    assert_eq!(no_cookie.status, 401, "{}", no_cookie.body);
    assert!(job_exists(&s, "kept"), "a forged POST deleted the job");

    // An operator's CSRF token in the right form, sent from another site
    // (the browser names it in Origin), is refused too.
    let op = Browser::start();
    log_in(&op, &s, OPERATOR);
    op.goto(&s.url("/ui/jobs/default/kept"));
    op.element("#delete-job");
    let op_cookie = format!(
        "k8s4r_session={}",
        op.cookie("k8s4r_session").unwrap()["value"].as_str().unwrap()
    );
    let op_csrf = op.script("return document.querySelector(\"#delete-job input[name='csrf']\").value;");
    let body = format!("csrf={}", op_csrf.as_str().unwrap());
    let cross = post(&body, &[("Cookie", &op_cookie), ("Origin", "https://evil.example")]);
    assert_eq!(cross.status, 403, "{}", cross.body);
    assert!(job_exists(&s, "kept"), "a cross-site POST deleted the job");
}

#[test]
fn pages_are_small_and_carry_a_strict_content_security_policy() {
    let (s, _tokens) = server();
    let http = Http::new(&s.base, &s.kubeconfig);
    let login = http.send("POST", "/ui/login", Some(&format!("token={ADMIN}")), &[]);
    assert_eq!(login.status, 303, "{}", login.body);
    let set = login.header("set-cookie").expect("a session cookie").to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    for page in [
        "/ui/fleet",
        "/ui/jobs",
        "/ui/events",
        "/ui/static/app.js",
        "/ui/static/app.css",
    ] {
        let r = http.send("GET", page, None, &[("Cookie", &cookie)]);
        assert_eq!(r.status, 200, "{page}: {}", r.body);
        assert!(r.body.len() < 50_000, "{page} is {} bytes", r.body.len());
        let csp = r.header("content-security-policy").expect("a CSP");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        if page.ends_with("/fleet") {
            assert!(!r.body.contains("<script>"), "inline script on {page}");
        }
    }
    // Paged on the server: 55 robots are 50 rows and a next page of 5;
    // search and label selectors apply before paging.
    let robots: String = (0..55)
        .map(|i| {
            format!(
                "---\napiVersion: robot.k8s4r.io/v1alpha1\nkind: Robot\nmetadata:\n  name: robot-{i:03}\n  labels: {{half: \"{}\"}}\nspec:\n  robotId: robot-{i:03}\n",
                i % 2
            )
        })
        .collect();
    apply_yaml(&s, &robots);
    let rows = |path: &str| {
        let r = http.send("GET", path, None, &[("Cookie", &cookie)]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        (r.body.matches("<tr data-name=").count(), r.body)
    };
    let (n, first) = rows("/ui/fleet");
    assert_eq!(n, 50, "{first}");
    assert!(
        first.contains("id=\"next\"") && !first.contains("id=\"prev\""),
        "{first}"
    );
    let (n, second) = rows("/ui/fleet?offset=50");
    assert_eq!(n, 5, "{second}");
    assert!(second.contains("robot-054") && !second.contains("id=\"next\"") && second.contains("id=\"prev\""));
    assert_eq!(rows("/ui/fleet?q=robot-05").0, 5);
    assert_eq!(rows("/ui/fleet?selector=half%3D1").0, 27);
    assert_eq!(rows("/ui/fleet?selector=half%3D1&q=robot-05").0, 2);

    // Names are escaped: an event message or label can hold markup.
    let r = http.send("GET", "/ui/fleet?q=%3Cscript%3Ex", None, &[("Cookie", &cookie)]);
    assert!(
        r.body.contains("&lt;script&gt;x") && !r.body.contains("<script>x"),
        "{}",
        r.body
    );
}

/// The highest `tick-N` in a log text.
fn last_tick(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("tick-")?.trim().parse().ok())
        .max()
}

#[test]
fn a_tasks_log_tail_updates_live_from_a_real_agent() {
    assert!(have_kubectl(), "kubectl is needed: run `bash .ci/install-tools.sh`");
    let (s, tokens) = server();
    let join = s.join_token();
    let _agent = ConnectedAgent::start(
        &s.agent_base,
        &join,
        "logbot",
        "demo=true",
        &tokens.path().join("agent"),
        &[],
    );
    wait_for("robot logbot Online", Duration::from_secs(30), || {
        let out = s.kubectl(&["get", "robot", "logbot", "-o", "jsonpath={.status.phase}"]);
        (String::from_utf8_lossy(&out.stdout) == "Online").then_some(())
    });
    let ticking = "['-c', 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done']";
    apply_yaml(&s, &job_yaml("ticker", "/bin/sh", ticking));
    let b = Browser::start();
    log_in(&b, &s, ADMIN);
    b.goto(&s.url("/ui/tasks/default/ticker-g-r0-t"));
    b.script("window.__sameDocument = 7;");
    let first = wait_for("the first log lines on the task page", Duration::from_secs(30), || {
        last_tick(&b.text("#log"))
    });
    // The tail grows on the open page: no reload (the marker survives).
    wait_for("the log tail to grow", Duration::from_secs(20), || {
        last_tick(&b.text("#log")).filter(|n| *n >= first + 3)
    });
    assert_eq!(
        b.script("return window.__sameDocument;"),
        json!(7),
        "the page was reloaded"
    );
    b.screenshot("task-log");

    // The fleet page: each robot's agent version and the task statuses it
    // still held undelivered at its last report (none for the connected
    // agent; many for a robot flushing a long outage in batches).
    let mut slow = Robot::register(&s, &join, "slowlink", json!({}));
    let r = slow.try_report(&json!({"updates": [], "agentVersion": "0.0.9", "backlog": 1234}));
    assert_eq!(r.status, 200, "{}", r.body);
    b.goto(&s.url("/ui/fleet"));
    let texts = |selector: &str| -> Vec<String> {
        let js =
            format!("return Array.from(document.querySelectorAll(\"{selector}\")).map(c => c.textContent.trim());");
        serde_json::from_value(b.script(&js)).unwrap()
    };
    let head = texts("#robots thead th");
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column: {head:?}"))
    };
    let (agent_col, backlog_col) = (col("Agent"), col("Backlog"));
    let cells = |robot: &str| texts(&format!("#robots tr[data-name='{robot}'] td"));
    let logbot = cells("logbot");
    assert_eq!(logbot[agent_col], env!("CARGO_PKG_VERSION"), "{logbot:?}");
    assert_eq!(logbot[backlog_col], "0", "{logbot:?}");
    // One label set: what selectors match, shown once.
    assert_eq!(logbot[col("Labels")], "demo=true", "{logbot:?}");
    let slow_row = cells("slowlink");
    assert_eq!(slow_row[agent_col], "0.0.9", "{slow_row:?}");
    assert_eq!(slow_row[backlog_col], "1234", "{slow_row:?}");
    b.screenshot("fleet-backlog");
}
