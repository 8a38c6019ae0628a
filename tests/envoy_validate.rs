//! Every template variant, rendered and checked by the real Envoy:
//! `envoy --mode validate` for the one-file form, and the runtime form
//! (bootstrap + filesystem xDS) loaded by a running Envoy with no rejected
//! update. Skips (with a message) only when `envoy` is not on PATH.

mod common;
mod envoy_fixtures;

use envoy_fixtures::*;
use k8s4r::api::{NetworkConfig, Protocol};
use k8s4r::envoy::config::{render_static, Identity, Layout};
use k8s4r::envoy::{plan, GroupProxy, Inbound, ProxyExtras};
use std::path::Path;

/// Where certificates come from in a variant.
#[derive(Clone, Copy, Debug)]
enum Source {
    Plain,
    SpireAnyId,
    SpireExactId,
    Files,
    FilesInTrustDomain,
    /// Two upstreams in two trust domains behind two SPIRE sockets.
    TwoTrustDomains,
}

const SOURCES: [Source; 6] = [
    Source::Plain,
    Source::SpireAnyId,
    Source::SpireExactId,
    Source::Files,
    Source::FilesInTrustDomain,
    Source::TwoTrustDomains,
];
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Http, Protocol::Grpc];

struct Variant {
    name: String,
    network: NetworkConfig,
    inbound: Vec<Inbound>,
}

fn variants(dir: &Path, ca: &Ca, leaf: &Leaf) -> Vec<Variant> {
    let sock_a = dir.join("spire-a.sock");
    let sock_b = dir.join("spire-b.sock");
    let mut out = Vec::new();
    for protocol in PROTOCOLS {
        for source in SOURCES {
            for with_inbound in [false, true] {
                if with_inbound && matches!(source, Source::Plain) {
                    continue; // inbound is mTLS only
                }
                let mut up = upstream("svc", 20000, "svc.example.org:8443", protocol, true);
                let mut network = plain_network(vec![]);
                let mut extra = None;
                match source {
                    Source::Plain => up.tls = Some(false),
                    Source::SpireAnyId => network.spiffe = Some(spiffe("example.org", Some(&sock_a))),
                    Source::SpireExactId => {
                        network.spiffe = Some(spiffe("example.org", Some(&sock_a)));
                        up.spiffe_id = Some("spiffe://example.org/ns/prod/sa/svc".into());
                    }
                    Source::Files => network.tls_files = Some(ca.files(leaf)),
                    Source::FilesInTrustDomain => {
                        network.tls_files = Some(ca.files(leaf));
                        network.spiffe = Some(spiffe("example.org", None));
                    }
                    Source::TwoTrustDomains => {
                        network.spiffe = Some(spiffe("example.org", Some(&sock_a)));
                        let mut other = upstream("partner", 20001, "[::1]:9000", protocol, true);
                        other.spiffe = Some(spiffe("partner.net", Some(&sock_b)));
                        other.spiffe_id = Some("spiffe://partner.net/billing".into());
                        extra = Some(other);
                    }
                }
                network.upstreams.push(up);
                network.upstreams.extend(extra);
                let inbound = if with_inbound {
                    vec![Inbound {
                        name: "api".into(),
                        port: 20443,
                        target_port: 8080,
                        address: Some("127.0.0.1".into()),
                        allowed_spiffe_ids: vec![
                            "spiffe://example.org/ns/prod/sa/a".into(),
                            "spiffe://example.org/ns/prod/sa/b".into(),
                        ],
                        spiffe: None,
                    }]
                } else {
                    vec![]
                };
                out.push(Variant {
                    name: format!("{protocol:?}-{source:?}{}", if with_inbound { "-inbound" } else { "" })
                        .to_lowercase(),
                    network,
                    inbound,
                });
            }
        }
    }
    out
}

