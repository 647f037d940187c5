//! Checks for the topic configuration parser
//! (`streambus_cluster::topic_config::TopicConfig::from_map`).
//!
//! Input layout: UTF-8 (lossily) text, one `key=value` per line (split at
//! the first `=`; a line without one is a key with an empty value; a later
//! line for the same key wins). If the text starts with `!`, an accepted
//! configuration is also used to open a partition log (in a scratch
//! directory), append to it and run its maintenance.
//!
//! Properties: `from_map` returns `Ok` or `Err`, never panics; an accepted
//! configuration round-trips through `to_map`, lists every documented key,
//! and its `log_config()` passes `LogConfig::validate` (the controller must
//! never accept what a storage node's log refuses).

use std::collections::HashMap;

use bytes::Bytes;
use streambus_cluster::topic_config::{KEYS, TopicConfig};
use streambus_log::Log;
use streambus_record::{BatchBuilder, Compression, Record};

use crate::corpus::scratch_root;

/// Builds the config map from fuzzer text.
pub fn parse_map(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(|line| match line.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect()
}

/// Runs every check on one fuzzer input.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (open_log, text) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, &text[..]),
    };
    let map = parse_map(text);
    let Ok(config) = TopicConfig::from_map(&map) else {
        return;
    };
    let effective = config.to_map();
    let mut keys: Vec<&str> = effective.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut documented: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    documented.sort_unstable();
    assert_eq!(
        keys, documented,
        "to_map keys differ from the documented keys"
    );
    let again = TopicConfig::from_map(&effective).expect("to_map output is refused by from_map");
    assert_eq!(again, config, "config changed through to_map and from_map");
    for (k, v) in &map {
        // Every given key is in the effective map (values may be normalised).
        assert!(
            effective.contains_key(k.as_str()),
            "accepted key {k:?}={v:?} is dropped"
        );
    }
    let log_config = config.log_config();
    if let Err(e) = log_config.validate() {
        panic!("from_map accepted {map:?}, but the log refuses {log_config:?}: {e}");
    }
    if open_log {
        exercise_log(&config);
    }
}

/// Opens a log with the configuration, appends, and runs retention,
/// age-based rolling and compaction at a few clock values.
fn exercise_log(config: &TopicConfig) {
    let tmp = tempfile::Builder::new()
        .prefix("streambus-fuzz-topic")
        .tempdir_in(scratch_root())
        .expect("create a scratch directory");
    let log = Log::open(tmp.path(), config.log_config()).expect("a validated config opens");
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..3 {
        b.push(&Record {
            key: Some(Bytes::from(format!("k{}", i % 2))),
            value: (i != 1).then(|| Bytes::from_static(b"v")),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000 + i,
        });
    }
    let batch = b.build().to_vec();
    if batch.len() <= config.max_message_bytes as usize {
        log.append(&batch).expect("append");
        log.append(&batch).expect("append");
    }
    // Any clock value, however far off, is handled without an error or a
    // panic, and never moves the log end or puts the start past it.
    let end = log.end_offset();
    for now in [0, 1_700_000_000_000, i64::MAX] {
        log.roll_if_due(now).expect("roll_if_due on a valid log");
        log.apply_retention(now).expect("retention on a valid log");
        log.compact(now).expect("compaction on a valid log");
        assert_eq!(log.end_offset(), end, "maintenance moved the log end");
        assert!(log.log_start_offset() <= end, "log start past the end");
    }
    log.close().expect("close");
}
