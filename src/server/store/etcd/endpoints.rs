//! Where etcd is and how to reach it: the members' client URLs, checked
//! once, all `http://` or all `https://` (then with the TLS configuration
//! from [`super::tls`]). Every command that takes `--etcd` builds one and
//! hands it to each client it opens.

use super::tls::{TlsError, TlsFiles};
use std::sync::Arc;

#[derive(Debug)]
pub enum EndpointError {
    /// No URL at all.
    Empty,
    /// Not an `http(s)://HOST:PORT` URL.
    Url(String),
    /// Both `http://` and `https://` members: one would go unprotected.
    Mixed {
        http: String,
        https: String,
    },
    /// TLS files given for `http://` members, which would not use them.
    TlsForHttp(&'static str),
    Tls(TlsError),
}

impl std::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointError::Empty => write!(f, "no etcd endpoint given"),
            EndpointError::Url(u) => write!(f, "etcd endpoint {u:?}: expected http://HOST:PORT or https://HOST:PORT"),
            EndpointError::Mixed { http, https } => write!(
                f,
                "etcd endpoints {http} and {https} mix http:// and https://; use https:// for every member"
            ),
            EndpointError::TlsForHttp(flag) => {
                write!(f, "{flag} is for https:// etcd endpoints; these are http://")
            }
            EndpointError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EndpointError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// Checked etcd client URLs, and the TLS configuration when they are https.
#[derive(Clone, Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoints {
    /// `urls` as given to `--etcd` (trailing slashes allowed), with the TLS
    /// files of `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile`,
    /// read and checked now.
    pub fn new(urls: &[String], files: &TlsFiles) -> Result<Endpoints, EndpointError> {
        let mut clean = Vec::new();
        let (mut http, mut https) = (None, None);
        for u in urls {
            let u = u.trim().trim_end_matches('/');
            let (rest, seen) = if let Some(rest) = u.strip_prefix("https://") {
                (rest, &mut https)
            } else if let Some(rest) = u.strip_prefix("http://") {
                (rest, &mut http)
            } else {
                return Err(EndpointError::Url(u.to_string()));
            };
            if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || u.parse::<hyper::Uri>().is_err() {
                return Err(EndpointError::Url(u.to_string()));
            }
            seen.get_or_insert_with(|| u.to_string());
            clean.push(u.to_string());
        }
        let tls = match (http, https) {
            (None, None) => return Err(EndpointError::Empty),
            (Some(http), Some(https)) => return Err(EndpointError::Mixed { http, https }),
            (Some(_), None) => match files.first_flag() {
                Some(flag) => return Err(EndpointError::TlsForHttp(flag)),
                None => None,
            },
            (None, Some(_)) => Some(files.client_config().map_err(EndpointError::Tls)?),
        };
        Ok(Endpoints { urls: clean, tls })
    }

    /// Plain `http://` URLs, with no TLS files (tests).
    pub fn http(urls: &[String]) -> Result<Endpoints, EndpointError> {
        Endpoints::new(urls, &TlsFiles::default())
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The TLS configuration; None for http:// members.
    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    /// The URLs and how they are reached, for the startup line.
    pub fn describe(&self) -> String {
        let how = match &self.tls {
            None => "",
            Some(c) if c.client_auth_cert_resolver.has_certs() => " (TLS, client certificate)",
            Some(_) => " (TLS)",
        };
        format!("{}{how}", self.urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn endpoints_must_be_http_or_https_urls() {
        assert!(matches!(Endpoints::http(&[]), Err(EndpointError::Empty)));
        for bad in [
            "127.0.0.1:2379",
            "http://127.0.0.1:2379/x",
            "ftp://h:1",
            "http://",
            "http://u@h:1",
        ] {
            assert!(
                matches!(Endpoints::http(&urls(&[bad])), Err(EndpointError::Url(_))),
                "{bad}"
            );
        }
        let ok = Endpoints::http(&urls(&["http://127.0.0.1:2379", "http://h:1/"])).unwrap();
        assert_eq!(ok.urls(), ["http://127.0.0.1:2379", "http://h:1"]);
        assert!(ok.tls().is_none());
    }

    #[test]
    fn http_and_https_do_not_mix() {
        let e = Endpoints::http(&urls(&["http://a:1", "https://b:2"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "etcd endpoints http://a:1 and https://b:2 mix http:// and https://; use https:// for every member"
        );
    }

    #[test]
    fn https_needs_a_ca_and_http_takes_no_tls_files() {
        let e = Endpoints::http(&urls(&["https://a:1"])).unwrap_err();
        assert!(e.to_string().contains("need --etcd-cafile"), "{e}");
        let files = TlsFiles {
            key: Some("k.pem".into()),
            ..TlsFiles::default()
        };
        let e = Endpoints::new(&urls(&["http://a:1"]), &files).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--etcd-keyfile is for https:// etcd endpoints; these are http://"
        );
    }
}
