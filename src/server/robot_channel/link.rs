//! The TCP side of the agent listener.
//!
//! Agents keep one connection open across requests (HTTP/1.1 keep-alive,
//! which the agent listener never times out), so a robot
//! that loses power or its link leaves a connection nothing will ever
//! write to. TCP keepalive finds those: after [`IDLE`] without a byte,
//! [`PROBES`] probes [`INTERVAL`] apart, then the kernel closes it.
//!
//! A held long poll (an agent that asked to wait longer than the poll
//! interval, `--poll-hold`) is silent for up to an hour, so there the
//! connection itself is the heartbeat: [`Link::hold`] makes the kernel
//! probe every [`HoldTiming::probe`] (a probe and its answer are ≈ 100
//! bytes on the wire, against ≈ 1 KB for a poll), and the poll counts the
//! robot alive as long as the last acknowledgement ([`Link::ack_age`],
//! `TCP_INFO`) is recent. Each connection's [`Link`] reaches the handlers
//! as a request extension ([`AgentPeer`]).
//!
//! The [`Link`] and the connection share its one socket
//! ([`SharedTcp`]): a duplicate descriptor per connection would make two
//! open files per robot, and a server's open-file limit is what caps its
//! fleet first.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub const IDLE: Duration = Duration::from_secs(15 * 60);
pub const INTERVAL: Duration = Duration::from_secs(60);
pub const PROBES: u32 = 5;

/// Applied to every accepted agent connection; a socket that refuses the
/// options is served anyway (the options only reclaim dead peers sooner).
pub fn tune(tcp: &mut TcpStream) {
    if let Err(e) = keepalive(&*tcp, IDLE, INTERVAL, PROBES) {
        log::debug!("agent connection: TCP keepalive not set: {e}");
    }
}

fn keepalive(fd: impl AsFd, idle: Duration, interval: Duration, probes: u32) -> std::io::Result<()> {
    use rustix::net::sockopt;
    let fd = fd.as_fd();
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, idle)?;
    sockopt::set_tcp_keepintvl(fd, interval)?;
    sockopt::set_tcp_keepcnt(fd, probes)?;
    Ok(())
}

/// The shortest offline limit under which polls are held: below it the
/// kernel's whole-second keepalive timers leave too little room between a
/// probe's answer and the limit (a robot polls every interval instead;
/// at such limits polls cost little next to what they detect).
pub const MIN_OFFLINE_AFTER: Duration = Duration::from_secs(6);

/// How a held poll watches its connection, from the fleet's offline limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTiming {
    /// Keepalive idle time: a probe this long after the last segment.
    pub probe: Duration,
    /// A probe not answered is sent again this much later.
    pub retry: Duration,
    /// How often the poll reads the last acknowledgement's age.
    pub check: Duration,
}

impl HoldTiming {
    /// Probes every two thirds of `offline_after` (60 s of the default
    /// 90 s) leave room for lost probes (re-sent an eighteenth of that
    /// apart) and a check (a ninth) before the robot counts as silent.
    /// The kernel takes whole seconds (at least one), rounded down so a
    /// short limit keeps its room; the checks are the poll's own timer and
    /// keep their fraction.
    pub fn for_offline_after(offline_after: Duration) -> HoldTiming {
        let whole_seconds = |d: Duration| Duration::from_secs(d.as_secs().max(1));
        HoldTiming {
            probe: whole_seconds(offline_after.saturating_mul(2) / 3),
            retry: whole_seconds(offline_after / 18),
            check: (offline_after / 9).max(Duration::from_millis(100)),
        }
    }
}

/// One agent connection, as the handlers of its requests see it: the
/// socket the listener serves (closed once the connection and every
/// request that holds it are done with it).
#[derive(Clone, Debug)]
pub struct Link(Arc<TcpStream>);

impl Link {
    fn of(tcp: &Arc<TcpStream>) -> Link {
        Link(tcp.clone())
    }

