//! The cross-language proof: a Python grpcio test that generates its stubs
//! from `proto/` and runs against a real `streambus dev` process.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run as sh;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Creates (once) a virtualenv with the test's pinned requirements.
fn venv() -> Result<PathBuf, String> {
    let root = root();
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

/// Builds the binary, starts `streambus dev` on ephemeral ports, runs
/// pytest against it, and stops it.
pub fn run() -> Result<(), String> {
    let venv = venv()?;
    // The same build as `cargo test --workspace` (same feature unification),
    // which also puts the binary at target/debug/streambus: after the Rust
    // tests this is a no-op instead of a second build.
    sh("cargo", &["test", "--workspace", "--locked", "--no-run"])?;
    let root = root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let data = tempdir(&target)?;
    let started = crate::devproc::start(&target.join("debug/streambus"), &data);
    let result = match started {
        Ok((mut child, gateway)) => {
            let python = venv.join("bin/python").to_string_lossy().to_string();
            eprintln!("$ STREAMBUS_GATEWAY={gateway} {python} -m pytest tests/python");
            let status = Command::new(&python)
                .args(["-m", "pytest", "-q", "tests/python"])
                .current_dir(&root)
                .env("STREAMBUS_GATEWAY", &gateway)
                .status();
            crate::devproc::stop(&mut child);
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("python tests failed: {s}")),
                Err(e) => Err(format!("cannot run pytest: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn tempdir(target: &Path) -> Result<PathBuf, String> {
    let dir = target.join(format!("python-test-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