#[test]
fn every_static_variant_passes_envoy_validate() {
    let Some(envoy) = envoy_or_skip("every_static_variant_passes_envoy_validate") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "example.org");
    let leaf = ca.leaf("robot", "spiffe://example.org/robot", 1);
    let all = variants(tmp.path(), &ca, &leaf);
    assert_eq!(all.len(), 3 * (6 * 2 - 1));
    let mut failures = Vec::new();
    for v in &all {
        let plan = plan::plan(&v.network, &v.inbound).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let layout = Layout::new(&tmp.path().join(&v.name));
        let id = Identity {
            node_id: format!("test/{}", v.name),
            admin_socket: &layout.admin_socket,
        };
        let text = render_static(&plan, &id, &Default::default()).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Err(e) = k8s4r::envoy::check::check_structure(&doc) {
            failures.push(format!("{}: check: {e}", v.name));
        }
        let file = tmp.path().join(format!("{}.json", v.name));
        std::fs::write(&file, &text).unwrap();
        if let Err(e) = validate(&envoy, &file) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A config with an unknown field must fail validation: proves the check
/// above can fail.
#[test]
fn envoy_validate_rejects_a_broken_config() {
    let Some(envoy) = envoy_or_skip("envoy_validate_rejects_a_broken_config") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"static_resources":{"listeners":[{"name":"x","address":{"socket_address":{"address":"127.0.0.1","port_value":1}},"no_such_field":1,"filter_chains":[{"filters":[{"name":"envoy.filters.network.tcp_proxy","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","stat_prefix":"x","cluster":"missing"}}]}]}]}}"#,
    )
    .unwrap();
    assert!(validate(&envoy, &file).is_err());
}

