//! k8s4r: run workloads on fleets of small robots.
//!
//! - `api`: types, validation, decoding; shared by both binaries, no I/O.
//! - `agent`: the robot side (supervisor, reconcile, standalone `run -f`).
//! - `envoy`: renders a TaskGroup's Envoy config from compiled-in templates.
//! - `server`: the control plane (feature `server`, never in the agent build).
//! - `bench`: `k8s4r bench`, the control plane's load test and the report
//!   of every benchmark (feature `server`).
//! - `cli`: small helpers shared by the binaries' command lines.
//! - `atomic_file`: the one atomic, durable file replacement.
//! - `http_client`: the one HTTP/1.1 client (robot channel, artifacts,
//!   self-update downloads, http health checks, Envoy's admin socket).
//! - `tcp_info`: what the kernel knows of a TCP connection (held polls).

pub mod agent;
pub mod api;
pub mod atomic_file;
#[cfg(feature = "server")]
pub mod bench;
pub mod cli;
pub mod envoy;
pub mod http_client;
#[cfg(feature = "server")]
pub mod server;
pub mod tcp_info;
