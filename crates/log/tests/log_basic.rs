//! Appends, reads, rolling, timestamps, fsync policies and reopening.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use streambus_log::{FsyncPolicy, Log, LogConfig, LogError};
use streambus_record::{BatchHeader, BatchIter, Compression};

#[test]
fn append_assigns_offsets_and_read_returns_the_bytes_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let a = batch("a", 3, 10);
    let b = batch("b", 2, 20);
    let ia = log.append(&a).unwrap();
    let ib = log.append_with_epoch(&b, 7).unwrap();
    assert_eq!((ia.base_offset, ia.last_offset, ia.record_count), (0, 2, 3));
    assert_eq!(
        (ib.base_offset, ib.last_offset, ib.max_timestamp),
        (3, 4, 20)
    );
    assert_eq!(log.end_offset(), 5);
    assert_eq!(log.durable_offset(), 5, "fsync always: durable on return");
    let r = log.read(0, 1 << 20, None).unwrap();
    // The log writes its offsets and epoch into the header it writes, and
    // leaves the caller's batch as it was.
    assert_eq!(BatchHeader::parse(&b).unwrap().base_offset, 0);
    let mut stamped = b.clone();
    streambus_record::set_base_offset(&mut stamped, 3);
    streambus_record::set_partition_leader_epoch(&mut stamped, 7);
    let mut expected = a.clone();
    expected.extend_from_slice(&stamped);
    assert_eq!(
        &r.data[..],
        &expected[..],
        "bytes on disk are the appended bytes"
    );
    assert_eq!((r.next_offset, r.log_start_offset, r.end_offset), (5, 0, 5));
    assert_eq!(
        BatchHeader::parse(&stamped).unwrap().partition_leader_epoch,
        7
    );
    assert_eq!(BatchHeader::parse(&b).unwrap().partition_leader_epoch, -1);
    assert_eq!(
        values(&read_all(&log)),
        vec![
            (0, "a-0".into()),
            (1, "a-1".into()),
            (2, "a-2".into()),
            (3, "b-0".into()),
            (4, "b-1".into())
        ]
    );
}

#[test]
fn read_from_the_middle_of_a_batch_returns_that_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..20 {
        log.append(&batch(&format!("b{i}"), 3, i)).unwrap();
    }
    for offset in [0, 1, 2, 31, 44, 59] {
        let r = log.read(offset, 1, None).unwrap();
        let mut it = BatchIter::new(&r.data);
        let (h, _) = it.next().unwrap().unwrap();
        assert!(
            it.next().is_none(),
            "max_bytes 1 still returns exactly one whole batch"
        );
        assert!(h.base_offset <= offset && offset <= h.last_offset());
        assert_eq!(r.next_offset, h.next_offset());
    }
}

#[test]
fn read_respects_max_bytes_and_the_upper_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let size = batch("x", 2, 1).len();
    for _ in 0..10 {
        log.append(&batch("x", 2, 1)).unwrap();
    }
    let r = log.read(0, 3 * size + 5, None).unwrap();
    assert_eq!(r.data.len(), 3 * size);
    assert_eq!(r.next_offset, 6);
    let r = log.read(0, 1 << 20, Some(7)).unwrap();
    assert_eq!(r.next_offset, 6, "batch 6..=7 is not fully below the bound");
    let r = log.read(6, 1 << 20, Some(7)).unwrap();
    assert!(r.data.is_empty());
    assert_eq!(r.next_offset, 6);
    let r = log.read(6, 1 << 20, Some(8)).unwrap();
    assert_eq!(r.next_offset, 8);
}

#[test]
fn reading_at_the_end_is_empty_and_beyond_or_below_are_distinct_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    let r = log.read(0, 100, None).unwrap();
    assert!(r.data.is_empty());
    log.append(&batch("a", 2, 1)).unwrap();
    let r = log.read(2, 100, None).unwrap();
    assert!(r.data.is_empty());
    assert_eq!(r.next_offset, 2);
    assert!(matches!(
        log.read(3, 100, None),
        Err(LogError::OffsetAboveEnd { offset: 3, end: 2 })
    ));
    assert!(matches!(
        log.read(-1, 100, None),
        Err(LogError::OffsetBelowStart {
            offset: -1,
            log_start: 0
        })
    ));
}

