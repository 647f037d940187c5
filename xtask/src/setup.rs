//! Installs what the tests need on a bare machine, idempotently: the
//! rustfmt and clippy components, a C toolchain (librdkafka and ring are
//! built from source), Python 3 with `venv` (the Python gRPC test), and a
//! JDK 17 with Maven and Node.js with npm (the client tests,
//! `clients.rs`). Nothing is installed when everything is already there.
//! Go is not: Debian's is older than the Go module and the Kubernetes
//! build need (`clients.rs` and `k8s.rs` say which version).

use std::process::{Command, Stdio};

use crate::run;

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian packages whose commands are missing.
fn missing_debian_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !succeeds("cc", &["--version"]) || !succeeds("make", &["--version"]) {
        missing.push("build-essential");
    }
    if !succeeds("python3", &["--version"]) {
        missing.push("python3");
    }
    if !succeeds("python3", &["-c", "import venv, ensurepip"]) {
        missing.push("python3-venv");
    }
    if crate::clients::major_version("javac", &["-version"])
        .is_none_or(|v| v < crate::clients::JAVA_MAJOR)
    {
        missing.push("openjdk-17-jdk-headless");
    }
    if !succeeds("mvn", &["--version"]) {
        missing.push("maven");
    }
    if !succeeds("node", &["--version"]) {
        missing.push("nodejs");
    }
    if !succeeds("npm", &["--version"]) {
        missing.push("npm");
    }
    missing
}

/// Makes sure every tool the test suite uses is present.
pub fn run_setup() -> Result<(), String> {
    for component in ["rustfmt", "clippy"] {
        let present = match component {
            "rustfmt" => succeeds("cargo", &["fmt", "--version"]),
            _ => succeeds("cargo", &["clippy", "--version"]),
        };
        if !present {
            run("rustup", &["component", "add", component])?;
        }
    }
    let missing = missing_debian_packages();
    if missing.is_empty() {
        return Ok(());
    }
    if !succeeds("apt-get", &["--version"]) {
        return Err(format!(
            "missing tools; install these packages (or your system's equivalent): {}",
            missing.join(" ")
        ));
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut full: Vec<&str> = sudo.to_vec();
        full.push("apt-get");
        full.extend_from_slice(args);
        run(full[0], &full[1..])
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing);
    apt(&install)
}
