//! `k8s4r kubeconfig`: a kubeconfig for another user, signed by the
//! cluster's CA read from the store (the server's `--data` or `--etcd`), so
//! an operator hands out credentials without the CA key leaving the store.
//! The user is the certificate's CN, each group an O (what authorization
//! decides by).

use crate::server::kubeconfig;
use crate::server::store::{self, Store};
use crate::server::tls::ca::Ca;
use lexopt::prelude::*;
use std::path::PathBuf;

const USAGE: &str = "\
k8s4r kubeconfig — a kubeconfig for a user, signed by the cluster's CA

USAGE:
    k8s4r kubeconfig [--user NAME] [--group GROUP]... [--server URL] [-o FILE]
                     [--data DIR | --etcd URL[,URL...]]

OPTIONS:
    --user NAME          The user (certificate CN) [default: admin]
    --group GROUP        A group (certificate O), repeatable: k8s4r:admins,
                         k8s4r:operators, k8s4r:viewers [default: none; with
                         the default user: system:masters]
    --server URL         The server URL in the kubeconfig [default: https://127.0.0.1:7443]
    -o, --output FILE    Write it here (0600) instead of printing it
    --data DIR           The server's data directory [default: ./k8s4r-data]
    --etcd URL[,URL...]  The server's etcd instead
    --etcd-cafile, --etcd-certfile, --etcd-keyfile FILE
                         TLS to that etcd, as for `k8s4r server`
";

/// Longest user or group name (kube-apiserver sets none; this keeps
/// certificates and audit lines small).
const MAX_NAME: usize = 256;

/// A user or group name: not empty, at most [`MAX_NAME`] bytes, no
/// control characters.
fn check_name(flag: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(format!("{flag}: must not be empty"));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{flag}: {} bytes is more than the limit of {MAX_NAME}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{flag} {name:?}: control characters are not allowed"));
    }
    Ok(())
}

pub fn cmd_kubeconfig(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut user: Option<String> = None;
    let mut groups: Vec<String> = Vec::new();
    let mut server = "https://127.0.0.1:7443".to_string();
    let mut output: Option<PathBuf> = None;
    let mut data = PathBuf::from("k8s4r-data");
    let mut etcd: Vec<String> = Vec::new();
    let mut etcd_tls = store::etcd::tls::TlsFiles::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("user") => {
                let u = parser.value()?.string()?;
                check_name("--user", &u)?;
                user = Some(u);
            }
            Long("group") => {
                let g = parser.value()?.string()?;
                check_name("--group", &g)?;
                groups.push(g);
            }
            Long("server") => server = parser.value()?.string()?,
            Short('o') | Long("output") => output = Some(parser.value()?.into()),
            Long("data") => data = parser.value()?.into(),
            Long("etcd") => etcd = super::url_list(&parser.value()?.string()?),
            Long("etcd-cafile") => etcd_tls.ca = Some(parser.value()?.into()),
            Long("etcd-certfile") => etcd_tls.cert = Some(parser.value()?.into()),
            Long("etcd-keyfile") => etcd_tls.key = Some(parser.value()?.into()),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    if user.is_none() && groups.is_empty() {
        groups.push(crate::server::auth::SYSTEM_MASTERS.to_string());
    }
    let user = user.unwrap_or_else(|| "admin".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let text = match rt.block_on(issue(&data, &etcd, &etcd_tls, &server, &user, &groups)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    match output {
        Some(path) => {
            if let Err(e) = kubeconfig::write_private(&path, &text) {
                eprintln!("error: {e}");
                return Ok(1);
            }
            eprintln!(
                "wrote {} for user {user} (groups: {})",
                path.display(),
                groups.join(", ")
            );
        }
        None => print!("{text}"),
    }
    Ok(0)
}

async fn issue(
    data: &std::path::Path,
    etcd: &[String],
    etcd_tls: &store::etcd::tls::TlsFiles,
    server: &str,
    user: &str,
    groups: &[String],
) -> Result<String, String> {
    let store: Box<dyn Store> = if etcd.is_empty() {
        // Never create a database here: a wrong --data is an error.
        if !data.join("k8s4r.db").is_file() {
            return Err(format!(
                "{} holds no k8s4r.db (pass the server's --data)",
                data.display()
            ));
        }
        Box::new(store::sqlite::SqliteStore::open(data, 1).map_err(|e| e.to_string())?)
    } else {
        let endpoints = store::etcd::Endpoints::new(etcd, etcd_tls).map_err(|e| e.to_string())?;
        Box::new(
            store::etcd::EtcdStore::connect(&endpoints, store::etcd::DEFAULT_PREFIX, 1)
                .await
                .map_err(|e| format!("connecting to etcd: {e}"))?,
        )
    };
    let ca = Ca::load(store.as_ref())
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the store holds no CA yet: start `k8s4r server` on it once (or it runs with --insecure-http only)")?;
    let issued = ca.issue_client_cert(user, groups).map_err(|e| e.to_string())?;
    Ok(kubeconfig::render(
        "k8s4r",
        server,
        Some(ca.cert_pem()),
        user,
        Some((&issued.cert_pem, &issued.key_pem)),
    ))
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("--user", "alice").is_ok());
        assert!(check_name("--group", "k8s4r:viewers").is_ok());
        assert!(check_name("--user", "").is_err());
        assert!(check_name("--user", "a\nb").unwrap_err().contains("control"));
        assert!(check_name("--group", &"g".repeat(300)).unwrap_err().contains("limit"));
    }
}
