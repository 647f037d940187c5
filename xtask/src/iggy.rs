//! `cargo xtask peer iggy ...`: Apache Iggy, the Rust streaming server
//! StreamBus's CPU per message is compared with, built from a checkout of
//! its public repository (no registry here serves its server or its
//! benchmark tool) and measured with its own `iggy-bench`.
//!
//! - `install --src DIR`: builds `iggy-server` and `iggy-bench` from the
//!   checkout with Iggy's own release profile, into
//!   `<cache>/iggy/<commit>/` (keyed by the checkout's commit; skipped when
//!   there), after Debian's `libhwloc-dev` and `libudev-dev`.
//! - `start` / `stop` / `status`: the server with its own
//!   `core/server/config.toml` (every listener on 127.0.0.1; TCP on
//!   :8090), data under `target/peers/iggy/data`, root user `iggy`/`iggy`.
//! - `bench [--durability fsync|page-cache] [--total BYTES]`: one producer
//!   over 16 partitions, 1 KiB messages in batches of 250, and the CPU
//!   seconds per million messages of `iggy-bench` and of the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::peer::{self, Durability};

/// Iggy's client TCP listener (its config's default).
const ADDR: &str = "127.0.0.1:8090";
/// Message size and batch of the comparison (StreamBus's max-rate preset
/// sends 1 KiB records in batches of up to 256 KiB).
const MESSAGE_BYTES: u64 = 1024;
const BATCH: u64 = 250;

/// The install the last `install` made: the directory holding the
/// binaries and the server's config.
fn current_file() -> PathBuf {
    peer::peer_dir("iggy").join("installed")
}

fn installed() -> Result<PathBuf, String> {
    let dir = std::fs::read_to_string(current_file())
        .map(|s| PathBuf::from(s.trim()))
        .map_err(|_| "Iggy is not installed: run `cargo xtask peer iggy install --src DIR`")?;
    if dir.join("iggy-server").exists() && dir.join("iggy-bench").exists() {
        Ok(dir)
    } else {
        Err(format!(
            "{} lacks iggy-server or iggy-bench: run `cargo xtask peer iggy install --src DIR` again",
            dir.display()
        ))
    }
}

