//! What the plain-HTTP agent listener (`--agent-listen`) serves: the agent
//! protocol and nothing else. Robots have no TLS stack (size is the point),
//! so this listener carries only what the robot channel authenticates end
//! to end; the Kubernetes API, join-token administration and metrics stay
//! on HTTPS. The HTTPS listener serves the agent protocol too.

use super::AppState;
use crate::server::status::Status;
use axum::response::{IntoResponse, Response};
use axum::Router;

/// The agent protocol's paths: the one list of what the agent listener
/// serves (a new agent endpoint is one line here).
pub fn is_robot_channel(path: &str) -> bool {
    path == "/agent/v1/register" || path.starts_with("/agent/v1/robots/")
}

/// The whole router, with every path outside the agent protocol 404.
pub fn agent_router(app: AppState) -> Router {
    super::router(app).layer(axum::middleware::from_fn(only_robot_channel))
}

async fn only_robot_channel(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if is_robot_channel(req.uri().path()) {
        next.run(req).await
    } else {
        Status::path_not_found(req.uri().path()).into_response()
    }
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
