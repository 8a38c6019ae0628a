//! Authorization: what a request asks to do ([`parse`], kube-apiserver's
//! request info), and whether its user may ([`decide`]). The middleware
//! and `kubectl auth can-i` (SelfSubjectAccessReview) both ask [`decide`].
//!
//! Rules, by group (a user's groups add up):
//! 1. admins (`k8s4r:admins`, `system:masters`): everything.
//! 2. every authenticated user: discovery and OpenAPI (`GET /api*`,
//!    `/apis*`, `/openapi*`, `/version`, health), and creating its own
//!    SelfSubjectAccessReviews and SelfSubjectReviews.
//! 3. operators (`k8s4r:operators`): every verb on Jobs, TaskGroups and
//!    Tasks (with `status` and `log`); get/list/watch on Robots, Events and
//!    the core/v1 view (Pods with `log`, Nodes); `GET /metrics`.
//! 4. viewers (`k8s4r:viewers`): get/list/watch on all of those, logs
//!    included; `GET /metrics`.
//! 5. nothing else: other paths (join tokens, robot credentials and every
//!    other operator endpoint under `/agent/v1`), other resources and a
//!    user in no known group are denied.

use super::{User, ADMINS, OPERATORS, SYSTEM_MASTERS, VIEWERS};
use crate::api::meta::GROUP;

/// The Kubernetes verbs that change something.
pub const MUTATING: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ: &[&str] = &["get", "list", "watch"];
/// Every verb a resource of this server has.
const ALL_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
pub const ACCESS_REVIEWS: &str = "selfsubjectaccessreviews";
pub const SELF_REVIEWS: &str = "selfsubjectreviews";

/// What a request asks to do, as kube-apiserver's authorizers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// A Kubernetes verb for a resource (`list`, `create`, ...), the
    /// lowercased HTTP method for a path (`get`, `post`, ...).
    pub verb: String,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Resource(Resource),
    /// Anything that is not an API resource: discovery, /metrics, the
    /// operator endpoints of `/agent/v1`.
    Path(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group (`/api/v1`).
    pub group: String,
    pub version: String,
    /// The plural (`jobs`).
    pub resource: String,
    /// `status`, `log`, or empty.
    pub subresource: String,
    /// Empty for cluster-wide or all-namespace requests.
    pub namespace: String,
    /// Empty on collections (and on create: the name is in the body).
    pub name: String,
}

impl Request {
    /// Whether this request changes state (and is audited).
    pub fn is_mutating(&self) -> bool {
        match &self.target {
            Target::Resource(r) => MUTATING.contains(&self.verb.as_str()) && !is_self_review(r),
            Target::Path(_) => matches!(self.verb.as_str(), "post" | "put" | "patch" | "delete"),
        }
    }
}

