//! A structural check of a rendered Envoy config: the properties `envoy
//! --mode validate` does not see (it checks syntax and types, not our design)
//! plus the references it does check, so tests and the fuzzer can run it on
//! thousands of configs without starting Envoy. Used by tests only; the
//! renderer's output must always pass it.
//!
//! What it checks, on the one-file form (`render_static`) or on the runtime
//! form folded into that shape ([`check_runtime`]):
//! - listener, cluster and static secret names are unique and not empty;
//! - every listener binds an IP address and a port 1-65535; a plaintext
//!   listener (the app side) binds 127.0.0.1 only; a TLS listener (inbound)
//!   requires a client certificate; no two listeners share a port;
//! - every cluster endpoint is a port 1-65535 on a host, or a unix socket;
//!   `load_assignment.cluster_name` is the cluster's own name;
//! - every cluster named by a tcp_proxy, route or gRPC service exists;
//! - every SDS secret has a source: a static secret of that name, a gRPC
//!   SDS cluster, or a file path;
//! - the admin API is on a unix socket, never a TCP port;
//! - a TLS (inbound) listener skips the global connection budget, has its
//!   own connection limit as its first filter and a handshake timeout;
//! - every TLS context allows TLS 1.3 as its maximum;
//! - a cluster whose endpoint is an IP literal is STATIC; a DNS cluster
//!   respects TTLs and backs off on failures;
//! - every HTTP/2 options block bounds its stream and connection windows
//!   (at most 1 MiB);
//! - outlier detection enforces every consecutive_* counter it sets;
//! - the router adds no x-envoy-* headers;
//! - in the robot-wide proxy, a listener of a group (name `<group>/...`)
//!   names only that group's clusters.

use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::IpAddr;

