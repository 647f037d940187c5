//! Replaying a target's corpus (`fuzz/corpus/<target>/`) through its
//! checks, for the stable tests. Files named `known-crash-*` reproduce
//! crashes that are not fixed yet: [`replay`] leaves them to
//! [`replay_known`].
//!
//! This file is shared, via `#[path]`, with the stable replay tests; it
//! uses only `std`.

use std::path::{Path, PathBuf};

/// Whether inputs that hit known, still open crashes (the
/// `known-crash-*` files of the corpus) are skipped, so fuzzing can go past
/// them: set `STREAMBUS_FUZZ_SKIP_KNOWN=1`. Off by default, so the target
/// reproduces them.
pub fn skip_known() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("STREAMBUS_FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
}

/// Prefix of the corpus files that reproduce open crashes.
pub const KNOWN_CRASH: &str = "known-crash-";

/// `fuzz/corpus/`, found from the crate being built (the fuzz crate or a
/// crate under `crates/`).
fn corpus_root() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    loop {
        let corpus = dir.join("fuzz/corpus");
        if corpus.is_dir() {
            return corpus;
        }
        dir = dir.parent().expect("no fuzz/corpus above the crate");
    }
}

fn files(target: &str) -> Vec<(String, PathBuf)> {
    let dir = corpus_root().join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

fn run(name: &str, path: &Path, check: fn(&[u8])) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    eprintln!("replaying {name} ({} bytes)", data.len());
    check(&data);
}

/// Runs every corpus file of `target` except the known crashes; returns
/// how many ran.
pub fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut n = 0;
    for (name, path) in files(target) {
        if !name.starts_with(KNOWN_CRASH) {
            run(&name, &path, check);
            n += 1;
        }
    }
    n
}

/// Runs the known-crash files of `target` (each is expected to fail until
/// its bug is fixed).
pub fn replay_known(target: &str, check: fn(&[u8])) -> usize {
    let mut n = 0;
    for (name, path) in files(target) {
        if name.starts_with(KNOWN_CRASH) {
            run(&name, &path, check);
            n += 1;
        }
    }
    n
}

/// Where scratch log directories go: tmpfs if there is one (fsync there is
/// free), else the system temporary directory.
pub fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
