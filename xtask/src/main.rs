//! Developer workflows, run as `cargo xtask <command>`.

mod bench;
mod chaos;
mod cluster;
mod devproc;
mod k8s;
mod peer;
mod python;
mod setup;

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci             everything CI checks: installs missing tools (setup), fmt,
                 clippy -D warnings, all Rust tests, and the Python gRPC test
                 against a real `streambus dev`, then `k8s test` (the chart
                 and the operator against a real Kubernetes API server)
  setup          install what the tests need, only what is missing
  python-test    only the Python gRPC test (sets up its venv first)
  peer           install and run a local Kafka or NATS JetStream to compare with:
                 peer <kafka|nats> [install|start|stop|status] [--durability fsync|page-cache]
  bench          bench compare [options]: one workload against StreamBus, Kafka and
                 NATS JetStream back to back, a side-by-side table (docs/bench-tool.md)
  cluster        a multi-process cluster on 127.0.0.1 for fault drills:
                 cluster <up|ps|kill|restart|down> [options] (README.md)
  chaos          the seeded randomized fault test for longer:
                 chaos [--seed N] [--duration 10m] (docs/replication.md)
  k8s            a real Kubernetes control plane on 127.0.0.1 for the operator's
                 tests: k8s <build|up|down|status|test> (docs/kubernetes.md)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("python-test") => setup::run_setup().and_then(|()| python::run()),
        Some("setup") => setup::run_setup(),
        Some("peer") => peer::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some("cluster") => cluster::main(&args[1..]),
        Some("chaos") => chaos::main(&args[1..]),
        Some("k8s") => k8s::main(&args[1..]),
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command, echoing it; an error names the failed step.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed: {status}", args.join(" ")))
    }
}

fn ci() -> Result<(), String> {
    setup::run_setup()?;
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run("cargo", &["test", "--workspace", "--locked"])?;
    python::run()?;
    // The chart and the operator against a real API server; the control
    // plane is stopped and its directory removed whether or not it passed.
    let result = k8s::test();
    let stopped = k8s::down();
    result.and(stopped)
}
