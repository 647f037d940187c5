//! Retention, truncation and compaction.

mod common;

use common::*;
use streambus_log::{CleanupPolicy, Log, LogConfig, LogError};
use streambus_record::Compression;

fn retention_config(ms: Option<i64>, bytes: Option<u64>) -> LogConfig {
    LogConfig {
        retention_ms: ms,
        retention_bytes: bytes,
        ..small_config()
    }
}

#[test]
fn retention_by_time_deletes_old_sealed_segments_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = retention_config(Some(1000), None);
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..40 {
        log.append(&batch("v", 2, i * 100)).unwrap();
    }
    let segments = log.segment_count();
    let out = log.apply_retention(3000).unwrap();
    assert!(out.segments_deleted > 0);
    assert_eq!(log.segment_count(), segments - out.segments_deleted);
    let start = log.log_start_offset();
    assert_eq!(out.log_start_offset, start);
    let first = read_all(&log);
    assert_eq!(first[0].offset, start);
    assert!(
        first[0].timestamp_ms >= 1000 - 100 * 8,
        "only old data deleted"
    );
    assert!(matches!(
        log.read(0, 100, None),
        Err(LogError::OffsetBelowStart { .. })
    ));
    // Everything newer than the cutoff (2000) is still there.
    assert!(first.iter().any(|r| r.timestamp_ms == 2000));
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(
        log.log_start_offset(),
        start,
        "log start offset is checkpointed"
    );
    assert_eq!(read_all(&log), first);
}

#[test]
fn retention_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), retention_config(Some(1), Some(0))).unwrap();
    for i in 0..40 {
        log.append(&batch("v", 2, i)).unwrap();
    }
    log.apply_retention(i64::MAX / 2).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.end_offset(), 80);
    assert!(!read_all(&log).is_empty());
}

#[test]
fn retention_by_size_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), retention_config(None, Some(3000))).unwrap();
    for i in 0..100 {
        log.append(&batch("v", 2, i)).unwrap();
    }
    let before = log.size_bytes();
    let out = log.apply_retention(0).unwrap();
    assert!(out.segments_deleted > 0);
    assert_eq!(log.size_bytes(), before - out.bytes_deleted);
    assert!(log.size_bytes() >= 3000);
    assert!(log.size_bytes() < 3000 + 1024);
}

#[test]
fn retention_does_nothing_under_the_compact_policy() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        ..retention_config(Some(1), None)
    };
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..40 {
        log.append(&batch("v", 2, i)).unwrap();
    }
    assert_eq!(log.apply_retention(1_000_000).unwrap().segments_deleted, 0);
}

#[test]
fn truncate_inside_a_batch_drops_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..5 {
        log.append(&batch(&format!("b{i}"), 3, i)).unwrap();
    }
    log.truncate_to(10).unwrap();
    assert_eq!(log.end_offset(), 9);
    assert_eq!(log.durable_offset(), 9);
    log.append(&batch("new", 1, 9)).unwrap();
    let v = values(&read_all(&log));
    assert_eq!(v.len(), 10);
    assert_eq!(v[9], (9, "new-0".to_string()));
}

#[test]
fn truncate_into_sealed_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..40 {
        log.append(&batch(&format!("b{i}"), 2, i)).unwrap();
    }
    let before = values(&read_all(&log));
    assert!(log.segment_count() >= 3);
    log.truncate_to(13).unwrap();
    assert_eq!(log.end_offset(), 12);
    assert_eq!(values(&read_all(&log)), before[..12]);
    log.append(&batch("again", 2, 100)).unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    let v = values(&read_all(&log));
    assert_eq!(v[..12], before[..12]);
    assert_eq!(v[12], (12, "again-0".to_string()));
    assert_eq!(log.end_offset(), 14);
}

#[test]
fn truncate_out_of_range_is_an_error_and_to_the_end_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch("a", 2, 1)).unwrap();
    assert!(matches!(
        log.truncate_to(3),
        Err(LogError::OffsetAboveEnd { .. })
    ));
    assert!(matches!(
        log.truncate_to(-1),
        Err(LogError::OffsetBelowStart { .. })
    ));
    log.truncate_to(2).unwrap();
    assert_eq!(log.end_offset(), 2);
    log.truncate_to(0).unwrap();
    assert_eq!(log.end_offset(), 0);
    assert!(read_all(&log).is_empty());
}

fn compact_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        tombstone_retention_ms: 1000,
        ..small_config()
    }
}