    /// Make the kernel probe this connection as a held poll needs (see
    /// [`HoldTiming`]); the probes stop counting against it once the
    /// robot is past its offline limit anyway.
    pub fn hold(&self, t: HoldTiming, offline_after: Duration) -> std::io::Result<()> {
        let after_probe = offline_after.saturating_sub(t.probe);
        let probes = u32::try_from(after_probe.as_secs() / t.retry.as_secs().max(1))
            .unwrap_or(u32::MAX)
            .clamp(1, 127);
        keepalive(&*self.0, t.probe, t.retry, probes)
    }

    /// How long ago the robot's end last acknowledged anything; an error
    /// when the connection is no longer established (reset, closed, timed
    /// out by the probes).
    pub fn ack_age(&self) -> std::io::Result<Duration> {
        let info = crate::tcp_info::read(&*self.0)?;
        if !info.established {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection is no longer established",
            ));
        }
        Ok(info.last_ack)
    }
}

/// The agent listener's per-connection data: the peer's address (the
/// audit log's sourceIPs) and its [`Link`].
#[derive(Clone, Debug)]
pub struct AgentPeer {
    pub addr: SocketAddr,
    pub link: Option<Link>,
}

/// The agent listener: every accepted connection [`tune`]d, with its
/// [`AgentPeer`] (served by `http::agent_listener::serve`).
pub struct AgentListener(pub TcpListener);

impl AgentListener {
    /// The next connection. Errors that concern one connection are skipped;
    /// others (out of descriptors) are retried after a pause, as
    /// `axum::serve` does, so a full table never spins the loop.
    pub async fn accept(&self) -> (SharedTcp, AgentPeer) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => return accepted(tcp, addr),
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    log::error!("agent listener: accepting: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// A connection just accepted from `addr`, [`tune`]d, as the listener
/// serves it and its requests see it.
pub fn accepted(mut tcp: TcpStream, addr: SocketAddr) -> (SharedTcp, AgentPeer) {
    tune(&mut tcp);
    let tcp = Arc::new(tcp);
    let link = Some(Link::of(&tcp));
    (SharedTcp(tcp), AgentPeer { addr, link })
}

/// An accept error about the one connection (gone before it was taken).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection as the agent listener reads and writes it, through a shared
/// reference (tokio's readiness and `try_*` calls work on `&TcpStream`), so
/// its [`Link`] needs no descriptor of its own.
pub struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    /// The socket, for readiness and peeking.
    pub fn stream(&self) -> &TcpStream {
        &self.0
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A read that would block clears the readiness: poll again.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = rustix::net::shutdown(&*self.0, rustix::net::Shutdown::Write);
        // Already closed by the peer is as good as shut down.
        Poll::Ready(match done {
            Err(rustix::io::Errno::NOTCONN) => Ok(()),
            other => other.map_err(io::Error::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_offline_limit_probes_every_minute() {
        let t = HoldTiming::for_offline_after(Duration::from_secs(90));
        assert_eq!(t.probe, Duration::from_secs(60));
        assert_eq!(t.retry, Duration::from_secs(5));
        assert_eq!(t.check, Duration::from_secs(10));
        // Short test limits still give whole seconds the kernel accepts,
        // and checks often enough to see each probe's answer in time.
        let t = HoldTiming::for_offline_after(Duration::from_secs(2));
        assert_eq!((t.probe, t.retry), (Duration::from_secs(1), Duration::from_secs(1)));
        assert_eq!(t.check, Duration::from_secs(2) / 9);
    }

    #[tokio::test]
    async fn a_held_link_is_probed_and_reports_its_last_ack() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let s = Arc::new(s);
        let link = Link::of(&s);
        let t = HoldTiming::for_offline_after(Duration::from_secs(3));
        link.hold(t, Duration::from_secs(3)).unwrap();
        assert_eq!(rustix::net::sockopt::tcp_keepidle(&s).unwrap(), Duration::from_secs(2));
        // Nothing is written either way; only the kernel's probes (every 2 s)
        // and their answers keep the last ACK young.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut aged = false;
        let mut young_again = false;
        while std::time::Instant::now() < deadline && !young_again {
            let age = link.ack_age().unwrap();
            if age >= Duration::from_millis(1500) {
                aged = true;
            } else if aged {
                young_again = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(young_again, "a probe's answer never refreshed the last ACK");
        drop(c);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while link.ack_age().is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the closed peer still looks established"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
