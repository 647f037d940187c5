//! Every kind of bad batch is rejected with a specific error and leaves the
//! log unchanged.

mod common;

use common::*;
use streambus_log::{Log, LogConfig, LogError};
use streambus_record::{RecordError, compute_crc};

fn recrc(b: &mut [u8]) {
    let crc = compute_crc(b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn open() -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch("ok", 1, 1)).unwrap();
    (dir, log)
}

fn assert_unchanged(log: &Log) {
    assert_eq!(log.end_offset(), 1);
    assert_eq!(read_all(log).len(), 1);
}

#[test]
fn oversized_batch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            max_batch_bytes: 200,
            ..small_config()
        },
    )
    .unwrap();
    let b = batch(&"x".repeat(300), 1, 1);
    let size = b.len();
    assert!(
        matches!(log.append(&b), Err(LogError::BatchTooLarge { size: s, max: 200 }) if s == size)
    );
    assert_eq!(log.end_offset(), 0);
}

#[test]
fn batch_with_bad_crc_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1);
    let n = b.len();
    b[n - 3] ^= 1;
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::BadCrc { .. }))
    ));
    assert_unchanged(&log);
}

#[test]
fn truncated_batch_is_rejected() {
    let (_d, log) = open();
    let b = batch("payload", 2, 1);
    for cut in [0, 30, 61, b.len() - 1] {
        let t = b[..cut].to_vec();
        assert!(
            matches!(
                log.append(&t),
                Err(LogError::InvalidBatch(RecordError::Truncated { .. }))
            ),
            "cut {cut}"
        );
    }
    assert_unchanged(&log);
}

#[test]
fn wrong_magic_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1);
    b[16] = 1;
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::BadMagic(1)))
    ));
    assert_unchanged(&log);
}

#[test]
fn length_mismatch_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1);
    b.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::LengthMismatch { .. }))
    ));
    // Two batches in one append are also a length mismatch.
    let mut two = batch("a", 1, 1);
    two.extend_from_slice(&batch("b", 1, 1));
    assert!(matches!(
        log.append(&two),
        Err(LogError::InvalidBatch(RecordError::LengthMismatch { .. }))
    ));
    assert_unchanged(&log);
}

#[test]
fn record_count_mismatch_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1);
    b[57..61].copy_from_slice(&5i32.to_be_bytes());
    recrc(&mut b);
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::RecordCountMismatch {
            declared: 5,
            actual: 2
        }))
    ));
    assert_unchanged(&log);
}

#[test]
fn last_offset_delta_not_matching_the_records_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1);
    b[23..27].copy_from_slice(&10i32.to_be_bytes());
    recrc(&mut b);
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::Malformed(_)))
    ));
    assert_unchanged(&log);
}

#[test]
fn max_timestamp_before_first_timestamp_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1000);
    b[35..43].copy_from_slice(&999i64.to_be_bytes());
    recrc(&mut b);
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::InvalidTimestamps(_)))
    ));
    assert_unchanged(&log);
}

#[test]
fn unsupported_compression_is_rejected() {
    let (_d, log) = open();
    let mut b = batch("payload", 2, 1);
    b[22] = 5; // no codec has id 5
    recrc(&mut b);
    assert!(matches!(
        log.append(&b),
        Err(LogError::InvalidBatch(RecordError::UnsupportedCompression(
            5
        )))
    ));
    assert_unchanged(&log);
}

#[test]
fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 10,
        ..LogConfig::default()
    };
    assert!(matches!(
        Log::open(dir.path(), config),
        Err(LogError::InvalidConfig(_))
    ));
}

#[test]
fn validate_accepts_exactly_the_published_ranges() {
    use streambus_log::{MAX_BATCH_BYTES, MAX_SEGMENT_BYTES, MIN_BATCH_BYTES, MIN_SEGMENT_BYTES};
    let with = |segment_bytes, max_batch_bytes| LogConfig {
        segment_bytes,
        max_batch_bytes,
        ..LogConfig::default()
    };
    assert!(LogConfig::default().validate().is_ok());
    for seg in [MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES] {
        for b in [MIN_BATCH_BYTES, MAX_BATCH_BYTES] {
            assert!(with(seg, b).validate().is_ok(), "{seg} {b}");
        }
    }
    for (seg, b) in [
        (MIN_SEGMENT_BYTES - 1, MIN_BATCH_BYTES),
        (MAX_SEGMENT_BYTES + 1, MIN_BATCH_BYTES),
        (MIN_SEGMENT_BYTES, MIN_BATCH_BYTES - 1),
        (MIN_SEGMENT_BYTES, MAX_BATCH_BYTES + 1),
    ] {
        assert!(
            matches!(with(seg, b).validate(), Err(LogError::InvalidConfig(_))),
            "{seg} {b}"
        );
    }
}

/// The offsets of a batch end below `i64::MAX` (the end offset after it
/// must fit): an append that would pass it is refused, through any way the
/// end offset got that high (a damaged log start checkpoint, `reset_to`),
/// and so are replicated batches whose last offset is `i64::MAX`.
#[test]
fn appends_whose_offsets_would_pass_i64_max_are_refused() {
    // A log start checkpoint at i64::MAX in an empty directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("log-start-offset.checkpoint"),
        format!("0\n{}\n", i64::MAX),
    )
    .unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.end_offset(), i64::MAX);
    let err = log.append(&batch("x", 1, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::OffsetOverflow {
                end: i64::MAX,
                count: 1
            }
        ),
        "{err}"
    );
    let err = log.append_with_epoch(&batch("x", 1, 1), 3).unwrap_err();
    assert!(matches!(err, LogError::OffsetOverflow { .. }), "{err}");
    assert_eq!(log.end_offset(), i64::MAX);
    assert_eq!(log.epoch_entries(), []);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.end_offset(), i64::MAX);

    // reset_to near i64::MAX: the offsets up to i64::MAX - 1 are used.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.reset_to(i64::MAX - 3).unwrap();
    log.append(&batch("a", 2, 1)).unwrap();
    let err = log.append(&batch("b", 2, 1)).unwrap_err();
    assert!(
        matches!(err, LogError::OffsetOverflow { end, count: 2 } if end == i64::MAX - 1),
        "{err}"
    );
    assert_eq!(
        log.append(&batch("c", 1, 1)).unwrap().base_offset,
        i64::MAX - 1
    );
    assert_eq!(log.end_offset(), i64::MAX);
    assert_eq!(read_all(&log).len(), 3);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.end_offset(), i64::MAX);
    assert_eq!(read_all(&log).len(), 3);

    // Replicated batches ending at i64::MAX, followed by another.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.reset_to(i64::MAX - 2).unwrap();
    let mut first = batch("r", 2, 1);
    streambus_record::set_base_offset(&mut first, i64::MAX - 1);
    let mut two = first.clone();
    two.extend_from_slice(&first);
    for batches in [&first, &two] {
        let err = log.append_replicated(batches).unwrap_err();
        assert!(matches!(err, LogError::InvalidBatch(_)), "{err}");
    }
    assert_eq!(log.end_offset(), i64::MAX - 2);
}
