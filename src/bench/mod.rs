//! Benchmarks of the control plane, kept out of the product's `server`
//! module (they drive it from outside, as a client would): `k8s4r bench
//! robots N...` runs a fleet load test (`fleet.rs`, on SQLite or on a
//! throwaway etcd from `etcd.rs`), `k8s4r bench rollout N` an AgentRelease
//! (`rollout.rs`) and `k8s4r bench job-rollout N` a Job's versions
//! (`job_rollout.rs`) to simulated robots (`sim.rs`), `k8s4r bench soak N`
//! keeps N of them busy for an hour and samples the server (`soak.rs`,
//! `make soak`), `k8s4r bench report` writes
//! target/bench/report.md from every benchmark's JSON (`report.rs`), with
//! its key comparisons drawn as SVG beside it (`charts.rs`).
//! `make bench` runs them beside the agent, proxy and end-to-end benchmarks
//! of tests/.

pub mod charts;
pub mod cli;
pub mod etcd;
pub mod fleet;
mod job_rollout;
pub mod report;
mod rollout;
mod sim;
pub mod soak;