/// Check a one-file config (`{"admin", "static_resources": {...}}`).
pub fn check_structure(doc: &Value) -> Result<(), String> {
    let root = doc.as_object().ok_or("the config is not a JSON object")?;
    let admin_path = root
        .get("admin")
        .and_then(|a| a.pointer("/address/pipe/path"))
        .and_then(Value::as_str);
    if admin_path.is_none_or(str::is_empty) {
        return Err("admin: not on a unix socket (address.pipe.path)".into());
    }
    let res = root
        .get("static_resources")
        .and_then(Value::as_object)
        .ok_or("static_resources: missing")?;
    let listeners = array(res, "listeners")?;
    let clusters = array(res, "clusters")?;
    let secrets = array(res, "secrets")?;

    let cluster_names = unique_names("cluster", clusters)?;
    let secret_names = unique_names("secret", secrets)?;
    unique_names("listener", listeners)?;

    let mut ports = HashSet::new();
    for l in listeners {
        let name = l["name"].as_str().unwrap_or_default();
        let what = format!("listener {name:?}");
        let (addr, port) = socket_address(&l["address"]).ok_or_else(|| format!("{what}: no socket_address"))?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{what}: {addr:?} is not an IP address"))?;
        if !ports.insert(port) {
            return Err(format!("{what}: port {port} is used by another listener"));
        }
        let chains = l["filter_chains"]
            .as_array()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{what}: no filter_chains"))?;
        for chain in chains {
            match chain.get("transport_socket").filter(|t| !t.is_null()) {
                None if ip != IpAddr::from([127, 0, 0, 1]) => {
                    return Err(format!("{what}: plaintext listener on {ip}, not 127.0.0.1"))
                }
                Some(t) if t.pointer("/typed_config/require_client_certificate") != Some(&Value::Bool(true)) => {
                    return Err(format!("{what}: a TLS listener must require client certificates"))
                }
                Some(_) => inbound_chain(l, chain).map_err(|e| format!("{what}: {e}"))?,
                None => {}
            }
        }
    }

    for c in clusters {
        let name = c["name"].as_str().unwrap_or_default();
        let what = format!("cluster {name:?}");
        let la = &c["load_assignment"];
        if la["cluster_name"].as_str() != Some(name) {
            return Err(format!(
                "{what}: load_assignment.cluster_name is not the cluster's name"
            ));
        }
        let endpoints: Vec<&Value> = la["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["lb_endpoints"].as_array().into_iter().flatten())
            .map(|e| &e["endpoint"]["address"])
            .collect();
        if endpoints.is_empty() {
            return Err(format!("{what}: no endpoints"));
        }
        let ip_literal = endpoints
            .iter()
            .any(|a| socket_address(a).is_some_and(|(h, _)| h.parse::<IpAddr>().is_ok()));
        if ip_literal && c["type"].as_str() != Some("STATIC") {
            return Err(format!("{what}: an IP literal endpoint must be a STATIC cluster"));
        }
        if let Some(dns) = c.pointer("/cluster_type/typed_config") {
            if dns["respect_dns_ttl"] != Value::Bool(true) || dns.get("dns_failure_refresh_rate").is_none() {
                return Err(format!(
                    "{what}: a DNS cluster must respect TTLs and back off on failures"
                ));
            }
        }
        for addr in endpoints {
            let pipe = addr.pointer("/pipe/path").and_then(Value::as_str);
            match (socket_address(addr), pipe) {
                (Some((host, _)), None) if !host.is_empty() => {}
                (None, Some(path)) if !path.is_empty() => {}
                _ => return Err(format!("{what}: bad endpoint address {addr}")),
            }
        }
    }

    // References, anywhere below listeners and clusters.
    let mut refs = Refs::default();
    for v in listeners.iter().chain(clusters) {
        refs.walk(v);
        settings(v)?;
    }
    for l in listeners {
        let name = l["name"].as_str().unwrap_or_default();
        if let Some((group, _)) = name.split_once('/') {
            let mut own = Refs::default();
            own.walk(l);
            let scope = format!("{group}/");
            if let Some(other) = own.clusters.iter().find(|c| !c.starts_with(&scope)) {
                return Err(format!(
                    "listener {name:?} of group {group} names cluster {other:?} of another group"
                ));
            }
        }
    }
    if let Some(missing) = refs.clusters.iter().find(|c| !cluster_names.contains(c.as_str())) {
        return Err(format!("cluster {missing:?} is referenced but not defined"));
    }
    for (name, sds) in &refs.secrets {
        let has_source = match sds {
            None | Some(Value::Null) => secret_names.contains(name.as_str()),
            Some(s) => {
                s.pointer("/api_config_source/grpc_services/0/envoy_grpc/cluster_name")
                    .is_some()
                    || s.pointer("/path_config_source/path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| !p.is_empty())
            }
        };
        if !has_source {
            return Err(format!("SDS secret {name:?} has no source"));
        }
    }
    Ok(())
}

/// An inbound (TLS) filter chain: its own budget and a handshake deadline,
/// so network peers cannot take the apps' connections.
fn inbound_chain(listener: &Value, chain: &Value) -> Result<(), String> {
    if listener["ignore_global_conn_limit"] != Value::Bool(true) {
        return Err("an inbound listener must not use the apps' global connection budget".into());
    }
    let first = chain.pointer("/filters/0/typed_config/@type").and_then(Value::as_str);
    if !first.is_some_and(|t| t.ends_with(".ConnectionLimit")) {
        return Err("an inbound listener's first filter must be its connection limit".into());
    }
    if chain["transport_socket_connect_timeout"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err("an inbound listener needs a TLS handshake timeout".into());
    }
    Ok(())
}

/// Settings checked wherever they appear below a listener or cluster.
fn settings(v: &Value) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(settings),
        Value::Object(map) => {
            if let Some(params) = map.get("common_tls_context").map(|c| &c["tls_params"]) {
                if params["tls_maximum_protocol_version"].as_str() != Some("TLSv1_3") {
                    return Err("a TLS context must allow TLS 1.3 as its maximum".into());
                }
            }
            if let Some(h2) = map.get("http2_protocol_options").filter(|h| !h.is_null()) {
                for key in ["initial_stream_window_size", "initial_connection_window_size"] {
                    if h2[key].as_u64().is_none_or(|w| w > 1 << 20) {
                        return Err(format!("http2_protocol_options.{key} must be set, at most 1 MiB"));
                    }
                }
            }
            for (key, value) in map {
                if let Some(counter) = key.strip_prefix("consecutive_").filter(|c| *c != "5xx") {
                    let enforcing = &map.get(&format!("enforcing_consecutive_{counter}")).cloned();
                    if value.as_u64().is_some() && enforcing.as_ref().and_then(Value::as_u64).is_none_or(|p| p == 0) {
                        return Err(format!("outlier detection counts {key} but never enforces it"));
                    }
                }
            }
            if map
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("router.v3.Router"))
                && map.get("suppress_envoy_headers") != Some(&Value::Bool(true))
            {
                return Err("the router must suppress x-envoy-* headers".into());
            }
            map.values().try_for_each(settings)
        }
        _ => Ok(()),
    }
}

