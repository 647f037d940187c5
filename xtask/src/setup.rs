//! Installs what the tests need on a bare machine, idempotently: the
//! rustfmt and clippy components, a C toolchain (librdkafka and ring are
//! built from source), Python 3 with `venv` (the Python gRPC test), and a
//! JDK 17 with Maven and Node.js with npm (the client tests,
//! `clients.rs`), and Prometheus with `promtool` (the alert rules' tests
//! and the observability test's scraper; no service is started). Nothing is installed when everything is already
//! there.
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
    // promtool checks and unit-tests the alert rules; the observability
    // test runs a Prometheus of its own.
    if !succeeds("promtool", &["--version"]) || !succeeds("prometheus", &["--version"]) {
        missing.push("prometheus");
    }
    missing
}

/// Debian starts the services of the packages it installs: none may start
/// here (Prometheus's would listen on every interface). `policy-rc.d`
/// answering 101 forbids it; one already there is left as it is.
struct NoServiceStarts {
    added: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn new(sudo: &[&str]) -> Result<NoServiceStarts, String> {
        if std::path::Path::new(POLICY_RC_D).exists() {
            return Ok(NoServiceStarts { added: false });
        }
        let script =
            format!("printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}");
        let mut args: Vec<&str> = sudo.to_vec();
        args.extend(["sh", "-c", &script]);
        run(args[0], &args[1..])?;
        Ok(NoServiceStarts { added: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.added {
            let _ = std::fs::remove_file(POLICY_RC_D).or_else(|_| {
                run("sudo", &["rm", "-f", POLICY_RC_D]).map_err(std::io::Error::other)
            });
        }
    }
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
    let _no_services = NoServiceStarts::new(sudo)?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing);
    apt(&install)
}
