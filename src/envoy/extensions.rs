//! The `--disable-extensions` list: every extension of the categories in
//! `envoy-extensions.txt` that the renderer never uses. Derived, so it
//! cannot drift: the used set is read from configs rendered for a catalog
//! network that takes every branch of the templates (each protocol, DNS
//! and IP upstreams, SPIRE and file certificates, an inbound listener), by
//! the `name` and `@type` of every typed extension in them.
//!
//! `envoy-extensions.txt` lists Envoy 1.40.0's extensions (from
//! `/server_info`) in the categories whose every use is named in the
//! config (filters, access loggers, tracers, sinks, retry predicates,
//! resource monitors...); implicit ones (clusters, transport sockets,
//! config sources, codecs) are never candidates. Names without a type URL
//! (deprecated aliases of listed extensions) are left alone. A newer
//! Envoy's extra extensions simply stay enabled; a name it no longer has
//! costs a warning in its log. Measured: ≈ 1.1-1.35 MiB private memory
//! less per Envoy (issue 22).

use super::config::{render_static, Identity};
use super::options::ProxyOptions;
use super::plan;
use crate::api::{Inbound, NetworkConfig, Protocol, SpiffeConfig, TlsFiles, Upstream};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

const KNOWN: &str = include_str!("envoy-extensions.txt");

/// One candidate: `category`, `name` and the config types it accepts.
struct Known<'a> {
    category: &'a str,
    name: &'a str,
    type_urls: Vec<&'a str>,
}

fn known() -> impl Iterator<Item = Known<'static>> {
    KNOWN
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let category = parts.next()?;
            let name = parts.next()?;
            let type_urls = parts.next()?.split(',').collect();
            Some(Known {
                category,
                name,
                type_urls,
            })
        })
}

/// Extension names and config types a rendered config uses: the `name`
/// beside every `typed_config`, and every `@type` (without its
/// `type.googleapis.com/` prefix).
pub fn used_in(doc: &Value, out: &mut BTreeSet<String>) {
    match doc {
        Value::Array(items) => items.iter().for_each(|i| used_in(i, out)),
        Value::Object(map) => {
            if map.contains_key("typed_config") {
                if let Some(Value::String(name)) = map.get("name") {
                    out.insert(name.clone());
                }
            }
            if let Some(Value::String(t)) = map.get("@type") {
                out.insert(t.trim_start_matches("type.googleapis.com/").to_string());
            }
            map.values().for_each(|v| used_in(v, out));
        }
        _ => {}
    }
}

/// A network that takes every branch of the templates.
fn catalog() -> Vec<NetworkConfig> {
    let up = |name: &str, port: i64, target: &str, protocol: Protocol| Upstream {
        name: name.into(),
        local_port: port,
        upstream: target.into(),
        protocol: Some(protocol),
        ..Default::default()
    };
    let inbound = Inbound {
        name: "in".into(),
        port: 4,
        target_port: 5,
        address: None,
        allowed_spiffe_ids: vec!["spiffe://example.org/a".into()],
        spiffe: None,
    };
    let upstreams = vec![
        up("tcp", 1, "db.example.org:5432", Protocol::Tcp),
        up("http", 2, "10.0.0.1:80", Protocol::Http),
        up("grpc", 3, "[::1]:443", Protocol::Grpc),
    ];
    let spire = NetworkConfig {
        spiffe: Some(SpiffeConfig {
            trust_domain: "example.org".into(),
            agent_socket_path: None,
        }),
        upstreams: upstreams.clone(),
        inbound: vec![inbound.clone()],
        ..Default::default()
    };
    let files = NetworkConfig {
        tls_files: Some(TlsFiles {
            cert_path: "/c/cert.pem".into(),
            key_path: "/c/key.pem".into(),
            ca_path: "/c/ca.pem".into(),
        }),
        upstreams,
        inbound: vec![inbound],
        ..Default::default()
    };
    vec![spire, files]
}

/// Everything the renderer can emit, as [`used_in`] sees it.
pub fn used() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let socket = Path::new("/run/k8s4r/admin.sock");
    let id = Identity {
        node_id: "catalog".into(),
        admin_socket: socket,
    };
    for network in catalog() {
        // The catalog is fixed and valid: a failure is a renderer bug that
        // the unit test below reports; here it only makes the list shorter.
        let Ok(p) = plan::plan(&network, &[]) else { continue };
        let Ok(text) = render_static(&p, &id, &ProxyOptions::default()) else {
            continue;
        };
        if let Ok(doc) = serde_json::from_str::<Value>(&text) {
            used_in(&doc, &mut out);
        }
    }
    out
}

/// `category/name` of every candidate the renderer does not use, sorted;
/// computed once.
pub fn disabled() -> &'static [String] {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let used = used();
        known()
            .filter(|k| !used.contains(k.name) && !k.type_urls.iter().any(|t| used.contains(*t)))
            .map(|k| format!("{}/{}", k.category, k.name))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_renders_and_keeps_what_the_templates_name() {
        for network in catalog() {
            let p = plan::plan(&network, &[]).unwrap();
            let id = Identity {
                node_id: "c".into(),
                admin_socket: Path::new("/a.sock"),
            };
            render_static(&p, &id, &ProxyOptions::default()).unwrap();
        }
        let off = disabled();
        for needed in [
            "envoy.filters.network/envoy.filters.network.tcp_proxy",
            "envoy.filters.network/envoy.filters.network.rbac",
            "envoy.filters.network/envoy.filters.network.connection_limit",
            "envoy.filters.network/envoy.filters.network.http_connection_manager",
            "envoy.filters.http/envoy.filters.http.router",
            "envoy.access_loggers/envoy.access_loggers.stderr",
            "envoy.access_loggers.extension_filters/envoy.access_loggers.extension_filters.cel",
            "envoy.retry_host_predicates/envoy.retry_host_predicates.previous_hosts",
            "envoy.resource_monitors/envoy.resource_monitors.fixed_heap",
        ] {
            assert!(!off.iter().any(|d| d == needed), "{needed} must stay enabled");
        }
        assert!(off.iter().any(|d| d == "envoy.filters.http/envoy.filters.http.lua"));
        assert!(off.len() > 150, "{}", off.len());
        // Aliases without a type URL are never disabled.
        assert!(!off.iter().any(|d| d.ends_with("/envoy.tcp_proxy")));
    }
}
