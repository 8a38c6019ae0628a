//! The bodies of the fuzz targets: raw bytes in, a panic only on a real bug.
//! Shared by the cargo-fuzz targets (`tests/fuzz/fuzz_targets/*.rs`, nightly,
//! `make fuzz`) and the stable replay test (`tests/fuzz_api.rs`, every file
//! under `tests/fuzz/corpus/` and `tests/fuzz/regressions/`), which include
//! this file with `#[path]`.
//!
//! `cfg(feature = "server")`: the main crate's feature in the replay test,
//! the fuzz crate's own (default on, it enables the main crate's) in cargo-fuzz.

#![allow(dead_code)] // each fuzz target uses one body

use k8s4r::api::agent_protocol::{
    Assignments, JoinTokenRequest, LogUpload, RegisterRequest, RegisterResponse, StatusReply, StatusReport,
};
use k8s4r::api::decode::{decode_value, AnyObject};
use k8s4r::api::validate::check_dns_subdomain;
use k8s4r::api::{decode_all, validate, Duration, NetworkConfig, Quantity};
use k8s4r::envoy::check::{check_runtime, check_structure};
use k8s4r::envoy::config::{render_runtime, render_static, Identity, Layout};
use k8s4r::envoy::{group_network, plan, ProxyOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::path::Path;

#[path = "execute.rs"]
mod execute;
pub use execute::{execute, execute_case, Executed};

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target by name (the directory names under corpus/ and regressions/).
pub const TARGETS: &[(&str, Body)] = &[
    ("manifest", manifest),
    ("agent_api", agent_api),
    ("envoy_render", envoy_render),
    ("units", units),
    ("execute", execute),
];

// ------------------------------------------------------------------ manifest

/// Manifest text → decode → validate. Decoded objects also survive what the
/// server does with them: serialize to JSON, store, decode again. That
/// round trip keeps the object, adds no unknown-field warnings and does not
/// change what validation says.
pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for d in decode_all(&text).into_iter().flatten() {
        let errors = validate(&d.object);
        let stored = serde_json::to_value(&d.object).expect("a decoded object serializes");
        let again = decode_value(stored.clone())
            .unwrap_or_else(|e| panic!("stored form does not decode again: {e}\n{stored:#}"));
        assert_eq!(again.object, d.object, "round trip changed the object\n{stored:#}");
        assert!(
            again.warnings.is_empty(),
            "stored form has unknown fields {:?}\n{stored:#}",
            again.warnings
        );
        assert_eq!(
            validate(&again.object),
            errors,
            "round trip changed validation\n{stored:#}"
        );
    }
}

// ------------------------------------------------------------------ agent API

/// A request body as the server parses it: first byte = content type (even:
/// JSON, odd: YAML), the rest the body. Every request type of `/agent/v1`
/// is tried, with the checks the server applies before using it; what
/// parses must round-trip exactly through the agent's JSON encoding (floats
/// included: the server parses them with `float_roundtrip`). The agent's
/// side of the same bytes (responses decoded from JSON) must not panic.
pub fn agent_api(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if let Some(v) = server_parse_body(mode % 2 == 1, body) {
        if let Some(req) = request::<RegisterRequest>(&v) {
            let _ = check_dns_subdomain(&req.name);
            if let Some(ns) = req.namespace.as_deref().filter(|n| !n.is_empty()) {
                let _ = check_dns_subdomain(ns);
            }
        }
        request::<StatusReport>(&v);
        request::<LogUpload>(&v);
        request::<JoinTokenRequest>(&v);
    }
    let _ = serde_json::from_slice::<Assignments>(body);
    let _ = serde_json::from_slice::<RegisterResponse>(body);
    let _ = serde_json::from_slice::<StatusReply>(body);
}

#[cfg(feature = "server")]
fn server_parse_body(yaml: bool, body: &[u8]) -> Option<Value> {
    use axum::http::{header, HeaderMap, HeaderValue};
    let mut headers = HeaderMap::new();
    let content_type = if yaml { "application/yaml" } else { "application/json" };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    k8s4r::server::http::parse_body(&headers, Ok(axum::body::Bytes::copy_from_slice(body))).ok()
}

/// Without the server there is no server parser to test.
#[cfg(not(feature = "server"))]
fn server_parse_body(_yaml: bool, _body: &[u8]) -> Option<Value> {
    None
}

fn request<T: DeserializeOwned + Serialize + PartialEq + Debug>(v: &Value) -> Option<T> {
    let req: T = serde_json::from_value(v.clone()).ok()?;
    let sent = serde_json::to_vec(&req).expect("a request serializes");
    let received: T = serde_json::from_slice(&sent).unwrap_or_else(|e| {
        panic!(
            "the agent's encoding does not parse: {e}\n{}",
            String::from_utf8_lossy(&sent)
        )
    });
    assert_eq!(received, req, "round trip changed the request");
    Some(req)
}

