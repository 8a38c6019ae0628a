//! Is a listener's port free on this machine, and if not, who holds it?
//! Checked before Envoy starts so a clash fails the group early with the
//! port and owner named, instead of an Envoy listener error in a log.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

#[derive(Debug)]
pub enum PortError {
    /// Another socket has it; `owner` is `pid (command)` when /proc tells.
    Busy {
        what: String,
        addr: SocketAddr,
        owner: Option<String>,
    },
    /// Binding failed for another reason (e.g. a privileged port).
    Bind {
        what: String,
        addr: SocketAddr,
        error: io::Error,
    },
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::Busy { what, addr, owner } => {
                write!(f, "{what}: port {} on {} is already in use", addr.port(), addr.ip())?;
                match owner {
                    Some(o) => write!(f, " by {o}"),
                    None => f.write_str(" (owner unknown)"),
                }
            }
            PortError::Bind { what, addr, error } => write!(f, "{what}: cannot listen on {addr}: {error}"),
        }
    }
}

impl std::error::Error for PortError {}

/// Try to bind `ip:port` as Envoy will (and release it at once).
pub fn check_free(what: &str, ip: IpAddr, port: u16) -> Result<(), PortError> {
    let addr = SocketAddr::new(ip, port);
    match free_port_at(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(PortError::Busy {
            what: what.to_string(),
            addr,
            owner: owner_of(port),
        }),
        Err(error) => Err(PortError::Bind {
            what: what.to_string(),
            addr,
            error,
        }),
    }
}

/// The port a listener could bind at `addr` now (`addr`'s own, or one the
/// kernel picks for port 0), found by binding a TCP socket with
/// SO_REUSEADDR, as Envoy's listeners do, and closing it.
///
/// Why the probe never listens: this process forks (tasks, Envoy) from
/// other threads, and a child holds copies of every descriptor until its
/// exec closes them. A probe that listened would stay a listener in such a
/// child for that moment, and the real bind right after would fail with
/// EADDRINUSE and no owner to name. A socket that is bound with
/// SO_REUSEADDR but not listening conflicts with no SO_REUSEADDR bind.
pub fn free_port_at(addr: SocketAddr) -> io::Result<u16> {
    let fd = bound(addr)?;
    let local = rustix::net::getsockname(&fd)?;
    SocketAddr::try_from(local)
        .map(|a| a.port())
        .map_err(|_| io::Error::other("getsockname: not an IP address"))
}

fn bound(addr: SocketAddr) -> io::Result<OwnedFd> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// `pid (comm)` of a process with a listening TCP socket on `port`, from
/// /proc/net/tcp{,6} and /proc/*/fd. None when not visible (other users'
/// processes, no /proc).
pub fn owner_of(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let Some(inode) = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) else {
                continue;
            };
            if inodes.iter().any(|i| i == inode) {
                let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    None
}

/// Inodes of sockets in LISTEN state (st 0A) on `port`.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                out.push(inode.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn names_the_owner_of_a_busy_port() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = check_free("upstream \"db\"", IpAddr::V4(Ipv4Addr::LOCALHOST), port).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("port {port}")), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        drop(held);
        check_free("x", IpAddr::V4(Ipv4Addr::LOCALHOST), port).unwrap();
    }

    /// A probe's socket still open somewhere (as in a child forked while
    /// it existed, before that child's exec) must not make the port look
    /// taken to the listener that follows; a held listener must.
    #[test]
    fn a_probe_left_open_does_not_block_the_listener_after_it() {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let port = free_port_at(loopback).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let probe_copy = bound(addr).unwrap();
        check_free("x", addr.ip(), port).unwrap();
        let listener = TcpListener::bind(addr).expect("a listener beside a lingering probe");
        drop(probe_copy);
        // The contrast: a listener held elsewhere is found busy.
        let err = check_free("upstream \"db\"", addr.ip(), port).unwrap_err();
        assert!(matches!(err, PortError::Busy { .. }), "{err}");
        drop(listener);
    }
}