/// Check the runtime form (bootstrap, LDS and CDS files) by folding it into
/// the one-file shape. File secrets come through `path_config_source`, so
/// no static secrets are needed.
pub fn check_runtime(bootstrap: &Value, lds: &Value, cds: &Value) -> Result<(), String> {
    let resources = |doc: &Value, what: &str| -> Result<Value, String> {
        let list = doc["resources"]
            .as_array()
            .ok_or_else(|| format!("{what}: no resources list"))?;
        Ok(Value::Array(list.clone()))
    };
    let folded = serde_json::json!({
        "admin": bootstrap["admin"],
        "static_resources": {
            "listeners": resources(lds, "LDS file")?,
            "clusters": resources(cds, "CDS file")?,
            "secrets": [],
        }
    });
    check_structure(&folded)
}

fn array<'a>(res: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>, String> {
    res.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("static_resources.{key}: not a list"))
}

fn unique_names<'a>(what: &str, items: &'a [Value]) -> Result<HashSet<&'a str>, String> {
    let mut names = HashSet::new();
    for item in items {
        let name = item["name"].as_str().filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| format!("a {what} has no name"))?;
        if !names.insert(name) {
            return Err(format!("{what} {name:?} is defined twice"));
        }
    }
    Ok(names)
}

/// `{"socket_address": {"address", "port_value"}}` with a port 1-65535.
fn socket_address(addr: &Value) -> Option<(&str, u16)> {
    let sa = addr.get("socket_address")?;
    let port = sa["port_value"].as_u64()?;
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    Some((sa["address"].as_str()?, port))
}

/// Clusters and SDS secrets named inside a resource.
#[derive(Default)]
struct Refs {
    clusters: Vec<String>,
    /// (secret name, its `sds_config`).
    secrets: Vec<(String, Option<Value>)>,
}

