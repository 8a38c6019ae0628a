//! `k8s4r-agent`: the robot-side agent.

use k8s4r::cli;
use lexopt::prelude::*;

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
    std::process::exit(match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    });
}

fn run() -> Result<i32, lexopt::Error> {
    let mut parser = lexopt::Parser::from_env();
    let Some(arg) = parser.next()? else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    match arg {
        Short('h') | Long("help") => {
            print!("{USAGE}");
            Ok(0)
        }
        Short('V') | Long("version") => {
            println!("k8s4r-agent {}", cli::VERSION);
            Ok(0)
        }
        Value(cmd) if cmd == "connect" => k8s4r::agent::connected::cli::cmd_connect(None, &mut parser),
        Long(opt) => {
            let opt = opt.to_string();
            k8s4r::agent::connected::cli::cmd_connect(Some(opt), &mut parser)
        }
        Value(cmd) if cmd == "run" => k8s4r::agent::cmd_run(&mut parser),
        Value(cmd) if cmd == "logs" => k8s4r::agent::cmd_logs(&mut parser),
        Value(cmd) if cmd == "stop-all" => k8s4r::agent::cmd_stop_all(&mut parser),
        Value(cmd) if cmd == "render-envoy" => k8s4r::envoy::cmd_render(&mut parser),
        Value(cmd) if cmd == "validate" => {
            let mut file = None;
            while let Some(arg) = parser.next()? {
                match arg {
                    Short('f') | Long("filename") => file = Some(parser.value()?.string()?),
                    other => return Err(other.unexpected()),
                }
            }
            let file = file.ok_or("validate needs -f FILE|DIR|-")?;
            Ok(cli::run_validate(&file))
        }
        Value(cmd) => Err(format!("unknown command {:?}; see k8s4r-agent --help", cmd.to_string_lossy()).into()),
        other => Err(other.unexpected()),
    }
}