// ------------------------------------------------------------------ Envoy

/// First byte even: the rest is manifest text. Odd: the rest drives
/// [`generate_job`], which builds a Job around a network from a vocabulary
/// of good and bad values (so the fuzzer reaches the renderer without
/// having to invent YAML). Every group network is planned, and whatever
/// plans must render. A valid manifest's networks must plan, and their
/// configs (one-file and runtime form) must pass the structural check.
pub fn envoy_render(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        for d in decode_all(&String::from_utf8_lossy(rest)).into_iter().flatten() {
            render_object(&d.object);
        }
    } else if let Ok(d) = decode_value(generate_job(&mut Source::new(rest))) {
        render_object(&d.object);
    }
}

/// Plan and render every group network of `object`; the static configs of
/// a valid object (an invalid one's are rendered but not returned).
pub fn render_object(object: &AnyObject) -> Vec<String> {
    let valid = validate(object).is_empty();
    let networks: Vec<(String, String, NetworkConfig)> = match object {
        AnyObject::Job(job) => job
            .spec
            .task_groups
            .iter()
            .filter_map(|g| {
                let net = group_network(g.network.as_ref(), &g.tasks)?;
                Some((job.name().to_string(), g.name.clone(), net))
            })
            .collect(),
        AnyObject::TaskGroup(tg) => group_network(tg.spec.network.as_ref(), &tg.spec.tasks)
            .map(|net| (tg.spec.job_name.clone(), tg.spec.group_name.clone(), net))
            .into_iter()
            .collect(),
        AnyObject::Task(_) | AnyObject::Robot(_) | AnyObject::AgentRelease(_) => Vec::new(),
        #[cfg(feature = "server")]
        AnyObject::Rollout(_) => Vec::new(),
    };
    networks
        .into_iter()
        .filter_map(|(job, group, net)| render_checked(&job, &group, &net, valid))
        .collect()
}

/// Plan, render both forms, check both. `valid`: the network passed
/// validation, so the agent must be able to run it and its config must be
/// sound. An invalid one (the server and `run -f` refuse it before any
/// agent sees it) may fail to plan, and must only not panic or trip a
/// template error.
pub fn render_checked(job: &str, group: &str, network: &NetworkConfig, valid: bool) -> Option<String> {
    let plan = match plan::plan(network, &[]) {
        Ok(p) => p,
        Err(plan::PlanError::Disabled) => return None,
        Err(e) if valid => panic!("a valid network does not plan: {e}\n{network:#?}"),
        Err(_) => return None,
    };
    let layout = Layout::new(Path::new("/run/k8s4r/proxy").join(format!("{job}-{group}")).as_path());
    let node_id = format!("{job}/{group}");
    let id = Identity {
        node_id: node_id.clone(),
        admin_socket: &layout.admin_socket,
    };
    let opts = ProxyOptions::default();
    let text = render_static(&plan, &id, &opts).unwrap_or_else(|e| panic!("render_static: {e}\n{network:#?}"));
    let rt = render_runtime(&plan, &node_id, &layout, &opts).unwrap_or_else(|e| panic!("render_runtime: {e}"));
    if !valid {
        return None;
    }
    if let Err(e) = check_structure(&parse(&text)) {
        panic!("rendered config fails the structural check: {e}\n{network:#?}\n{text}");
    }
    if let Err(e) = check_runtime(&parse(&rt.bootstrap), &parse(&rt.lds), &parse(&rt.cds)) {
        panic!(
            "runtime config fails the structural check: {e}\n{network:#?}\n{}\n{}",
            rt.lds, rt.cds
        );
    }
    for (_, secret) in &rt.sds {
        parse(secret);
    }
    Some(text)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("rendered text is not JSON: {e}\n{text}"))
}

/// Bytes as a stream of choices; zeros once exhausted (the first option).
pub struct Source<'a> {
    data: &'a [u8],
    /// Makes fresh names and ports: unique unless a choice says otherwise.
    fresh: usize,
}

impl<'a> Source<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Source { data, fresh: 0 }
    }
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.data.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.data = rest;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }
    fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        options[self.below(options.len())].clone()
    }
    /// True with probability `in_256`/256.
    fn chance(&mut self, in_256: u8) -> bool {
        self.byte() < in_256
    }
    /// Mostly (15 in 16) a good value, else one of `bad`.
    fn good_or<T: Clone>(&mut self, good: T, bad: &[T]) -> T {
        if self.chance(240) {
            good
        } else {
            self.pick(bad)
        }
    }
    fn fresh(&mut self) -> usize {
        self.fresh += 1;
        self.fresh
    }
    /// The bytes not used yet.
    fn rest(&self) -> &'a [u8] {
        self.data
    }
    fn exhausted(&self) -> bool {
        self.data.is_empty()
    }
}

