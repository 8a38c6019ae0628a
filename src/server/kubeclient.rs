//! The operator CLI's HTTP client (`k8s4r token`, `k8s4r logs`): built from
//! a kubeconfig found as kubectl finds it (`--kubeconfig FILE`, else the
//! first file of `$KUBECONFIG`, else `~/.kube/config`), so it verifies the
//! server with the kubeconfig's CA and presents its client certificate or
//! token. `--server URL` overrides the kubeconfig's server.

use super::kubeconfig::{self, Resolved};
use lexopt::ValueExt;
use std::path::PathBuf;
use std::time::Duration;

/// The flags every server-talking subcommand takes (see [`USAGE`]).
#[derive(Default, Debug)]
pub struct ClientFlags {
    pub kubeconfig: Option<PathBuf>,
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// Usage lines of [`ClientFlags`], for the subcommands' help.
pub const USAGE: &str = "\
    --kubeconfig FILE    Credentials and server [default: $KUBECONFIG, else
                         ~/.kube/config; the server writes <data>/admin.kubeconfig]
    --server URL         Override the kubeconfig's server URL
    --token-file FILE    Send this bearer token instead of the kubeconfig's credential
";

impl ClientFlags {
    /// Whether `--flag` is one of these flags.
    pub fn owns(flag: &str) -> bool {
        matches!(flag, "kubeconfig" | "server" | "token-file")
    }

    /// Set `--flag` (one that [`ClientFlags::owns`]) from its value.
    pub fn set(&mut self, flag: &str, parser: &mut lexopt::Parser) -> Result<(), lexopt::Error> {
        match flag {
            "kubeconfig" => self.kubeconfig = Some(parser.value()?.into()),
            "server" => self.server = Some(parser.value()?.string()?),
            _ => self.token_file = Some(parser.value()?.into()),
        }
        Ok(())
    }

    /// The kubeconfig file these flags and the environment name.
    fn kubeconfig_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.kubeconfig {
            return Some(p.clone());
        }
        if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            return std::env::split_paths(&list).find(|p| p.is_file());
        }
        let home = std::env::var_os("HOME")?;
        Some(PathBuf::from(home).join(".kube/config")).filter(|p| p.is_file())
    }
}

/// An answer: status code and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body of a 2xx answer; otherwise an error with the Status
    /// object's message.
    pub fn ok(self) -> Result<String, String> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let message = serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or(self.body);
        Err(format!("{}: {message}", self.status))
    }
}

pub struct KubeClient {
    pub server: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

impl KubeClient {
    pub fn new(flags: &ClientFlags) -> Result<KubeClient, String> {
        let mut resolved = match flags.kubeconfig_path() {
            Some(path) => kubeconfig::load(&path)?,
            None if flags.server.is_some() => Resolved::default(),
            None => {
                return Err(
                    "no kubeconfig: pass --kubeconfig FILE or set KUBECONFIG (the server writes \
                            <data>/admin.kubeconfig and prints the export line)"
                        .into(),
                )
            }
        };
        if let Some(s) = &flags.server {
            resolved.server = s.clone();
        }
        if let Some(f) = &flags.token_file {
            let t = std::fs::read_to_string(f).map_err(|e| format!("--token-file {}: {e}", f.display()))?;
            resolved.token = Some(t.trim().to_string());
            (resolved.cert_pem, resolved.key_pem) = (None, None);
        }
        if resolved.server.is_empty() {
            return Err("the kubeconfig names no server; pass --server URL".into());
        }
        Ok(KubeClient {
            server: resolved.server.trim_end_matches('/').to_string(),
            agent: agent(&resolved, None)?,
            authorization: resolved.token.as_ref().map(|t| format!("Bearer {t}")),
        })
    }

    /// One request to `path` (under the server URL); `body` is JSON.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, String> {
        let url = format!("{}{path}", self.server);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let sent = match body {
            Some(b) => {
                let req = req.header("Content-Type", "application/json");
                self.agent
                    .run(req.body(b.as_bytes().to_vec()).map_err(|e| e.to_string())?)
            }
            None => self.agent.run(req.body(()).map_err(|e| e.to_string())?),
        };
        let mut reply = sent.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = reply.status().as_u16();
        let body = reply
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: {e}"))?;
        Ok(Answer { status, body })
    }

    /// GET `path` as JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.request("GET", path, None)?.ok()?).map_err(|e| format!("{path}: {e}"))
    }

    /// Read `path`, change it with `change` and PUT it back: the write names
    /// the version read, so a concurrent write (the server's status
    /// updates) is a conflict, not lost: read again and retry, a few times.
    pub fn update(&self, path: &str, change: impl Fn(&mut serde_json::Value)) -> Result<(), String> {
        for _ in 0..5 {
            let mut obj = self.get_json(path)?;
            change(&mut obj);
            let answer = self.request("PUT", path, Some(&obj.to_string()))?;
            if answer.status != 409 {
                return answer.ok().map(|_| ());
            }
        }
        Err(format!("{path}: changed by others on every try; try again"))
    }
}

/// A ureq agent that trusts `r`'s CA (the public roots when it names
/// none) and presents its client certificate; non-2xx answers are answers,
/// not errors. `timeout`: for the whole of each request.
pub fn agent(r: &Resolved, timeout: Option<Duration>) -> Result<ureq::Agent, String> {
    use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(pem) = &r.ca_pem {
        let roots = certs(pem, "certificate-authority")?;
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    if let (Some(cert), Some(key)) = (&r.cert_pem, &r.key_pem) {
        let chain = certs(cert, "client-certificate")?;
        let key = PrivateKey::from_pem(key).map_err(|e| format!("client-key: {e}"))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        .tls_config(tls.build())
        .build()
        .into())
}

/// The certificates of PEM text (at least one); `field` names it in errors.
fn certs(pem: &[u8], field: &str) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let certs = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{field} holds no certificate"));
    }
    Ok(certs)
}
