//! k8s4r: run workloads on fleets of small robots.
//!
//! `api` is shared by both binaries and does no I/O. `cli` holds the small
//! argument and output helpers both binaries use.

pub mod api;
pub mod cli;
