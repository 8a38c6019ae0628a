//! `k8s4r-agent`: the robot-side agent.

use k8s4r::agent::connected;
use k8s4r::cli::{self, FirstArg};

const USAGE: &str = "\
k8s4r-agent — run and supervise a robot's workloads

USAGE:
    k8s4r-agent <COMMAND> [OPTIONS]

COMMANDS:
    [connect] --server URL ...  Connected mode: register, long-poll tasks, run them (see connect --help)
    run -f FILE [--data-dir DIR]  Run a Job's task groups on this machine, no server
    logs TASK [-f] [--tail N]     Print a task's output
    stop-all [--data-dir DIR]     Stop every task the agent started
    render-envoy -f FILE [--group NAME]  Print a TaskGroup's Envoy config
    validate -f FILE|DIR|-    Check manifests

OPTIONS:
    -h, --help       Print help
    -V, --version    Print version
";

fn main() {
    cli::run_main(
        "k8s4r-agent",
        k8s4r::agent::version::current(),
        USAGE,
        |first, parser| match first {
            // Robot images start the agent with options only: connected mode.
            FirstArg::Option(opt) => connected::cli::cmd_connect(Some(opt), parser),
            FirstArg::Command(cmd) => match cmd.as_str() {
                "connect" => connected::cli::cmd_connect(None, parser),
                "run" => k8s4r::agent::cmd_run(parser),
                "logs" => k8s4r::agent::cmd_logs(parser),
                "stop-all" => k8s4r::agent::cmd_stop_all(parser),
                "render-envoy" => k8s4r::envoy::cmd_render(parser),
                "validate" => cli::cmd_validate(parser),
                other => Err(cli::unknown_command("k8s4r-agent", other)),
            },
        },
    )
}
