//! The kubeconfig file (the format kubectl and every Kubernetes client
//! library read): one renderer for the server's `admin.kubeconfig` and
//! `k8s4r kubeconfig`, the reader the operator CLI uses, and the private
//! (0600, atomically replaced) write of a credential file.

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    #[serde(default)]
    pub users: Vec<NamedUser>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    #[serde(default)]
    pub current_context: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct NamedUser {
    pub name: String,
    #[serde(default)]
    pub user: UserEntry,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct UserEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, rename = "tokenFile", skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Context {
    pub cluster: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What a client needs from a kubeconfig's current context, files read.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

/// A kubeconfig for one user of one cluster: `server`, the PEM clients
/// trust it with, and a client certificate and key (PEM).
pub fn render(cluster: &str, server: &str, ca_pem: Option<&str>, user: &str, cert: Option<(&str, &str)>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Cluster {
                server: server.into(),
                certificate_authority_data: ca_pem.map(b64),
                certificate_authority: None,
            },
        }],
        users: vec![NamedUser {
            name: user.into(),
            user: UserEntry {
                client_certificate_data: cert.map(|c| b64(c.0)),
                client_key_data: cert.map(|c| b64(c.1)),
                ..UserEntry::default()
            },
        }],
        contexts: vec![NamedContext {
            name: format!("{user}@{cluster}"),
            context: Context {
                cluster: cluster.into(),
                user: user.into(),
                namespace: None,
            },
        }],
        current_context: format!("{user}@{cluster}"),
    };
    // Plain strings and lists: serialising cannot fail.
    serde_yaml_ng::to_string(&config).unwrap_or_default()
}

/// Read a kubeconfig and resolve its current context (files it names are
/// relative to its directory).
pub fn load(path: &Path) -> Result<Resolved, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
    let config: Kubeconfig =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    resolve(&config, path.parent().unwrap_or(Path::new("."))).map_err(|e| format!("kubeconfig {}: {e}", path.display()))
}

fn resolve(config: &Kubeconfig, dir: &Path) -> Result<Resolved, String> {
    let name = &config.current_context;
    if name.is_empty() {
        return Err("no current-context".into());
    }
    let missing = |kind: &str, what: &str| format!("{kind} {what:?} is not defined");
    let ctx = &config
        .contexts
        .iter()
        .find(|c| &c.name == name)
        .ok_or_else(|| missing("context", name))?
        .context;
    let cluster = &config
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .ok_or_else(|| missing("cluster", &ctx.cluster))?
        .cluster;
    let user = match ctx.user.as_str() {
        "" => None,
        u => Some(
            &config
                .users
                .iter()
                .find(|c| c.name == u)
                .ok_or_else(|| missing("user", u))?
                .user,
        ),
    };
    let data = |inline: &Option<String>, file: &Option<PathBuf>, field: &str| -> Result<Option<Vec<u8>>, String> {
        if let Some(d) = inline {
            let d: String = d.split_whitespace().collect();
            return base64::engine::general_purpose::STANDARD
                .decode(d)
                .map(Some)
                .map_err(|e| format!("{field}-data is not base64: {e}"));
        }
        match file {
            Some(f) => {
                let f = dir.join(f);
                std::fs::read(&f)
                    .map(Some)
                    .map_err(|e| format!("{field} {}: {e}", f.display()))
            }
            None => Ok(None),
        }
    };
    let mut out = Resolved {
        server: cluster.server.clone(),
        ca_pem: data(
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
            "certificate-authority",
        )?,
        ..Resolved::default()
    };
    if let Some(u) = user {
        out.cert_pem = data(&u.client_certificate_data, &u.client_certificate, "client-certificate")?;
        out.key_pem = data(&u.client_key_data, &u.client_key, "client-key")?;
        out.token = match (&u.token, &u.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => {
                let f = dir.join(f);
                let t = std::fs::read_to_string(&f).map_err(|e| format!("tokenFile {}: {e}", f.display()))?;
                Some(t.trim().to_string())
            }
            (None, None) => None,
        };
    }
    Ok(out)
}

/// Write `text` to `path` readable by its owner only: a fresh file
/// (O_EXCL, never through a symlink) beside it, renamed over `path`, so a
/// reader sees the old file or the new one and nothing else ever sees the
/// key.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    crate::atomic_file::write(path, text.as_bytes(), 0o600).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_kubeconfig_reads_back() {
        let text = render(
            "k8s4r",
            "https://127.0.0.1:7443",
            Some("CA"),
            "alice",
            Some(("CERT", "KEY")),
        );
        assert!(text.contains("current-context: alice@k8s4r"), "{text}");
        assert!(text.contains("certificate-authority-data:"), "{text}");
        assert!(text.contains("- name: k8s4r\n  cluster:"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kc");
        write_private(&path, &text).unwrap();
        write_private(&path, &text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let r = load(&path).unwrap();
        assert_eq!(r.server, "https://127.0.0.1:7443");
        assert_eq!(r.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(r.cert_pem.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(r.key_pem.as_deref(), Some(&b"KEY"[..]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn a_missing_context_or_user_is_named() {
        let c: Kubeconfig = serde_yaml_ng::from_str("current-context: x\ncontexts: []").unwrap();
        assert!(resolve(&c, Path::new(".")).unwrap_err().contains("context \"x\""));
    }
}
