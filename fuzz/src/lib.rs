//! Shared check logic for the StreamBus fuzz targets.
//!
//! Each module holds the checks of one target (`fuzz_targets/*.rs` call its
//! `check`). The modules are also compiled into the stable replay tests
//! `crates/record/tests/fuzz_corpus.rs`, `crates/log/tests/fuzz_corpus.rs`
//! and `crates/cluster/tests/fuzz_corpus.rs` (through `#[path]`), which run every
//! file of `fuzz/corpus/` through the same checks without cargo-fuzz. See
//! `docs/fuzzing.md`.

pub mod corpus;
pub mod log_recovery;
pub mod record_batch;
pub mod topic_config;
pub mod varint;

#[cfg(test)]
mod tests {
    /// The topic configuration corpus, replayed on the stable toolchain
    /// (`cargo test --manifest-path fuzz/Cargo.toml`).
    #[test]
    fn topic_config_corpus() {
        let n = crate::corpus::replay("topic_config", crate::topic_config::check);
        assert!(n >= 5, "only {n} topic_config corpus files");
    }
}
