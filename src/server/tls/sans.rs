//! The names the serving certificate must cover: localhost, the loopback
//! addresses, this machine's hostname, the `--listen` address when it is a
//! specific one, and every `--tls-san`. Validated here so a bad
//! `--tls-san` is an error naming the flag, not a failed signature later.

use std::net::{IpAddr, SocketAddr};

/// Longest DNS name (RFC 1035).
const MAX_DNS_NAME: usize = 253;

/// `text` as a SAN: an IP address, or a DNS name (letters, digits, `-`
/// and `.`, optionally a leading `*.` wildcard).
pub fn check(text: &str) -> Result<(), String> {
    if text.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = text.strip_prefix("*.").unwrap_or(text);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if text.is_empty() || text.len() > MAX_DNS_NAME || !name.split('.').all(label_ok) {
        return Err(format!(
            "{text:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.', at most {MAX_DNS_NAME} characters)"
        ));
    }
    Ok(())
}

/// `text` (already [`check`]ed) as rcgen's SAN.
pub fn to_san(text: &str) -> Result<rcgen::SanType, String> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
        Err(_) => text
            .to_string()
            .try_into()
            .map(rcgen::SanType::DnsName)
            .map_err(|e| format!("{text:?}: {e}")),
    }
}

/// Every name the serving certificate must cover, sorted, without
/// duplicates. `listen` adds its host unless it is a wildcard address.
pub fn wanted(listen: SocketAddr, hostname: Option<String>, extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    all.extend(hostname.filter(|h| check(h).is_ok()));
    if !listen.ip().is_unspecified() {
        all.push(listen.ip().to_string());
    }
    all.extend(extra.iter().cloned());
    all.sort();
    all.dedup();
    all
}

/// This machine's hostname (lower case), if it has one.
pub fn hostname() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_str().ok()?.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_checked() {
        for ok in [
            "localhost",
            "robot-1.example.com",
            "*.example.com",
            "10.0.0.5",
            "fe80::1",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "-x.com", "x..com", "bad_name", "a.*.com", &"a".repeat(300)] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_listen_address_counts_only_when_specific() {
        let any: SocketAddr = "0.0.0.0:7443".parse().unwrap();
        let one: SocketAddr = "10.1.2.3:7443".parse().unwrap();
        let extra = ["k8s.example.com".to_string()];
        let w = wanted(any, Some("host-a".into()), &extra);
        assert_eq!(w, ["127.0.0.1", "::1", "host-a", "k8s.example.com", "localhost"]);
        assert!(wanted(one, None, &[]).contains(&"10.1.2.3".to_string()));
    }
}
