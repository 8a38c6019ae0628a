//! What the kernel knows about one TCP connection (`TCP_INFO`): whether it
//! is still established, how long ago the peer last acknowledged anything,
//! how many segments have arrived. A held long poll is silent for up to an
//! hour; both ends judge the other by these, not by application bytes:
//! the server counts a robot alive while its TCP keepalive probes are
//! acknowledged, and the agent counts the server alive while those probes
//! keep arriving (a probe is a segment received, answered by the kernel,
//! never seen by the application).
//!
//! rustix, which every other socket option here goes through, has no
//! `TCP_INFO`, so this is the one `getsockopt` made through libc (the
//! struct's layout is libc's, per target).

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// The parts of `struct tcp_info` the held long poll reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// The connection is ESTABLISHED (not closing, closed or reset).
    pub established: bool,
    /// Since the last acknowledgement from the peer (keepalive answers
    /// included).
    pub last_ack: Duration,
    /// Segments received, keepalive probes and bare ACKs included; None
    /// where the kernel does not count them (before Linux 4.2, or under
    /// qemu-user, which passes no TCP_INFO through): a connected socket has
    /// always received at least one.
    pub segments_in: Option<u32>,
}

/// Whether this kernel counts a connection's received segments (tried once
/// on a loopback pair): the agent holds polls only where it can tell a
/// silent connection from a quiet one.
pub fn counts_segments() -> bool {
    static COUNTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COUNTS.get_or_init(|| {
        let probe = || -> io::Result<bool> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let c = std::net::TcpStream::connect(l.local_addr()?)?;
            Ok(read(&c)?.segments_in.is_some())
        };
        probe().unwrap_or(false)
    })
}

/// Read `TCP_INFO` of the TCP socket `fd`.
pub fn read(fd: impl AsFd) -> io::Result<TcpInfo> {
    let fd = fd.as_fd();
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(|_| io::Error::other("tcp_info does not fit a socklen_t"))?;
    // SAFETY: `fd` is a borrowed, open descriptor; `info` is a zeroed
    // buffer of `len` bytes the kernel fills at most `len` of, and it
    // stays alive across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed is a valid tcp_info (plain integers), and the kernel
    // wrote a prefix of it.
    let info = unsafe { info.assume_init() };
    let reaches_segs_in = usize::try_from(len)
        .is_ok_and(|n| n >= std::mem::offset_of!(libc::tcp_info, tcpi_segs_in) + std::mem::size_of::<u32>());
    Ok(TcpInfo {
        established: u32::from(info.tcpi_state) == TCP_ESTABLISHED,
        last_ack: Duration::from_millis(u64::from(info.tcpi_last_ack_recv)),
        segments_in: Some(info.tcpi_segs_in).filter(|n| reaches_segs_in && *n > 0),
    })
}

/// `TCP_ESTABLISHED` of the kernel's TCP state machine (include/net/tcp_states.h).
const TCP_ESTABLISHED: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_live_connection_is_established_and_counts_what_arrives() {
        if !counts_segments() {
            eprintln!("SKIP: this kernel (or qemu-user) reports no TCP_INFO segment counts");
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let before = read(&s).unwrap();
        assert!(before.established);
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        let after = read(&s).unwrap();
        assert!(after.segments_in > before.segments_in, "{before:?} -> {after:?}");
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut buf).unwrap();
        // The ACK of "pong" came back just now.
        assert!(read(&s).unwrap().last_ack < Duration::from_secs(5));
        drop(c);
        // The peer's FIN moves the state on: no longer ESTABLISHED.
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        assert!(!read(&s).unwrap().established);
    }

    #[test]
    fn a_socket_that_is_not_tcp_is_an_error() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(read(&a).is_err());
    }
}
