//! What the plain-HTTP agent listener (`--agent-listen`) serves: the agent
//! protocol and nothing else. Robots have no TLS stack (size is the point),
//! so this listener carries only what the robot channel authenticates end
//! to end; the Kubernetes API, join-token administration and metrics stay
//! on HTTPS. The HTTPS listener serves the agent protocol too. The routes
//! are `super::agent_router`'s.
//!
//! And how ([`serve`]): HTTP/1.1 only (agents speak nothing else), with
//! hyper's read buffer held to its least, 8 KiB. Each robot keeps a
//! connection open, mostly inside a held poll, so what a connection keeps
//! is what a fleet costs: `axum::serve` (HTTP/1 and HTTP/2 sniffing, no
//! buffer settings) let the read buffer grow to 16 KiB on every agent
//! connection (heaptrack, 2,000 idle robots: 32 MiB of 180).

use crate::server::robot_channel::link::{AgentListener, AgentPeer};
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use std::future::Future;
use tower::ServiceExt;

/// hyper's least read buffer (its `max_buf_size` floor): an agent request's
/// head is well under it, and a body streams through it.
const READ_BUFFER: usize = 8192;

/// The agent protocol's paths: the one list of what the agent listener
/// serves (a new agent endpoint is one line here).
pub fn is_robot_channel(path: &str) -> bool {
    path == "/agent/v1/register" || path.starts_with("/agent/v1/robots/")
}

/// Serve `router` to every connection `listener` accepts until `stop`
/// completes; then accept no more, ask each connection to close once its
/// request is answered, and return when all have.
pub async fn serve(listener: AgentListener, router: Router, stop: impl Future<Output = ()>) {
    // Connections hold `closing`'s receiver and drop it when done;
    // `shutdown` is dropped to tell them to finish.
    let (shutdown, asked) = tokio::sync::watch::channel(());
    let (closing, closed) = tokio::sync::watch::channel(());
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (mut asked, closed) = (asked.clone(), closed.clone());
        let service = with_peer(router.clone(), peer);
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.max_buf_size(READ_BUFFER);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let mut finishing = false;
            loop {
                tokio::select! {
                    served = conn.as_mut() => {
                        if let Err(e) = served {
                            log::debug!("agent connection: {e}");
                        }
                        break;
                    }
                    // Nothing is ever sent: this completes when the sender
                    // is dropped, and is not polled again after (a closed
                    // channel answers at once, every time).
                    _ = asked.changed(), if !finishing => {
                        finishing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    drop(shutdown);
    drop(closed);
    closing.closed().await;
}

/// `router` for one connection: each request carries the peer's address
/// (the audit log's sourceIPs, as on the other listeners) and its
/// connection's [`Link`](crate::server::robot_channel::link::Link).
fn with_peer(
    router: Router,
    peer: AgentPeer,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(link) = &peer.link {
            req.extensions_mut().insert(link.clone());
        }
        router.clone().oneshot(req)
    })
}

#[cfg(test)]
mod tests {
    use super::is_robot_channel;

    #[test]
    fn only_the_agent_protocol_is_robot_channel() {
        for yes in [
            "/agent/v1/register",
            "/agent/v1/robots/r1/assignments",
            "/agent/v1/robots/r1/status",
            "/agent/v1/robots/r1/logs",
        ] {
            assert!(is_robot_channel(yes), "{yes}");
        }
        for no in [
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs",
            "/agent/v1/jointokens",
            "/agent/v1/robottokens/r1",
            "/agent/v1/registerx",
            "/metrics",
            "/version",
        ] {
            assert!(!is_robot_channel(no), "{no}");
        }
    }
}
