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
//! - the admin API is on a unix socket, never a TCP port.

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
                _ => {}
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
                    "load_assignment": {"cluster_name": "out-db", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "db", "port_value": 5432}}}}]}]},
                    "transport_socket": {"typed_config": {"common_tls_context": {
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
    }
}
