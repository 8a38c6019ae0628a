//! What the plain-HTTP agent listener (`--agent-listen`) serves: the agent
//! protocol and nothing else. Robots have no TLS stack (size is the point),
//! so this listener carries only what the robot channel authenticates end
//! to end; the Kubernetes API, join-token administration and metrics stay
//! on HTTPS. The HTTPS listener serves the agent protocol too. The routes
//! are `super::agent_router`'s.
//!
//! And how ([`serve`]): HTTP/1.1 only (agents speak nothing else), each
//! connection served by `super::agent_http1`, which keeps no buffer while
//! a poll is held (the module says why it is not hyper's).

use super::agent_http1::{self, Bounds};
use crate::server::robot_channel::link::AgentListener;
use axum::Router;
use std::future::Future;

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
        let (asked, closed) = (asked.clone(), closed.clone());
        let router = router.clone();
        tokio::spawn(async move {
            agent_http1::serve_connection(io, peer, router, asked, Bounds::default()).await;
            drop(closed);
        });
    }
    drop(listener);
    drop(shutdown);
    drop(closed);
    closing.closed().await;
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
