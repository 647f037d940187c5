//! Jaeger, the trace store the tracing test exports to: built from the Go
//! module proxy (`observability/jaeger/go.mod` pins it) into the cache
//! outside the clone, keyed by version, and run on 127.0.0.1 with
//! `observability/jaeger/config.yaml` (spans in memory).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::peer;

/// The Jaeger release `observability/jaeger/go.mod` pins.
pub const JAEGER_VERSION: &str = "v1.75.0";
/// Where `peer jaeger start` receives OTLP over gRPC.
pub const JAEGER_OTLP_ADDR: &str = "127.0.0.1:4317";
/// Where `peer jaeger start` serves its query API and UI.
pub const JAEGER_QUERY_ADDR: &str = "127.0.0.1:16686";

fn module_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("observability/jaeger")
}

/// The cached `jaeger` binary (built or not).
pub fn jaeger_binary() -> Result<PathBuf, String> {
    Ok(crate::cache_root()?
        .join("jaeger")
        .join(JAEGER_VERSION)
        .join("bin/jaeger"))
}

/// Builds `jaeger` into the cache unless it is there and runs. Needs Go
/// 1.26 or newer; a cold build takes about ten minutes on two cores.
pub fn install_jaeger() -> Result<PathBuf, String> {
    let bin = jaeger_binary()?;
    let runs = || {
        Command::new(&bin)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs() {
        return Ok(bin);
    }
    match crate::k8s::go_version() {
        Some(v) if v >= (1, 26) => {}
        found => {
            return Err(format!(
                "building Jaeger {JAEGER_VERSION} needs Go 1.26 or newer; found {}",
                found.map_or("no `go`".to_string(), |(a, b)| format!("go{a}.{b}"))
            ));
        }
    }
    let started = Instant::now();
    let dir = bin.parent().expect("the binary has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let partial = bin.with_extension("partial");
    eprintln!(
        "jaeger: building {} (go build in {}; about ten minutes the first time)",
        bin.display(),
        module_dir().display()
    );
    let status = Command::new("nice")
        .args([
            "-n",
            "10",
            "go",
            "build",
            "-trimpath",
            "-buildvcs=false",
            "-o",
        ])
        .arg(&partial)
        .arg("github.com/jaegertracing/jaeger/cmd/jaeger")
        .current_dir(module_dir())
        .status()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !status.success() {
        return Err(format!("go build of jaeger failed: {status}"));
    }
    std::fs::rename(&partial, &bin).map_err(|e| e.to_string())?;
    eprintln!("jaeger: built in {:.0?}", started.elapsed());
    if !runs() {
        return Err(format!("{} was built but does not run", bin.display()));
    }
    Ok(bin)
}

fn pid_file() -> PathBuf {
    peer::peer_dir("jaeger").join("jaeger.pid")
}

/// Starts Jaeger on its usual ports, on 127.0.0.1: OTLP at
/// [`JAEGER_OTLP_ADDR`] (gRPC) and 127.0.0.1:4318 (HTTP), the UI and query
/// API at [`JAEGER_QUERY_ADDR`].
pub fn start_jaeger() -> Result<(), String> {
    if peer::read_pid(&pid_file()).is_some() {
        eprintln!("jaeger: already running");
        return Ok(());
    }
    let bin = install_jaeger()?;
    let dir = peer::peer_dir("jaeger");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(module_dir().join("config.yaml"));
    peer::spawn_server(
        "jaeger",
        cmd,
        &dir.join("jaeger.log"),
        &pid_file(),
        JAEGER_QUERY_ADDR,
        Duration::from_secs(30),
    )?;
    eprintln!(
        "jaeger: send spans to OTEL_EXPORTER_OTLP_ENDPOINT=http://{JAEGER_OTLP_ADDR}; traces at http://{JAEGER_QUERY_ADDR}/api/traces?service=streambus"
    );
    Ok(())
}

pub fn stop_jaeger() -> Result<(), String> {
    peer::stop_server("jaeger", &pid_file(), Duration::from_secs(10))
}

pub fn status_jaeger() {
    peer::status("jaeger", JAEGER_QUERY_ADDR);
}
