//! The cross-language proof: a Python grpcio test that generates its stubs
//! from `proto/` and runs against a real `streambus dev` process.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run as sh;

/// Creates (once) a virtualenv with the test's pinned requirements.
pub fn venv() -> Result<PathBuf, String> {
    let root = crate::peer::root();
    let venv = root.join("target/python-venv");
    let requirements = root.join("tests/python/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    let venv_str = venv.to_string_lossy().to_string();
    sh("python3", &["-m", "venv", &venv_str])?;
    let pip = venv.join("bin/pip").to_string_lossy().to_string();
    sh(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            &requirements.to_string_lossy(),
        ],
    )?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(venv)
}

/// Runs pytest against the gateway at `gateway`.
pub fn test(venv: &Path, gateway: &str) -> Result<(), String> {
    let python = venv.join("bin/python").to_string_lossy().to_string();
    eprintln!("$ STREAMBUS_GATEWAY={gateway} {python} -m pytest tests/python");
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "tests/python"])
        .current_dir(crate::peer::root())
        .env("STREAMBUS_GATEWAY", gateway)
        // The TLS tests start a `streambus dev` of their own.
        .env(
            "STREAMBUS_BIN",
            crate::devproc::target_dir().join("debug/streambus"),
        )
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("python tests failed: {s}")),
        Err(e) => Err(format!("cannot run pytest: {e}")),
    }
}

/// Sets up the venv, then runs the tests against a fresh `streambus dev`.
pub fn run() -> Result<(), String> {
    let venv = venv()?;
    crate::devproc::with_dev(|gateway| test(&venv, gateway))
}