#[test]
fn compaction_keeps_the_latest_record_per_key_with_offsets_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), compact_config()).unwrap();
    // 30 batches of 3 records over keys k0..k4.
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..30i64 {
        let recs: Vec<_> = (0..3)
            .map(|j| {
                let key = format!("k{}", (i * 3 + j) % 5);
                record(Some(&key), Some(&format!("v{}", i * 3 + j)), i)
            })
            .collect();
        let compression = if i % 2 == 0 {
            Compression::None
        } else {
            Compression::Lz4
        };
        log.append(&batch_of(compression, &recs)).unwrap();
    }
    let all = read_all(&log);
    for r in &all {
        expected.insert(r.key.clone().unwrap(), r.offset);
    }
    let end = log.end_offset();
    let out = log.compact(10).unwrap();
    assert!(out.records_removed > 0 && out.bytes_after < out.bytes_before);
    assert_eq!(log.end_offset(), end, "end offset unchanged");
    let after = read_all(&log);
    // Every record left is one that existed, at its original offset.
    for r in &after {
        assert!(all.iter().any(|a| a == r));
    }
    // Every key's latest record is still there.
    for (key, offset) in &expected {
        assert!(
            after
                .iter()
                .any(|r| r.key.as_ref() == Some(key) && r.offset == *offset)
        );
    }
    // Reading at a compacted-away offset returns the next batch.
    let r = log.read(1, 4096, None).unwrap();
    assert!(r.next_offset > 1);
    // Survives reopen and appends continue at the right offset.
    drop(log);
    let log = Log::open(dir.path(), compact_config()).unwrap();
    assert_eq!(read_all(&log), after);
    assert_eq!(log.append(&batch("n", 1, 99)).unwrap().base_offset, end);
}

#[test]
fn tombstones_are_removed_only_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), compact_config()).unwrap();
    log.append(&batch_of(
        Compression::None,
        &[record(Some("a"), Some("1"), 100)],
    ))
    .unwrap();
    log.append(&batch_of(
        Compression::None,
        &[record(Some("a"), None, 200)],
    ))
    .unwrap();
    for i in 0..30 {
        log.append(&batch_of(
            Compression::None,
            &[record(Some("filler"), Some(&"f".repeat(50)), i)],
        ))
        .unwrap();
    }
    log.compact(500).unwrap();
    let v = read_all(&log);
    assert!(!v.iter().any(|r| r.offset == 0), "superseded value removed");
    assert!(
        v.iter().any(|r| r.offset == 1 && r.value.is_none()),
        "tombstone kept within grace"
    );
    log.compact(1200).unwrap();
    assert!(
        !read_all(&log)
            .iter()
            .any(|r| r.key.as_deref() == Some(&b"a"[..])),
        "tombstone removed after grace"
    );
}

#[test]
fn truncate_into_a_compacted_segment_keeps_the_log_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), compact_config()).unwrap();
    for i in 0..40 {
        log.append(&batch_of(
            Compression::None,
            &[record(Some(&format!("k{}", i % 3)), Some("v"), i)],
        ))
        .unwrap();
    }
    log.compact(0).unwrap();
    log.truncate_to(20).unwrap();
    assert_eq!(log.end_offset(), 20);
    log.append(&batch("x", 1, 1)).unwrap();
    drop(log);
    let log = Log::open(dir.path(), compact_config()).unwrap();
    let v = read_all(&log);
    assert_eq!(v.last().unwrap().offset, 20);
    assert!(v.windows(2).all(|w| w[0].offset < w[1].offset));
}

#[test]
fn lowered_retention_on_an_open_log_applies_at_the_next_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), retention_config(None, None)).unwrap();
    for i in 0..40 {
        log.append(&batch("v", 2, i * 100)).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments > 2);
    assert_eq!(
        log.apply_retention(i64::MAX / 2).unwrap().segments_deleted,
        0
    );

    log.update_config(retention_config(None, Some(0))).unwrap();
    assert_eq!(log.config().retention_bytes, Some(0));
    let out = log.apply_retention(0).unwrap();
    assert_eq!(out.segments_deleted, segments - 1, "every sealed segment");
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_start_offset(), out.log_start_offset);
    assert!(log.log_start_offset() > 0);
}

#[test]
fn a_smaller_segment_size_on_an_open_log_rolls_at_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let big = LogConfig {
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let log = Log::open(dir.path(), big).unwrap();
    for i in 0..10 {
        log.append(&batch("v", 2, i)).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    log.update_config(LogConfig {
        segment_bytes: 100,
        ..big
    })
    .unwrap();
    log.append(&batch("v", 2, 10)).unwrap();
    assert_eq!(log.segment_count(), 2, "the next append rolled");
    let values = values(&read_all(&log));
    assert_eq!(values.len(), 22, "nothing lost across the change");
}

#[test]
fn an_open_log_refuses_a_new_fsync_policy_or_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config();
    let log = Log::open(dir.path(), config).unwrap();
    let err = log
        .update_config(LogConfig {
            fsync: streambus_log::FsyncPolicy::Always,
            ..config
        })
        .unwrap_err();
    assert!(
        matches!(err, LogError::InvalidConfig(ref m) if m.contains("fsync")),
        "{err}"
    );
    let err = log
        .update_config(LogConfig {
            segment_bytes: 1,
            ..config
        })
        .unwrap_err();
    assert!(matches!(err, LogError::InvalidConfig(_)), "{err}");
    assert_eq!(log.config(), config, "a refused change changes nothing");
}
