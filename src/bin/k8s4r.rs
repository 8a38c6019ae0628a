//! `k8s4r`: the control plane and operator tools.

use k8s4r::cli::{self, FirstArg};

/// mimalloc, not glibc's malloc: the server's work is JSON trees and
/// bodies made and dropped per request and per watch event, and at 10,000
/// robots glibc's malloc (its bin upkeep and the consolidation each large
/// body set off) was a third of the server's CPU during a dispatch.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
k8s4r — control plane and tools for robot fleets

USAGE:
    k8s4r <COMMAND> [OPTIONS]

COMMANDS:
    server [--listen ADDR] [--data DIR]   Run the control plane
    server --etcd URL[,URL...]        ... on etcd; run several replicas
    server --etcd URL --etcd-cafile FILE  ... over TLS (with --etcd-certfile, --etcd-keyfile)
    migrate --from-data DIR --to-etcd URL  Move a stopped server's state to etcd
    logs TASK [-f] [--tail N]         A task's output, fetched from its robot
    job history|revert|promote|pause|resume NAME  A Job's versions and staged rollout
    token create|list|revoke          Join tokens for robots
    robot reset NAME                  Unbind a robot's keys (a new robot may take the name)
    robot-keys list|rotate [--overlap DUR]  The server's robot-channel keys
    kubeconfig [--user NAME] [--group G]...  A kubeconfig signed by the cluster's CA
    release keygen|sign|set-version   Sign agent releases offline (AgentRelease)
    bench robots N [N...]             Fleet load test; writes target/bench/server.json
    bench report                      target/bench/report.md from all benchmark results
    render-envoy -f FILE [--group NAME]  Print a TaskGroup's Envoy config
    validate -f FILE|DIR|-    Check manifests (YAML or JSON, multi-document)

OPTIONS:
    -h, --help       Print help
    -V, --version    Print version
";

fn main() {
    cli::run_main("k8s4r", cli::VERSION, USAGE, |first, parser| {
        let cmd = match first {
            FirstArg::Command(c) => c,
            FirstArg::Option(o) => return Err(format!("unexpected option '--{o}'; see k8s4r --help").into()),
        };
        match cmd.as_str() {
            "server" => k8s4r::server::cli::serve::cmd_server(parser),
            "logs" => k8s4r::server::cli::logs::cmd_logs(parser),
            "job" => k8s4r::server::cli::job::cmd_job(parser),
            "migrate" => k8s4r::server::migrate::cmd_migrate(parser),
            "token" => k8s4r::server::cli::token::cmd_token(parser),
            "robot" => k8s4r::server::cli::robot::cmd_robot(parser),
            "robot-keys" => k8s4r::server::cli::robot::cmd_robot_keys(parser),
            "kubeconfig" => k8s4r::server::cli::kubeconfig::cmd_kubeconfig(parser),
            "release" => k8s4r::server::cli::release::cmd_release(parser),
            "bench" => k8s4r::bench::cli::cmd_bench(parser),
            "render-envoy" => k8s4r::envoy::cmd_render(parser),
            "validate" => cli::cmd_validate(parser),
            other => Err(cli::unknown_command("k8s4r", other)),
        }
    })
}
