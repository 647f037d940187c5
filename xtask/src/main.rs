//! Developer workflows, run as `cargo xtask <command>`.

mod bench;
mod chaos;
mod clients;
mod cluster;
mod devproc;
mod iggy;
mod k8s;
mod observability;
mod peer;
mod python;
mod setup;

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci             everything CI checks: installs missing tools (setup, Jaeger), fmt,
                 clippy -D warnings, all Rust tests, the Python gRPC test and
                 the Go, Java, Node.js, Rust and grpcurl client tests against one real
                 `streambus dev`, then `k8s test` (the chart and the operator
                 against a real Kubernetes API server)
  setup          install what the tests need, only what is missing
  python-test    only the Python gRPC test (sets up its venv first)
  clients-test   only the client tests (tests/clients and the Rust SDK's example):
                 clients-test [go|java|node|rust|grpcurl]... (all when none is named;
                 docs/clients.md)
  peer           install and run a local Kafka, NATS JetStream or Apache Iggy to compare with,
                 or Jaeger to send traces to:
                 peer <kafka|nats> [install|start|stop|status] [--durability fsync|page-cache]
                 peer iggy install --src DIR | start | stop | status | bench [--durability ...]
                 peer jaeger [install|start|stop|status] (docs/observability.md)
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
        Some("clients-test") => setup::run_setup().and_then(|()| clients::main(&args[1..])),
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
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_shown(&mut cmd, &format!("{program} {}", args.join(" ")))
}

/// Runs a prepared command, echoing it as `shown`; an error names it.
pub fn run_shown(cmd: &mut Command, shown: &str) -> Result<(), String> {
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed: {status}"))
    }
}

/// The cache of tools built or fetched for the tests, shared by every clone
/// and worktree: `$STREAMBUS_CACHE_DIR`, else `$XDG_CACHE_HOME/streambus`,
/// else `~/.cache/streambus`.
pub fn cache_root() -> Result<std::path::PathBuf, String> {
    if let Some(dir) = std::env::var_os("STREAMBUS_CACHE_DIR") {
        return Ok(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(std::path::PathBuf::from(dir).join("streambus"));
    }
    let home = std::env::var_os("HOME").ok_or("neither STREAMBUS_CACHE_DIR nor HOME is set")?;
    Ok(std::path::PathBuf::from(home).join(".cache/streambus"))
}

fn ci() -> Result<(), String> {
    setup::run_setup()?;
    // The observability test exports to a real Jaeger (and Prometheus,
    // from setup's Debian packages).
    observability::install_jaeger()?;
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
    // The Python test and the client tests share one `streambus dev`.
    let venv = python::venv()?;
    let clients = clients::prepare(clients::LANGUAGES)?;
    devproc::with_dev(|gateway| {
        let python = python::test(&venv, gateway);
        let clients = clients.test(gateway);
        python.and(clients)
    })?;
    // The chart and the operator against a real API server; the control
    // plane is stopped and its directory removed whether or not it passed.
    let result = k8s::test();
    let stopped = k8s::down();
    result.and(stopped)
}
