//! Replays the fuzz corpora of the record decoder and the varint reader
//! (`fuzz/corpus/record_batch/`, `fuzz/corpus/varint/`) through the same
//! checks as the `cargo fuzz` targets, on the stable toolchain. See
//! `docs/fuzzing.md`.

#[path = "../../../fuzz/src/record_batch.rs"]
#[allow(dead_code)] // shared with the fuzz targets, which use more of it
mod record_batch;
#[path = "../../../fuzz/src/varint.rs"]
#[allow(dead_code)] // shared with the fuzz targets, which use more of it
mod varint;

#[path = "../../../fuzz/src/corpus.rs"]
#[allow(dead_code)] // shared with the fuzz targets, which use more of it
mod corpus;

#[test]
fn record_batch_corpus() {
    let n = corpus::replay("record_batch", record_batch::check);
    assert!(n >= 10, "only {n} record_batch corpus files");
}

#[test]
fn varint_corpus() {
    let n = corpus::replay("varint", varint::check);
    assert!(n >= 5, "only {n} varint corpus files");
}

/// Reproducers of crashes found and not fixed yet (`known-crash-*` in the
/// corpus). Run with `--ignored`; once the crash is fixed, drop the prefix
/// from the file name so the regular replay covers it.
#[test]
#[ignore = "reproduces open crashes in streambus-record"]
fn record_batch_known_crashes() {
    corpus::replay_known("record_batch", record_batch::check);
}