/// Builds Iggy from `src` (a checkout of github.com/apache/iggy).
pub fn install(src: &Path) -> Result<PathBuf, String> {
    if !src.join("core/server/config.toml").exists() {
        return Err(format!(
            "{} is not an Iggy checkout (no core/server/config.toml)",
            src.display()
        ));
    }
    let commit = Command::new("git")
        .args([
            "-C",
            &src.to_string_lossy(),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| {
            src.file_name()
                .map_or("unknown".into(), |n| n.to_string_lossy().into_owned())
        });
    let dir = crate::cache_root()?.join("iggy").join(&commit);
    std::fs::create_dir_all(peer::peer_dir("iggy")).map_err(|e| e.to_string())?;
    if !(dir.join("iggy-server").exists() && dir.join("iggy-bench").exists()) {
        let missing: Vec<&str> = ["libhwloc-dev", "libudev-dev"]
            .into_iter()
            .filter(|p| {
                !Command::new("dpkg")
                    .args(["-s", p])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .collect();
        if !missing.is_empty() {
            peer::apt_install(&missing)?;
        }
        let target = crate::cache_root()?.join("iggy").join("target");
        // Iggy pins a newer toolchain than this machine has; it builds with
        // the one running this command (its `rust-version` is 1.95).
        let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
        let mut cmd = Command::new("cargo");
        cmd.current_dir(src)
            .env("RUSTUP_TOOLCHAIN", &toolchain)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "server",
                "-p",
                "iggy-bench",
            ]);
        crate::run_shown(
            &mut cmd,
            &format!(
                "cargo build --release --locked -p server -p iggy-bench (in {}, toolchain {toolchain})",
                src.display()
            ),
        )?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (from, to) in [
            (target.join("release/iggy-server"), dir.join("iggy-server")),
            (target.join("release/iggy-bench"), dir.join("iggy-bench")),
            (src.join("core/server/config.toml"), dir.join("config.toml")),
        ] {
            std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
        }
    }
    std::fs::write(current_file(), dir.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    eprintln!("iggy: {commit} installed in {}", dir.display());
    Ok(dir)
}

/// Starts the server (fresh data) unless it runs.
pub fn start() -> Result<(), String> {
    let dir = installed()?;
    let peer_dir = peer::peer_dir("iggy");
    let pid_file = peer_dir.join("iggy.pid");
    if peer::read_pid(&pid_file).is_some() && peer::listening(ADDR) {
        eprintln!("iggy: already running at {ADDR}");
        return Ok(());
    }
    if peer::listening(ADDR) {
        return Err(format!("something else listens at {ADDR}"));
    }
    let data = peer_dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(dir.join("iggy-server"));
    cmd.current_dir(&data)
        .env("IGGY_CONFIG_PATH", dir.join("config.toml"))
        .env("IGGY_ROOT_USERNAME", "iggy")
        .env("IGGY_ROOT_PASSWORD", "iggy");
    peer::spawn_server(
        "iggy",
        cmd,
        &peer_dir.join("iggy.log"),
        &pid_file,
        ADDR,
        Duration::from_secs(60),
    )
}

pub fn stop() -> Result<(), String> {
    peer::stop_server(
        "iggy",
        &peer::peer_dir("iggy").join("iggy.pid"),
        Duration::from_secs(10),
    )
}

pub fn status() {
    peer::status("iggy", ADDR);
}

/// User + system CPU seconds of a process so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("unreadable /proc stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after ")".
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err("unreadable /proc stat".into());
    };
    Ok((user + system) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs `iggy-bench` against the running server: one producer over 16
/// partitions, `total` bytes of 1 KiB messages in batches of 250, no
/// warm-up (so the CPU of the whole run divides by every message sent).
pub fn bench(durability: Durability, total: &str) -> Result<(), String> {
    let dir = installed()?;
    let server =
        peer::server_pid("iggy").ok_or("iggy is not running: `cargo xtask peer iggy start`")?;
    let bytes = parse_bytes(total)?;
    let mut args = vec![
        "-f".to_string(),
        "client_cpu %U %S".to_string(),
        dir.join("iggy-bench").to_string_lossy().into_owned(),
        "-m".into(),
        MESSAGE_BYTES.to_string(),
        "-P".into(),
        BATCH.to_string(),
        "-T".into(),
        total.to_string(),
        "-w".into(),
        "0s".into(),
    ];
    if durability == Durability::Fsync {
        args.push("--enforce-fsync".into());
    }
    args.extend(
        ["bp", "--partitions", "16", "--producers", "1", "tcp"]
            .iter()
            .map(|s| s.to_string()),
    );
    let before = cpu_seconds(server)?;
    eprintln!("$ /usr/bin/time {}", args.join(" "));
    let out = Command::new("/usr/bin/time")
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run /usr/bin/time (Debian's `time`): {e}"))?;
    let after = cpu_seconds(server)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("iggy-bench failed ({}):\n{text}", out.status));
    }
    let results = text
        .lines()
        .find(|l| l.contains("Producers Results"))
        .ok_or_else(|| format!("no results in iggy-bench's output:\n{text}"))?;
    let client: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("client_cpu "))
        .map(|r| {
            r.split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .ok_or("no client CPU in /usr/bin/time's output")?;
    // The producer sends whole batches until `total` bytes are sent.
    let messages = bytes.div_ceil(MESSAGE_BYTES * BATCH) * BATCH;
    let per_million = |s: f64| s / messages as f64 * 1e6;
    println!("{}", results.trim());
    println!(
        "iggy, {}: {messages} messages; CPU s per million messages: client {:.2}, server {:.2}, together {:.2}",
        durability.as_str(),
        per_million(client),
        per_million(after - before),
        per_million(client + after - before)
    );
    Ok(())
}

/// `3GB`, `500MB`, `1GiB`, or a number of bytes, as `iggy-bench -T` reads
/// them (decimal units; binary with `i`).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--total {s:?}: a size like 3GB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("--total {s:?}: unknown unit {other:?}")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_as_iggy_bench_reads_them() {
        assert_eq!(parse_bytes("3GB").unwrap(), 3_000_000_000);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("3XB").is_err());
        assert!(parse_bytes("GB").is_err());
    }
}