/// The request behind `method` on `path` (`query` for `watch=true`), after
/// kube-apiserver's `RequestInfoFactory`: `/api/{v}/...` and
/// `/apis/{group}/{v}/...` with at least a resource are resources
/// (optionally under `namespaces/{ns}/`, then `{resource}/{name}/{sub}`);
/// everything else is a path. Segments are percent-decoded, as the router
/// decodes them, so both see the same resource.
pub fn parse(method: &str, path: &str, query: Option<&str>) -> Request {
    let path_request = || Request {
        verb: method.to_ascii_lowercase(),
        target: Target::Path(path.to_string()),
    };
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let (group, rest) = match parts.first().map(String::as_str) {
        Some("api") if parts.len() >= 3 => (String::new(), &parts[1..]),
        Some("apis") if parts.len() >= 4 => (parts[1].clone(), &parts[2..]),
        _ => return path_request(),
    };
    let version = rest[0].clone();
    let mut rest = &rest[1..];
    let mut r = Resource {
        group,
        version,
        ..Default::default()
    };
    if rest[0] == "namespaces" && rest.len() > 1 {
        r.namespace = rest[1].clone();
        // `namespaces/{ns}` alone is the namespace object itself;
        // `namespaces/{ns}/status` its subresource (kube's rule).
        if rest.len() > 2 && !matches!(rest[2].as_str(), "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    r.resource = rest[0].clone();
    r.name = rest.get(1).cloned().unwrap_or_default();
    r.subresource = rest.get(2).cloned().unwrap_or_default();
    let mut verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    if r.name.is_empty() && verb == "get" {
        verb = if is_watch(query) { "watch" } else { "list" }.into();
    } else if r.name.is_empty() && verb == "delete" {
        verb = "deletecollection".into();
    }
    Request {
        verb,
        target: Target::Resource(r),
    }
}

fn is_watch(query: Option<&str>) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
}

/// `%XX` escapes decoded; a segment that does not decode to UTF-8 is kept
/// as written (it then names no known resource).
fn percent_decode(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
}

fn is_self_review(r: &Resource) -> bool {
    (r.group == AUTHORIZATION_GROUP && r.resource == ACCESS_REVIEWS)
        || (r.group == AUTHENTICATION_GROUP && r.resource == SELF_REVIEWS)
}

/// The answer, with the reason `kubectl auth can-i` may show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

fn allow(reason: impl Into<String>) -> Decision {
    Decision {
        allowed: true,
        reason: reason.into(),
    }
}

fn in_group(user: &User, names: &[&str]) -> bool {
    user.groups.iter().any(|g| names.contains(&g.as_str()))
}

/// Resources operators and viewers may see: (group, plural, subresources).
const FLEET: &[(&str, &str, &[&str])] = &[
    (GROUP, "jobs", &["", "status"]),
    (GROUP, "taskgroups", &["", "status"]),
    (GROUP, "tasks", &["", "status", "log"]),
    (GROUP, "robots", &["", "status"]),
    (GROUP, "rollouts", &["", "status"]),
    // Written by admins only: a release replaces robots' agents.
    (GROUP, "agentreleases", &["", "status"]),
    ("", "events", &[""]),
    // The read-only core/v1 view: Tasks as Pods, Robots as Nodes.
    ("", "pods", &["", "log"]),
    ("", "nodes", &[""]),
];
/// Of those, what operators may also change.
// Rollouts: operators pause, resume and promote them (spec.paused, spec.promoted).
const OPERATED: &[&str] = &["jobs", "taskgroups", "tasks", "rollouts"];

/// Discovery, OpenAPI, version and health: readable by every user.
fn is_discovery(path: &str) -> bool {
    let under = |root: &str| path == root || path.starts_with(&format!("{root}/"));
    under("/api")
        || under("/apis")
        || under("/openapi")
        || matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

/// May `user` do `req`? Rules in the module doc, in that order.
pub fn decide(user: &User, req: &Request) -> Decision {
    if in_group(user, &[ADMINS, SYSTEM_MASTERS]) {
        return allow("admins may do everything");
    }
    let operator = in_group(user, &[OPERATORS]);
    let viewer = in_group(user, &[VIEWERS]);
    let verb = req.verb.as_str();
    match &req.target {
        Target::Path(path) => {
            let read = matches!(verb, "get" | "head");
            if read && is_discovery(path) {
                return allow("every authenticated user may read discovery");
            }
            if read && path == "/metrics" && (operator || viewer) {
                return allow("operators and viewers may read /metrics");
            }
        }
        Target::Resource(r) => {
            if is_self_review(r) && verb == "create" {
                return allow("every authenticated user may review its own access");
            }
            let fleet = FLEET.iter().any(|(g, plural, subs)| {
                *g == r.group && *plural == r.resource && subs.contains(&r.subresource.as_str())
            });
            if fleet && operator && OPERATED.contains(&r.resource.as_str()) && ALL_VERBS.contains(&verb) {
                return allow(format!("operators may {verb} {}", r.resource));
            }
            if fleet && (operator || viewer) && READ.contains(&verb) {
                return allow(format!("operators and viewers may {verb} {}", r.resource));
            }
        }
    }
    Decision {
        allowed: false,
        reason: String::new(),
    }
}

/// kube-apiserver's 403 message: `jobs.robot.k8s4r.io "x" is forbidden:
/// User "alice" cannot create resource "jobs" in API group
/// "robot.k8s4r.io" in the namespace "default"`.
pub fn forbidden_message(user: &str, req: &Request) -> String {
    let verb = &req.verb;
    match &req.target {
        Target::Path(path) => format!("forbidden: User {user:?} cannot {verb} path {path:?}"),
        Target::Resource(r) => {
            let mut resource = r.resource.clone();
            if !r.subresource.is_empty() {
                resource = format!("{resource}/{}", r.subresource);
            }
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", r.namespace)
            };
            let why = format!(
                "User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
                r.group
            );
            let qualified = qualified(r);
            if r.name.is_empty() {
                format!("{qualified} is forbidden: {why}")
            } else {
                format!("{qualified} {:?} is forbidden: {why}", r.name)
            }
        }
    }
}

/// `jobs.robot.k8s4r.io`, `events` (core group).
pub fn qualified(r: &Resource) -> String {
    if r.group.is_empty() {
        r.resource.clone()
    } else {
        format!("{}.{}", r.resource, r.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "/apis/robot.k8s4r.io/v1alpha1";

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Request {
        Request {
            verb: verb.into(),
            target: Target::Resource(Resource {
                group: group.into(),
                version: if group.is_empty() { "v1" } else { "v1alpha1" }.into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: ns.into(),
                name: name.into(),
            }),
        }
    }

    fn path(verb: &str, p: &str) -> Request {
        Request {
            verb: verb.into(),
            target: Target::Path(p.into()),
        }
    }

    #[test]
    fn parses_paths_as_kube_apiserver_does() {
        let ns = format!("{G}/namespaces/default");
        let cases: Vec<(&str, String, Option<&str>, Request)> = vec![
            (
                "GET",
                format!("{ns}/jobs"),
                None,
                res("list", GROUP, "jobs", "", "default", ""),
            ),
            (
                "GET",
                format!("{ns}/jobs"),
                Some("watch=true&resourceVersion=4"),
                res("watch", GROUP, "jobs", "", "default", ""),
            ),
            (
                "GET",
                format!("{G}/tasks"),
                None,
                res("list", GROUP, "tasks", "", "", ""),
            ),
            (
                "GET",
                format!("{ns}/jobs/x"),
                None,
                res("get", GROUP, "jobs", "", "default", "x"),
            ),
            (
                "POST",
                format!("{ns}/jobs"),
                Some("fieldManager=kubectl"),
                res("create", GROUP, "jobs", "", "default", ""),
            ),
            (
                "PUT",
                format!("{ns}/jobs/x"),
                None,
                res("update", GROUP, "jobs", "", "default", "x"),
            ),
            (
                "PATCH",
                format!("{ns}/jobs/x/status"),
                None,
                res("patch", GROUP, "jobs", "status", "default", "x"),
            ),
            (
                "DELETE",
                format!("{ns}/jobs/x"),
                None,
                res("delete", GROUP, "jobs", "", "default", "x"),
            ),
            (
                "DELETE",
                format!("{ns}/jobs"),
                None,
                res("deletecollection", GROUP, "jobs", "", "default", ""),
            ),
            (
                "GET",
                format!("{ns}/tasks/t/log"),
                Some("follow=true"),
                res("get", GROUP, "tasks", "log", "default", "t"),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/events".into(),
                None,
                res("list", "", "events", "", "default", ""),
            ),
            (
                "GET",
                "/api/v1/events".into(),
                None,
                res("list", "", "events", "", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/kube-system".into(),
                None,
                res("get", "", "namespaces", "", "kube-system", "kube-system"),
            ),
            // The router decodes `%73`: so does the parser.
            (
                "POST",
                format!("{ns}/job%73"),
                None,
                res("create", GROUP, "jobs", "", "default", ""),
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(),
                None,
                Request {
                    verb: "create".into(),
                    target: Target::Resource(Resource {
                        group: AUTHORIZATION_GROUP.into(),
                        version: "v1".into(),
                        resource: ACCESS_REVIEWS.into(),
                        ..Default::default()
                    }),
                },
            ),
            ("GET", G.into(), None, path("get", G)),
            ("GET", "/apis".into(), None, path("get", "/apis")),
            ("GET", "/api/v1".into(), None, path("get", "/api/v1")),
            (
                "POST",
                "/agent/v1/jointokens".into(),
                None,
                path("post", "/agent/v1/jointokens"),
            ),
            (
                "DELETE",
                "/agent/v1/robottokens/r1".into(),
                None,
                path("delete", "/agent/v1/robottokens/r1"),
            ),
        ];
        for (method, p, query, want) in cases {
            assert_eq!(parse(method, &p, query), want, "{method} {p}");
        }
    }

    fn user(groups: &[&str]) -> User {
        User {
            name: "u".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn may(groups: &[&str], method: &str, p: &str) -> bool {
        decide(&user(groups), &parse(method, p, None)).allowed
    }

    #[test]
    fn the_rules_by_group() {
        let jobs = format!("{G}/namespaces/default/jobs");
        let job = format!("{jobs}/x");
        let robots = format!("{G}/namespaces/default/robots");
        let log = format!("{G}/namespaces/default/tasks/t/log");
        let events = "/api/v1/namespaces/default/events";
        for g in [ADMINS, SYSTEM_MASTERS] {
            for (m, p) in [
                ("POST", jobs.as_str()),
                ("DELETE", &robots),
                ("POST", "/agent/v1/jointokens"),
                ("GET", "/nowhere"),
            ] {
                assert!(may(&[g], m, p), "{g} {m} {p}");
            }
        }
        let op = [OPERATORS];
        for (m, p) in [
            ("POST", &jobs),
            ("PUT", &job),
            ("PATCH", &job),
            ("DELETE", &job),
            ("DELETE", &jobs),
            ("GET", &log),
            ("GET", &robots),
            ("PUT", &format!("{job}/status")),
        ] {
            assert!(may(&op, m, p), "operator {m} {p}");
        }
        assert!(may(&op, "GET", events) && may(&op, "GET", "/metrics"));
        for (m, p) in [
            ("POST", robots.as_str()),
            ("DELETE", &format!("{robots}/r1")),
            ("PATCH", &format!("{robots}/r1")),
            ("POST", "/agent/v1/jointokens"),
            ("GET", "/agent/v1/jointokens"),
            ("DELETE", "/agent/v1/robottokens/r1"),
            ("POST", "/agent/v1/anything-new"),
            ("POST", events),
        ] {
            assert!(!may(&op, m, p), "operator must not {m} {p}");
        }
        let view = [VIEWERS];
        for (m, p) in [
            ("GET", jobs.as_str()),
            ("GET", &job),
            ("GET", &log),
            ("GET", &robots),
            ("GET", events),
            ("GET", "/metrics"),
            ("GET", "/api/v1/namespaces/default/pods"),
            ("GET", "/api/v1/namespaces/default/pods/t/log"),
            ("GET", "/api/v1/nodes/r1"),
        ] {
            assert!(may(&view, m, p), "viewer {m} {p}");
        }
        // The core/v1 view is read-only, for operators too.
        for (m, p) in [
            ("DELETE", "/api/v1/namespaces/default/pods/t"),
            ("POST", "/api/v1/namespaces/default/pods"),
            ("PATCH", "/api/v1/nodes/r1"),
            ("GET", "/api/v1/namespaces/default/pods/t/exec"),
        ] {
            assert!(!may(&op, m, p), "operator must not {m} {p}");
        }
        assert!(decide(&user(&view), &parse("GET", &jobs, Some("watch=true"))).allowed);
        for (m, p) in [
            ("POST", jobs.as_str()),
            ("PUT", &job),
            ("PATCH", &job),
            ("DELETE", &job),
            ("DELETE", &jobs),
            ("GET", "/agent/v1/jointokens"),
            ("GET", "/debug/panic"),
        ] {
            assert!(!may(&view, m, p), "viewer must not {m} {p}");
        }
        // Unknown resources are nobody's but the admins'.
        assert!(!may(&op, "GET", &format!("{G}/namespaces/default/secrets")));
        assert!(!may(&view, "GET", "/api/v1/namespaces/default/secrets"));
        // Everyone authenticated: discovery and self reviews, nothing more.
        for groups in [&[][..], &["system:authenticated"], &view, &op] {
            for p in [
                "/api",
                "/api/v1",
                "/apis",
                "/apis/robot.k8s4r.io",
                G,
                "/openapi/v3",
                "/version",
            ] {
                assert!(may(groups, "GET", p), "{groups:?} GET {p}");
            }
            assert!(may(
                groups,
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            ));
            assert!(may(groups, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews"));
        }
        let nobody: [&str; 1] = ["system:authenticated"];
        assert!(!may(&nobody, "GET", &jobs) && !may(&nobody, "GET", "/metrics") && !may(&nobody, "POST", G));
    }

    #[test]
    fn mutating_requests_are_the_audited_ones() {
        let jobs = format!("{G}/namespaces/default/jobs");
        assert!(parse("POST", &jobs, None).is_mutating());
        assert!(parse("DELETE", &jobs, None).is_mutating());
        assert!(!parse("GET", &jobs, Some("watch=true")).is_mutating());
        assert!(parse("POST", "/agent/v1/jointokens", None).is_mutating());
        assert!(!parse("GET", "/agent/v1/jointokens", None).is_mutating());
        assert!(!parse("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", None).is_mutating());
    }

    #[test]
    fn forbidden_messages_read_as_kube_apiserver_writes_them() {
        let jobs = format!("{G}/namespaces/default/jobs");
        assert_eq!(
            forbidden_message("alice", &parse("POST", &jobs, None)),
            "jobs.robot.k8s4r.io is forbidden: User \"alice\" cannot create resource \"jobs\" in API group \"robot.k8s4r.io\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message("alice", &parse("PUT", &format!("{jobs}/x/status"), None)),
            "jobs.robot.k8s4r.io \"x\" is forbidden: User \"alice\" cannot update resource \"jobs/status\" in API group \"robot.k8s4r.io\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message("bob", &parse("GET", "/api/v1/events", None)),
            "events is forbidden: User \"bob\" cannot list resource \"events\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            forbidden_message("bob", &parse("POST", "/agent/v1/jointokens", None)),
            "forbidden: User \"bob\" cannot post path \"/agent/v1/jointokens\""
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("job%73"), "jobs");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
