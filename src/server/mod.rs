//! The control plane: Kubernetes-compatible API, controllers, scheduler,
//! stores, and the agent API.

/// `k8s4r server ...`
pub fn cmd_server(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let _ = parser;
    Err("server: not built yet".into())
}