const BAD_NAMES: &[&str] = &["u1", "out-u1", "u1-local", "in-u1", "Bad_Name", "", "\"q\"", "é"];
const BAD_PORTS: &[i64] = &[20001, 1, 65535, 0, -1, 65536, 70000];
const UPSTREAMS: &[&str] = &[
    "db.example.org:5432",
    "10.0.0.1:80",
    "[::1]:9000",
    "[fe80::1]:1",
    "svc:1",
    "localhost:65535",
    "1.2.3:4",
];
const BAD_UPSTREAMS: &[&str] = &[
    "nope",
    "h:0",
    "h:70000",
    ":80",
    "[::1]",
    "a..b:1",
    "x_y:2",
    "[1.2.3.4]:5",
];
const TRUST_DOMAINS: &[&str] = &["example.org", "partner.net", "a_b"];
const BAD_TRUST_DOMAINS: &[&str] = &["", "Bad.Org", "spiffe://x", "x\"y"];
const SOCKETS: &[Option<&str>] = &[None, Some("/run/spire/a.sock"), Some("/tmp/b.sock")];
const BAD_SOCKETS: &[Option<&str>] = &[Some("rel.sock"), Some("")];
const ADDRESSES: &[Option<&str>] = &[None, Some("0.0.0.0"), Some("::"), Some("127.0.0.1"), Some("10.1.2.3")];
const BAD_ADDRESSES: &[Option<&str>] = &[Some("everywhere"), Some(""), Some("1.2.3.4:5")];
const ID_PATHS: &[&str] = &["", "/a", "/ns/prod/sa/b"];
const BAD_IDS: &[&str] = &["spiffe://partner.net/x", "http://x", "", "spiffe://example.org/../x"];
const PROTOCOLS: &[Option<&str>] = &[None, Some("tcp"), Some("http"), Some("grpc")];
const PATHS: &[&str] = &["/etc/tls/cert.pem", "/etc/tls/key.pem", "/ca.pem", "/etc/other/key.pem"];
const BAD_PATHS: &[&str] = &["rel.pem", "", "/a/../b"];

/// A Job (as JSON) with one or two groups whose networks, and sometimes
/// tasks' networks, are picked from the vocabularies above: mostly valid,
/// with clashes, bad values and hostile strings mixed in.
pub fn generate_job(s: &mut Source<'_>) -> Value {
    let groups: Vec<Value> = (0..1 + s.below(2))
        .map(|g| {
            let tasks: Vec<Value> = (0..1 + s.below(2))
                .map(|t| {
                    let mut task = json!({
                        "name": format!("t{t}"), "driver": "exec",
                        "config": {"execConfig": {"command": "/bin/true"}},
                    });
                    if s.chance(40) {
                        task["network"] = generate_network(s);
                    }
                    task
                })
                .collect();
            let mut group = json!({"name": format!("g{g}"), "count": 1, "tasks": tasks});
            if s.chance(220) {
                group["network"] = generate_network(s);
            }
            group
        })
        .collect();
    json!({
        "apiVersion": k8s4r::api::API_VERSION, "kind": "Job",
        "metadata": {"name": "fz", "namespace": "default"},
        "spec": {"taskGroups": groups},
    })
}

fn generate_spiffe(s: &mut Source<'_>) -> Value {
    let td = s.pick(TRUST_DOMAINS);
    let mut v = json!({"trustDomain": s.good_or(td, BAD_TRUST_DOMAINS)});
    let sock = s.pick(SOCKETS);
    if let Some(sock) = s.good_or(sock, BAD_SOCKETS) {
        v["agentSocketPath"] = json!(sock);
    }
    v
}

/// A SPIFFE ID, mostly in `spiffe`'s trust domain.
fn generate_id(s: &mut Source<'_>, spiffe: Option<&Value>) -> String {
    let td = spiffe.and_then(|v| v["trustDomain"].as_str()).unwrap_or("example.org");
    let good = format!("spiffe://{td}{}", s.pick(ID_PATHS));
    let bad: Vec<String> = BAD_IDS.iter().map(|b| b.to_string()).collect();
    s.good_or(good, &bad)
}