#[test]
fn segments_roll_by_size_with_kafka_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..40 {
        log.append(&batch("v", 2, i)).unwrap();
    }
    assert!(log.segment_count() > 3);
    let files = log_files(dir.path());
    assert_eq!(files.len(), log.segment_count());
    assert_eq!(files[0].file_name().unwrap(), "00000000000000000000.log");
    for f in &files[..files.len() - 1] {
        assert!(std::fs::metadata(f).unwrap().len() <= 1024);
        assert!(f.with_extension("index").exists());
        assert!(f.with_extension("timeindex").exists());
    }
    assert_eq!(read_all(&log).len(), 80);
    assert_eq!(
        log.size_bytes(),
        files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum::<u64>()
    );
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch("small", 1, 1)).unwrap();
    log.append(&batch(&"x".repeat(2000), 1, 1)).unwrap();
    log.append(&batch("small", 1, 1)).unwrap();
    assert_eq!(log.segment_count(), 3);
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: Some(60_000),
        ..small_config()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        !log.roll_if_due(now + 120_000).unwrap(),
        "empty segment does not roll"
    );
    log.append(&batch("a", 1, 1)).unwrap();
    assert!(!log.roll_if_due(now).unwrap());
    assert!(log.roll_if_due(now + 120_000).unwrap());
    assert_eq!(log.segment_count(), 2);
    log.append(&batch("b", 1, 1)).unwrap();
    assert_eq!(
        values(&read_all(&log)),
        vec![(0, "a-0".into()), (1, "b-0".into())]
    );
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..30i64 {
        let recs = [
            record(None, Some("a"), i * 100),
            record(None, Some("b"), i * 100 + 50),
        ];
        log.append(&batch_of(Compression::None, &recs)).unwrap();
    }
    assert!(log.segment_count() > 2);
    assert_eq!(log.offset_for_timestamp(-5).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1).unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(1000).unwrap(), Some(20));
    assert_eq!(log.offset_for_timestamp(1020).unwrap(), Some(21));
    assert_eq!(log.offset_for_timestamp(2950).unwrap(), Some(59));
    assert_eq!(log.offset_for_timestamp(2951).unwrap(), None);
}

#[test]
fn timestamps_going_backwards_between_batches_are_accepted_and_lookup_stays_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch("new", 1, 1000)).unwrap();
    log.append(&batch("old", 1, 500)).unwrap();
    log.append(&batch("newer", 1, 2000)).unwrap();
    // First batch whose max timestamp reaches 600 is the first one.
    assert_eq!(log.offset_for_timestamp(600).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1500).unwrap(), Some(2));
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_all_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(dir.path(), config).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let info = log.append(&batch(&format!("t{t}-{i}"), 4, i)).unwrap();
                    assert!(
                        log.durable_offset() > info.last_offset,
                        "acknowledged only when durable"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.end_offset(), 800);
    assert_eq!(log.durable_offset(), 800);
    let all = read_all(&log);
    assert_eq!(all.len(), 800);
    assert!(all.windows(2).all(|w| w[1].offset == w[0].offset + 1));
}

#[test]
fn never_policy_reports_durability_only_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            fsync: FsyncPolicy::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    log.append(&batch("a", 5, 1)).unwrap();
    assert_eq!((log.end_offset(), log.durable_offset()), (5, 0));
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 5);
}

#[test]
fn interval_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(10)),
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    log.append(&batch("a", 5, 1)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.durable_offset() < 5 {
        assert!(std::time::Instant::now() < deadline, "flusher did not sync");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..30 {
        log.append(&batch(&format!("v{i}"), 2, i)).unwrap();
    }
    let before = read_all(&log);
    let segments = log.segment_count();
    log.close().unwrap();
    assert!(dir.path().join(".clean-shutdown").exists());
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert!(!dir.path().join(".clean-shutdown").exists());
    assert_eq!(read_all(&log), before);
    assert_eq!(log.segment_count(), segments);
    assert_eq!((log.end_offset(), log.durable_offset()), (60, 60));
    log.append(&batch("after", 1, 99)).unwrap();
    assert_eq!(read_all(&log).last().unwrap().offset, 60);
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        read_all(&log).len(),
        61,
        "unflushed data in the page cache survives a process crash"
    );
}

#[test]
fn lz4_batches_are_stored_and_served_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let recs: Vec<_> = (0..100)
        .map(|i| {
            record(
                Some("k"),
                Some(&format!("value {i} {}", "z".repeat(100))),
                i,
            )
        })
        .collect();
    let b = batch_of(Compression::Lz4, &recs);
    let info = log.append(&b).unwrap();
    assert!(info.size < 100 * 100);
    let all = read_all(&log);
    assert_eq!(all.len(), 100);
    assert_eq!(all[99].offset, 99);
}

#[test]
fn log_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Log>();
}
