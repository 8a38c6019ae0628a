//! `k8s4r`: the control plane and operator tools.

use k8s4r::cli;
use lexopt::prelude::*;

const USAGE: &str = "\
k8s4r — control plane and tools for robot fleets

USAGE:
    k8s4r <COMMAND> [OPTIONS]

COMMANDS:
    server [--listen ADDR] [--data DIR]   Run the control plane
    server --etcd URL[,URL...]        ... on etcd; run several replicas
    migrate --from-data DIR --to-etcd URL  Move a stopped server's state to etcd
    logs TASK [-f] [--tail N]         A task's output, fetched from its robot
    token create [--server URL]       Print a new join token for robots
    bench robots N [N...]             Fleet load test; writes target/bench/server.json
    render-envoy -f FILE [--group NAME]  Print a TaskGroup's Envoy config
    validate -f FILE|DIR|-    Check manifests (YAML or JSON, multi-document)

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
            println!("k8s4r {}", cli::VERSION);
            Ok(0)
        }
        Value(cmd) if cmd == "server" => k8s4r::server::cmd_server(&mut parser),
        Value(cmd) if cmd == "logs" => k8s4r::server::logs_cli::cmd_logs(&mut parser),
        Value(cmd) if cmd == "migrate" => k8s4r::server::migrate::cmd_migrate(&mut parser),
        Value(cmd) if cmd == "token" => k8s4r::server::cmd_token(&mut parser),
        Value(cmd) if cmd == "bench" => k8s4r::server::bench::cmd_bench(&mut parser),
        Value(cmd) if cmd == "render-envoy" => k8s4r::envoy::cmd_render(&mut parser),
        Value(cmd) if cmd == "validate" => validate(&mut parser),
        Value(cmd) => Err(format!("unknown command {:?}; see k8s4r --help", cmd.to_string_lossy()).into()),
        other => Err(other.unexpected()),
    }
}

const VALIDATE_USAGE: &str = "\
k8s4r validate — check manifests against the robot.k8s4r.io/v1alpha1 API

USAGE:
    k8s4r validate -f FILE|DIR|-

Prints `ok Kind/name` per valid document, or one `error: SOURCE: field: reason`
line per problem. Unknown fields are reported as warnings on stderr.
Exits 1 when any document has an error.
";

fn validate(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut file = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('f') | Long("filename") => file = Some(parser.value()?.string()?),
            Short('h') | Long("help") => {
                print!("{VALIDATE_USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    let Some(file) = file else {
        return Err("validate needs -f FILE|DIR|-".into());
    };
    Ok(cli::run_validate(&file))
}
