//! A `streambus dev` child process on ephemeral loopback ports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `binary dev` with data under `data` on ephemeral 127.0.0.1 ports
/// and waits until it prints its gateway address (it does once ready).
pub fn start(binary: &Path, data: &Path) -> Result<(Child, String), String> {
    std::fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let mut child = Command::new(binary)
        .arg("dev")
        .arg("--data-dir")
        .arg(data)
        .args(["--set", "gateway.listen_addr=127.0.0.1:0"])
        .args(["--set", "controller.listen_addr=127.0.0.1:0"])
        .args(["--set", "storage_node.listen_addr=127.0.0.1:0"])
        .args(["--set", "http.listen_addr=127.0.0.1:0"])
        .args(["--set", "log.level=warn"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {} dev: {e}", binary.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.trim().strip_prefix("gateway (public gRPC)")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(gateway) => Ok((child, gateway)),
        Err(_) => {
            stop(&mut child);
            Err("streambus dev did not become ready within 60 s".into())
        }
    }
}

/// Stops the process with SIGTERM (it drains) and waits for it.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Cargo's target directory, where `cargo test --workspace` puts the
/// `streambus` binary (`debug/streambus`) and the examples (`debug/examples/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::peer::root().join("target"))
}

/// Builds the binary, starts `streambus dev` on ephemeral ports with a
/// fresh data directory, runs `f` with its gateway address, and stops it.
pub fn with_dev(f: impl FnOnce(&str) -> Result<(), String>) -> Result<(), String> {
    // The same build as `cargo test --workspace` (same feature unification),
    // which also puts the binary at target/debug/streambus: after the Rust
    // tests this is a no-op instead of a second build.
    crate::run("cargo", &["test", "--workspace", "--locked", "--no-run"])?;
    let target = target_dir();
    let data = target.join(format!("dev-test-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let result = match start(&target.join("debug/streambus"), &data) {
        Ok((mut child, gateway)) => {
            let result = f(&gateway);
            stop(&mut child);
            result
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&data);
    result
}
