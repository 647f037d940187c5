//! Offsets of sealed segments whose index files check out on open (so open
//! does not scan their batches): every read, lookup, compaction and
//! truncation checks the headers of the batches it touches, and a damaged
//! `baseOffset` (not covered by the CRC) is a `Corrupt` error naming file
//! and position, never wrong offsets or data.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use streambus_log::{CleanupPolicy, Log, LogConfig, LogError};
use streambus_record::BatchHeader;

/// 40 batches of 2 records (timestamps 0..40) in a few segments.
fn fill(dir: &Path, config: &LogConfig) {
    let log = Log::open(dir, *config).unwrap();
    for i in 0..40 {
        log.append(&batch(&format!("v{i}"), 2, i as i64)).unwrap();
    }
    log.close().unwrap();
}

/// Positions and headers of the batches of a segment file.
fn batches(path: &Path) -> Vec<(u64, BatchHeader)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let h = BatchHeader::parse(&bytes[pos..]).unwrap();
        out.push((pos as u64, h));
        pos += h.total_size();
    }
    out
}

/// Overwrites the `baseOffset` field of the batch at `pos`.
fn set_base_offset(path: &Path, pos: u64, base_offset: i64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&base_offset.to_be_bytes(), pos).unwrap();
}

/// The `(relative offset, position)` entries of a segment's `.index`.
fn index_entries(log_file: &Path) -> Vec<(u32, u32)> {
    std::fs::read(log_file.with_extension("index"))
        .unwrap()
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[0..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..8].try_into().unwrap()),
            )
        })
        .collect()
}

fn assert_corrupt_at<T: std::fmt::Debug>(r: Result<T, LogError>, file: &PathBuf, at: u64) {
    match r {
        Err(LogError::Corrupt {
            file: f, position, ..
        }) => {
            assert_eq!((&f, position), (file, at), "Corrupt names the damage");
        }
        other => panic!("expected Corrupt at {} {at}, got {other:?}", file.display()),
    }
}

/// A log with sealed segments, the first segment's files and batches.
fn sealed_log(config: &LogConfig) -> (tempfile::TempDir, PathBuf, Vec<(u64, BatchHeader)>) {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config);
    let files = log_files(dir.path());
    assert!(files.len() >= 3, "want sealed segments: {files:?}");
    let first = files[0].clone();
    let b = batches(&first);
    (dir, first, b)
}

#[test]
fn a_damaged_base_offset_in_a_sealed_segment_is_a_corrupt_error_not_wrong_data() {
    let (dir, seg, _) = sealed_log(&small_config());
    // The first batch comes before any index entry, so open does not see it.
    set_base_offset(&seg, 0, 1_970_324_836_974_592);
    let log = Log::open(dir.path(), small_config()).unwrap();
    let end = log.end_offset();
    assert_eq!(end, 80);
    assert_corrupt_at(log.read(0, 4096, None), &seg, 0);
    assert_corrupt_at(log.read(1, 1, None), &seg, 0);
    // The lookup used to return the damaged offset, past the log end.
    assert_corrupt_at(log.offset_for_timestamp(0), &seg, 0);
    assert_corrupt_at(log.offset_for_timestamp(i64::MIN), &seg, 0);
    // Batches after the damage that the index leads to directly still read.
    let r = log.read(end - 2, 4096, None).unwrap();
    assert_eq!(r.next_offset, end);
}

#[test]
fn a_base_offset_below_the_segment_base_is_a_corrupt_error() {
    let (dir, _, _) = sealed_log(&small_config());
    let files = log_files(dir.path());
    let seg = files[1].clone();
    let seg_base = batches(&seg)[0].1.base_offset;
    assert!(seg_base > 0);
    set_base_offset(&seg, 0, 0);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_corrupt_at(log.read(seg_base, 4096, None), &seg, 0);
}

#[test]
fn batches_going_backwards_in_a_sealed_segment_are_a_corrupt_error() {
    let (dir, seg, b) = sealed_log(&small_config());
    let second = b[1].0;
    // The second batch claims the first batch's offsets.
    set_base_offset(&seg, second, 0);
    let log = Log::open(dir.path(), small_config()).unwrap();
    // Within one read, and across reads.
    assert_corrupt_at(log.read(0, 4096, None), &seg, second);
    let r = log.read(0, 1, None).unwrap();
    assert_eq!(r.next_offset, 2);
    assert_corrupt_at(log.read(2, 1, None), &seg, second);
}

#[test]
fn a_batch_other_than_the_offset_its_index_entry_promises_is_a_corrupt_error() {
    let (dir, seg, b) = sealed_log(&small_config());
    let entries = index_entries(&seg);
    // Not the last entry: open checks that one.
    assert!(entries.len() >= 2, "want two index entries: {entries:?}");
    let (rel, pos) = entries[0];
    let promised = b[0].1.base_offset + i64::from(rel);
    // Still above the batch before it and inside the segment.
    set_base_offset(&seg, u64::from(pos), promised + 1);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_corrupt_at(log.read(promised, 4096, None), &seg, u64::from(pos));
}

#[test]
fn truncating_into_a_damaged_sealed_segment_is_a_corrupt_error_and_changes_nothing() {
    let (dir, seg, _) = sealed_log(&small_config());
    set_base_offset(&seg, 0, 1_000_000);
    let log = Log::open(dir.path(), small_config()).unwrap();
    let end = log.end_offset();
    assert_corrupt_at(log.truncate_to(1), &seg, 0);
    assert_eq!(log.end_offset(), end);
    assert!(log.failure().is_none(), "nothing was changed on disk");
    assert!(log.read(end - 2, 4096, None).is_ok());
}

#[test]
fn compaction_of_a_damaged_sealed_segment_is_a_corrupt_error() {
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        ..small_config()
    };
    let (dir, seg, b) = sealed_log(&config);
    set_base_offset(&seg, b[1].0, 0);
    let log = Log::open(dir.path(), config).unwrap();
    assert_corrupt_at(log.compact(i64::MAX), &seg, b[1].0);
}

#[test]
fn undamaged_sealed_segments_read_the_same_through_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &small_config());
    let log = Log::open(dir.path(), small_config()).unwrap();
    let records = read_all(&log);
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..80).collect::<Vec<_>>()
    );
    for ts in 0..40 {
        assert_eq!(log.offset_for_timestamp(ts).unwrap(), Some(2 * ts));
    }
    for offset in 0..80 {
        let r = log.read(offset, 1, None).unwrap();
        assert!(r.next_offset > offset);
    }
}
