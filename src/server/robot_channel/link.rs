//! The TCP side of the agent listener. Agents keep one connection open
//! across requests (HTTP/1.1 keep-alive, which hyper serves by default and
//! never times out here), so a robot that loses power or its link leaves a
//! connection nothing will ever write to. TCP keepalive finds those: after
//! [`IDLE`] without a byte, [`PROBES`] probes [`INTERVAL`] apart, then the
//! kernel closes it. A live agent never leaves a connection idle that long
//! (it polls again at once and closes its own idle ones), so the probes
//! cost a healthy robot's metered link nothing at the default settings.

use std::time::Duration;

pub const IDLE: Duration = Duration::from_secs(15 * 60);
pub const INTERVAL: Duration = Duration::from_secs(60);
pub const PROBES: u32 = 5;

/// Applied to every accepted agent connection; a socket that refuses the
/// options is served anyway (the options only reclaim dead peers sooner).
pub fn tune(tcp: &mut tokio::net::TcpStream) {
    use rustix::net::sockopt;
    let set = sockopt::set_socket_keepalive(&*tcp, true)
        .and_then(|()| sockopt::set_tcp_keepidle(&*tcp, IDLE))
        .and_then(|()| sockopt::set_tcp_keepintvl(&*tcp, INTERVAL))
        .and_then(|()| sockopt::set_tcp_keepcnt(&*tcp, PROBES));
    if let Err(e) = set {
        log::debug!("agent connection: TCP keepalive not set: {e}");
    }
}