/// The allowlist is really applied: a config naming an extension the
/// renderer never emits (the echo network filter) validates without the
/// flag and is refused with it.
#[test]
fn disabled_extensions_are_refused_by_envoy() {
    let Some(envoy) = envoy_or_skip("disabled_extensions_are_refused_by_envoy") else {
        return;
    };
    let off = k8s4r::envoy::extensions::disabled();
    assert!(off
        .iter()
        .any(|e| e == "envoy.filters.network/envoy.filters.network.echo"));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("echo.json");
    std::fs::write(
        &file,
        r#"{"static_resources":{"listeners":[{"name":"x","address":{"socket_address":{"address":"127.0.0.1","port_value":1}},"filter_chains":[{"filters":[{"name":"envoy.filters.network.echo","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}]}]}]}}"#,
    )
    .unwrap();
    let plain = std::process::Command::new(&envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(plain.success(), "the echo filter validates without the allowlist");
    let err = validate(&envoy, &file).unwrap_err();
    assert!(err.contains("echo"), "{err}");
}

/// The runtime form of every variant: Envoy starts from the bootstrap and
/// applies the LDS/CDS files without rejecting anything. SPIRE sockets do
/// not exist here, so only plain and file variants get to /ready; the others
/// must still have their resources accepted.
#[test]
fn every_runtime_variant_is_loaded_by_envoy() {
    let Some(envoy) = envoy_or_skip("every_runtime_variant_is_loaded_by_envoy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "example.org");
    let leaf = ca.leaf("robot", "spiffe://example.org/robot", 1);
    // One protocol per source keeps this quick; the static test covers the
    // full product and both forms share every resource template.
    let all = variants(tmp.path(), &ca, &leaf);
    for v in all
        .iter()
        .filter(|v| v.name.starts_with("grpc-") || v.name.ends_with("-inbound"))
    {
        let dir = tmp.path().join(&v.name);
        let mut network = v.network.clone();
        // Free ports: these Envoys really listen.
        for up in &mut network.upstreams {
            up.local_port = free_port().into();
        }
        let inbound: Vec<Inbound> = v
            .inbound
            .iter()
            .map(|i| Inbound {
                port: free_port().into(),
                ..i.clone()
            })
            .collect();
        let proxy = GroupProxy {
            envoy_bin: envoy.clone(),
            ..proxy(&v.name, &dir, network)
        };
        let extras = ProxyExtras {
            inbound,
            ..Default::default()
        };
        let launch = k8s4r::envoy::prepare_with(&proxy, &extras).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        validate(&envoy, &dir.join("envoy.json")).unwrap();
        let e = Envoy::start(&launch, dir.join("envoy.log"));
        let expected_listeners = (v.network.upstreams.len() + v.inbound.len()) as u64;
        let uses_spire = v.network.spiffe.is_some() && v.network.tls_files.is_none()
            || v.network.upstreams.iter().any(|u| u.spiffe.is_some());
        // Envoy asks for listeners only once every cluster is initialised,
        // and SPIRE clusters wait for their secrets: without an agent here,
        // their LDS file is loaded by the SDS tests instead.
        let applied = if uses_spire {
            vec!["cluster_manager.cds.update_success"]
        } else {
            vec![
                "cluster_manager.cds.update_success",
                "listener_manager.lds.update_success",
            ]
        };
        common::wait_for(&format!("{}: {applied:?}", v.name), READY, || {
            applied.iter().all(|s| e.stat(s) >= 1).then_some(())
        });
        for rejected in [
            "listener_manager.lds.update_rejected",
            "cluster_manager.cds.update_rejected",
        ] {
            assert_eq!(e.stat(rejected), 0, "{}: {rejected}\n{}", v.name, e.log_text());
        }
        if uses_spire {
            // No SPIRE here: the proxy must wait and say which socket fails.
            let reasons = common::wait_for(&format!("{}: SPIRE socket reported", v.name), READY, || {
                let r = k8s4r::envoy::not_ready_reasons(&proxy);
                r.iter().any(|m| m.contains("spire-a.sock")).then_some(r)
            });
            assert!(reasons.iter().any(|m| m.contains("upstream \"svc\"")), "{reasons:?}");
            assert!(!k8s4r::envoy::is_ready(&launch.admin_socket));
        } else {
            common::wait_for(&format!("{}: ready", v.name), READY, || {
                k8s4r::envoy::is_ready(&launch.admin_socket).then_some(())
            });
            assert_eq!(
                e.stat("listener_manager.total_listeners_active"),
                expected_listeners,
                "{}",
                v.name
            );
        }
    }
}

/// `render-envoy` from both binaries, on the shipped examples.
#[cfg(feature = "server")]
#[test]
fn render_envoy_cli_output_passes_validate() {
    let Some(envoy) = envoy_or_skip("render_envoy_cli_output_passes_validate") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for bin in [env!("CARGO_BIN_EXE_k8s4r"), env!("CARGO_BIN_EXE_k8s4r-agent")] {
        for (example, group) in [("network-proxy.yaml", None), ("extra/spire-mtls.yaml", Some("uplink"))] {
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("render-envoy")
                .arg("-f")
                .arg(root.join("examples").join(example));
            if let Some(g) = group {
                cmd.args(["--group", g]);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{bin} {example}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = tmp.path().join(example.replace(".yaml", ".json").replace('/', "-"));
            std::fs::write(&file, &out.stdout).unwrap();
            validate(&envoy, &file).unwrap();
            // App-side listeners are loopback only; the one inbound mTLS
            // listener of spire-mtls.yaml (port 9443) is the exception.
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            for l in doc["static_resources"]["listeners"].as_array().unwrap() {
                let addr = &l["address"]["socket_address"];
                if addr["port_value"] != 9443 {
                    assert_eq!(
                        addr["address"], "127.0.0.1",
                        "{example}: app listeners must be loopback only: {l}"
                    );
                }
            }
        }
        let out = std::process::Command::new(bin)
            .args(["render-envoy", "--group", "nope", "-f"])
            .arg(root.join("examples/network-proxy.yaml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no task group named \"nope\""));
    }
}
