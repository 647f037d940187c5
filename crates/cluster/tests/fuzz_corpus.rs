//! Replays the fuzz corpus of the topic configuration parser
//! (`fuzz/corpus/topic_config/`) through the same checks as the `cargo fuzz`
//! target, on the stable toolchain: every accepted configuration must
//! round-trip and pass the partition log's own validation, and the inputs
//! marked `!` open a log with it and run its maintenance. See
//! `docs/fuzzing.md`.

#[path = "../../../fuzz/src/topic_config.rs"]
mod topic_config;

#[path = "../../../fuzz/src/corpus.rs"]
#[allow(dead_code)] // shared with the fuzz targets, which use more of it
mod corpus;

#[test]
fn topic_config_corpus() {
    let n = corpus::replay("topic_config", topic_config::check);
    assert!(n >= 5, "only {n} topic_config corpus files");
}
