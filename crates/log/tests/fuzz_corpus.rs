//! Replays the fuzz corpus of log recovery (`fuzz/corpus/log_recovery/`)
//! through the same checks as the `cargo fuzz` target, on the stable
//! toolchain: each file becomes a log directory that `Log::open` recovers,
//! then the log is read, appended to, closed and reopened. See
//! `docs/fuzzing.md`.

#[path = "../../../fuzz/src/log_recovery.rs"]
#[allow(dead_code)] // shared with the fuzz targets, which use more of it
mod log_recovery;

#[path = "../../../fuzz/src/corpus.rs"]
#[allow(dead_code)] // shared with the fuzz targets, which use more of it
mod corpus;

#[test]
fn log_recovery_corpus() {
    let n = corpus::replay("log_recovery", log_recovery::check);
    assert!(n >= 5, "only {n} log_recovery corpus files");
}

/// Reproducers of crashes found and not fixed yet (`known-crash-*` in the
/// corpus). Run with `--ignored`; once the crash is fixed, drop the prefix
/// from the file name so the regular replay covers it.
#[test]
#[ignore = "reproduces open crashes in streambus-log / streambus-record"]
fn log_recovery_known_crashes() {
    corpus::replay_known("log_recovery", log_recovery::check);
}