fn generate_network(s: &mut Source<'_>) -> Value {
    let mut net = json!({});
    if s.chance(12) {
        net["enabled"] = json!(s.chance(128));
    }
    if s.chance(12) {
        net["type"] = json!(s.pick(&["envoy", "none", "istio"]));
    }
    if s.chance(190) {
        net["spiffe"] = generate_spiffe(s);
    }
    if s.chance(70) {
        let mut path = || {
            let p = s.pick(PATHS);
            s.good_or(p, BAD_PATHS)
        };
        net["tlsFiles"] = json!({"certPath": path(), "keyPath": path(), "caPath": path()});
    }
    let upstreams: Vec<Value> = (0..s.below(4))
        .map(|_| {
            let n = s.fresh();
            let name = format!("u{n}");
            let (name, port, upstream) = (
                s.good_or(name.as_str(), BAD_NAMES).to_string(),
                s.good_or(20000 + n as i64, BAD_PORTS),
                s.pick(UPSTREAMS),
            );
            let mut up = json!({"name": name, "localPort": port, "upstream": s.good_or(upstream, BAD_UPSTREAMS)});
            if let Some(p) = s.pick(PROTOCOLS) {
                up["protocol"] = json!(p);
            }
            match s.below(4) {
                0 => up["tls"] = json!(false),
                1 => up["tls"] = json!(true),
                _ => {}
            }
            if s.chance(30) {
                up["spiffe"] = generate_spiffe(s);
            }
            if s.chance(60) {
                let spiffe = up.get("spiffe").or(net.get("spiffe")).cloned();
                up["spiffeID"] = json!(generate_id(s, spiffe.as_ref()));
            }
            up
        })
        .collect();
    net["upstreams"] = json!(upstreams);
    if s.chance(90) {
        let inbound: Vec<Value> = (0..1 + s.below(2))
            .map(|_| {
                let n = s.fresh();
                let name = format!("i{n}");
                let mut ib = json!({
                    "name": s.good_or(name.as_str(), BAD_NAMES),
                    "port": s.good_or(30000 + n as i64, BAD_PORTS),
                    "targetPort": s.good_or(8000 + n as i64, BAD_PORTS),
                });
                let address = s.pick(ADDRESSES);
                if let Some(a) = s.good_or(address, BAD_ADDRESSES) {
                    ib["address"] = json!(a);
                }
                if s.chance(30) {
                    ib["spiffe"] = generate_spiffe(s);
                }
                let spiffe = ib.get("spiffe").or(net.get("spiffe")).cloned();
                let count = 1 + s.below(2);
                let count = s.good_or(count, &[0]);
                let ids: Vec<String> = (0..count).map(|_| generate_id(s, spiffe.as_ref())).collect();
                ib["allowedSpiffeIDs"] = json!(ids);
                ib
            })
            .collect();
        net["inbound"] = json!(inbound);
    }
    net
}

// ------------------------------------------------------------------ units

/// First byte even: a duration, odd: a quantity; the rest is the text.
/// Parsing never panics; a value and its error are never both set; a parsed
/// duration printed in Go's form (`1h2m3.5s`, which `from_std` and the
/// docs use) parses back to the same value; a quantity's Display is its
/// text, so it parses to the same amount.
pub fn units(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode % 2 == 0 {
        let d = Duration::new(&text);
        assert_eq!(d.get().is_some(), d.error().is_none(), "{text:?}");
        if let Some(v) = d.get() {
            assert_eq!(Duration::parse(&d.to_string()), Ok(v), "Display of {text:?}");
            let std = Duration::from_std(v);
            assert_eq!(std.get(), Some(v), "from_std of {text:?}");
            assert_eq!(
                Duration::parse(std.text()),
                Ok(v),
                "from_std text {:?} of {text:?}",
                std.text()
            );
            let go = go_duration(v);
            assert_eq!(Duration::parse(&go), Ok(v), "Go form {go:?} of {text:?}");
        }
    } else {
        let q = Quantity::new(&text);
        assert_eq!(q.milli().is_some(), q.error().is_none(), "{text:?}");
        let again = Quantity::new(&q.to_string());
        assert_eq!(again.milli(), q.milli(), "Display of {text:?}");
        if let Some(m) = q.milli() {
            assert!(m >= 0, "{text:?} parsed to a negative {m}");
            let _ = q.units_ceil();
        }
        let json = serde_json::to_string(&q).expect("a quantity serializes");
        let back: Quantity = serde_json::from_str(&json).expect("a serialized quantity parses");
        assert_eq!(back.milli(), q.milli(), "JSON {json} of {text:?}");
    }
}

/// Go's `time.Duration.String()` form: `72h3m0.5s`, `1.5ms`, `0s`.
fn go_duration(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = match nanos {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("us", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", decimal(nanos, div));
    }
    let (h, rest) = (nanos / 3_600_000_000_000, nanos % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", decimal(rest, 1_000_000_000)));
    out
}

/// `n / div` as a decimal without trailing zeros.
fn decimal(n: u128, div: u128) -> String {
    let (int, frac) = (n / div, n % div);
    if frac == 0 {
        return int.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}