impl Refs {
    fn walk(&mut self, v: &Value) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.walk(i)),
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        // A cluster's own name, not a reference.
                        ("load_assignment", _) => continue,
                        // tcp_proxy and route (`cluster`), gRPC services (`cluster_name`).
                        ("cluster" | "cluster_name", Value::String(c)) => self.clusters.push(c.clone()),
                        ("tls_certificate_sds_secret_configs" | "validation_context_sds_secret_config", _) => {
                            for s in value.as_array().map_or(std::slice::from_ref(value), Vec::as_slice) {
                                let name = s["name"].as_str().unwrap_or_default().to_string();
                                self.secrets.push((name, s.get("sds_config").cloned()));
                            }
                        }
                        _ => {}
                    }
                    self.walk(value);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({
            "admin": {"address": {"pipe": {"path": "/run/a.sock"}}},
            "static_resources": {
                "listeners": [{
                    "name": "out-db",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 5432}},
                    "filter_chains": [{"filters": [{"typed_config": {"cluster": "out-db"}}], "transport_socket": null}]
                }],
                "clusters": [{
                    "name": "out-db",
                    "outlier_detection": {"consecutive_gateway_failure": 3, "enforcing_consecutive_gateway_failure": 100},
                    "load_assignment": {"cluster_name": "out-db", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "db", "port_value": 5432}}}}]}]},
                    "transport_socket": {"typed_config": {"common_tls_context": {
                        "tls_params": {"tls_maximum_protocol_version": "TLSv1_3"},
                        "tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": null}],
                        "combined_validation_context": {"validation_context_sds_secret_config": {"name": "ca", "sds_config": null}}
                    }}}
                }],
                "secrets": [{"name": "cert"}, {"name": "ca"}]
            }
        })
    }

    #[test]
    fn accepts_a_good_config_and_names_each_problem() {
        check_structure(&config()).unwrap();
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut c = config();
            f(&mut c);
            check_structure(&c).unwrap_err()
        };
        let e = broken(&|c| {
            c["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = json!("0.0.0.0")
        });
        assert!(e.contains("plaintext listener"), "{e}");
        let e =
            broken(&|c| c["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = json!(0));
        assert!(e.contains("no socket_address"), "{e}");
        let e = broken(&|c| {
            c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] =
                json!("nope")
        });
        assert!(e.contains("\"nope\" is referenced"), "{e}");
        let e = broken(&|c| c["static_resources"]["secrets"].as_array_mut().unwrap().truncate(1));
        assert!(e.contains("\"ca\" has no source"), "{e}");
        let e = broken(&|c| {
            let l = c["static_resources"]["clusters"][0].clone();
            c["static_resources"]["clusters"].as_array_mut().unwrap().push(l);
        });
        assert!(e.contains("defined twice"), "{e}");
        let e = broken(&|c| {
            c["admin"] = json!({"address": {"socket_address": {"address": "0.0.0.0", "port_value": 9901}}})
        });
        assert!(e.contains("admin"), "{e}");
        let e = broken(&|c| {
            c["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]
                ["tls_params"] = json!({})
        });
        assert!(e.contains("TLS 1.3"), "{e}");
        let e = broken(&|c| {
            c["static_resources"]["clusters"][0]["outlier_detection"]
                .as_object_mut()
                .unwrap()
                .remove("enforcing_consecutive_gateway_failure");
        });
        assert!(e.contains("never enforces"), "{e}");
        let e = broken(&|c| {
            c["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"] = json!("10.0.0.1")
        });
        assert!(e.contains("STATIC"), "{e}");
        let e = broken(&|c| c["static_resources"]["clusters"][0]["http2_protocol_options"] = json!({}));
        assert!(e.contains("initial_stream_window_size"), "{e}");
    }

    /// The renderer's own output for an inbound listener passes, and each
    /// inbound protection taken away is named.
    #[test]
    fn inbound_listeners_keep_their_own_budget_and_deadline() {
        use crate::api::{Inbound, NetworkConfig, SpiffeConfig};
        use crate::envoy::config::{render_static, Identity};
        let network = NetworkConfig {
            spiffe: Some(SpiffeConfig {
                trust_domain: "example.org".into(),
                agent_socket_path: None,
            }),
            inbound: vec![Inbound {
                name: "api".into(),
                port: 8443,
                target_port: 8080,
                address: None,
                allowed_spiffe_ids: vec!["spiffe://example.org/a".into()],
                spiffe: None,
            }],
            ..Default::default()
        };
        let p = crate::envoy::plan::plan(&network, &[]).unwrap();
        let id = Identity {
            node_id: "r/j/g".into(),
            admin_socket: std::path::Path::new("/a.sock"),
        };
        let doc: Value = serde_json::from_str(&render_static(&p, &id, &Default::default()).unwrap()).unwrap();
        check_structure(&doc).unwrap();
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut c = doc.clone();
            f(&mut c["static_resources"]["listeners"][0]);
            check_structure(&c).unwrap_err()
        };
        let e = broken(&|l| l["ignore_global_conn_limit"] = json!(false));
        assert!(e.contains("global connection budget"), "{e}");
        let e = broken(&|l| {
            l["filter_chains"][0]["filters"].as_array_mut().unwrap().remove(0);
        });
        assert!(e.contains("connection limit"), "{e}");
        let e = broken(&|l| l["filter_chains"][0]["transport_socket_connect_timeout"] = json!(null));
        assert!(e.contains("handshake timeout"), "{e}");
    }
}
