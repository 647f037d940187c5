//! Recovery on open: torn tails, corrupt tails, lost and damaged indexes,
//! corruption inside sealed segments.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use streambus_log::{Log, LogError};

fn fill(dir: &Path, batches: usize) -> Vec<(i64, String)> {
    let log = Log::open(dir, small_config()).unwrap();
    for i in 0..batches {
        log.append(&batch(&format!("v{i}"), 2, i as i64)).unwrap();
    }
    log.flush().unwrap();
    values(&read_all(&log))
}

fn flip(path: &Path, pos: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], pos).unwrap();
}

fn active(dir: &Path) -> std::path::PathBuf {
    log_files(dir).pop().unwrap()
}

#[test]
fn torn_tail_is_truncated_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 25);
    let path = active(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 7).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    let after = values(&read_all(&log));
    assert_eq!(
        after[..],
        before[..before.len() - 2],
        "only the torn batch is lost"
    );
    assert_eq!(log.end_offset(), before.len() as i64 - 2);
    log.append(&batch("next", 1, 1)).unwrap();
    assert_eq!(
        read_all(&log).last().unwrap().offset,
        before.len() as i64 - 2
    );
}

#[test]
fn garbage_appended_after_the_last_batch_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 25);
    let path = active(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xAB; 100], len).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(values(&read_all(&log)), before);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn corrupt_batch_in_the_active_segment_drops_it_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 25);
    let path = active(dir.path());
    // Flip a payload byte of the first batch of the active segment.
    flip(&path, 70);
    let log = Log::open(dir.path(), small_config()).unwrap();
    let after = values(&read_all(&log));
    assert!(after.len() < before.len());
    assert_eq!(after[..], before[..after.len()]);
}

#[test]
fn flipped_base_offset_in_the_active_segment_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 25);
    let path = active(dir.path());
    // baseOffset is not covered by the CRC; recovery checks contiguity.
    flip(&path, 7);
    let log = Log::open(dir.path(), small_config()).unwrap();
    let after = values(&read_all(&log));
    assert_eq!(after[..], before[..after.len()]);
}

#[test]
fn missing_and_corrupt_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 40);
    let files = log_files(dir.path());
    assert!(files.len() >= 3);
    std::fs::remove_file(files[0].with_extension("index")).unwrap();
    std::fs::remove_file(files[0].with_extension("timeindex")).unwrap();
    std::fs::write(files[1].with_extension("index"), [1, 2, 3]).unwrap();
    std::fs::write(files[1].with_extension("timeindex"), [0xff; 24]).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(values(&read_all(&log)), before);
    assert!(files[0].with_extension("index").exists());
    assert_eq!(log.offset_for_timestamp(20).unwrap(), Some(40));
    assert_eq!(
        std::fs::metadata(files[1].with_extension("index"))
            .unwrap()
            .len()
            % 8,
        0
    );
}

#[test]
fn index_pointing_at_the_wrong_batch_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 40);
    let files = log_files(dir.path());
    let idx = files[0].with_extension("index");
    let mut bytes = std::fs::read(&idx).unwrap();
    assert!(!bytes.is_empty());
    let n = bytes.len();
    bytes[n - 5] ^= 1; // relative offset of the last entry
    std::fs::write(&idx, bytes).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(values(&read_all(&log)), before);
}

#[test]
fn corruption_inside_a_sealed_segment_is_an_error_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 40);
    let files = log_files(dir.path());
    // Cut the first sealed segment short: its tail no longer ends at a batch.
    let len = std::fs::metadata(&files[0]).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    match Log::open(dir.path(), small_config()) {
        Err(LogError::Corrupt {
            file,
            position,
            reason,
        }) => {
            assert_eq!(file, files[0]);
            assert!(position < len, "position {position}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn bad_crc_inside_a_sealed_segment_is_found_when_its_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 40);
    let files = log_files(dir.path());
    flip(&files[0], 70);
    std::fs::remove_file(files[0].with_extension("index")).unwrap();
    let err = Log::open(dir.path(), small_config()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LogError::Corrupt { position: 0, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("00000000000000000000.log") && msg.contains("CRC"),
        "{msg}"
    );
}

#[test]
fn damaged_header_in_a_sealed_segment_is_an_error_on_read() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 40);
    let files = log_files(dir.path());
    // Break the magic byte of the first batch (before any index entry).
    flip(&files[0], 16);
    // Reopen works (only index-covered tails are checked on open)...
    let log = Log::open(dir.path(), small_config()).unwrap();
    // ...but reading it reports the damage instead of returning garbage.
    match log.read(0, 4096, None) {
        Err(LogError::Corrupt { file, position, .. }) => {
            assert_eq!(file, files[0]);
            assert_eq!(position, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn empty_active_segment_left_by_a_crash_during_roll_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 10);
    let log = Log::open(dir.path(), small_config()).unwrap();
    let end = log.end_offset();
    drop(log);
    std::fs::File::create(dir.path().join(format!("{end:020}.log"))).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(values(&read_all(&log)), before);
    assert_eq!(log.end_offset(), end);
}

#[test]
fn time_index_pointing_past_the_segment_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 40);
    let files = log_files(dir.path());
    let mut entry = Vec::new();
    entry.extend_from_slice(&i64::MAX.to_be_bytes());
    entry.extend_from_slice(&1_000_000u32.to_be_bytes());
    let ti = files[0].with_extension("timeindex");
    let mut bytes = std::fs::read(&ti).unwrap();
    bytes.extend_from_slice(&entry);
    std::fs::write(&ti, bytes).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(values(&read_all(&log)), before);
    assert_eq!(log.offset_for_timestamp(5).unwrap(), Some(10));
}

#[test]
fn checkpoint_above_the_end_is_lowered_durably_and_keeps_later_appends_visible() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 5);
    let end = before.len() as i64;
    let checkpoint = dir.path().join("log-start-offset.checkpoint");
    // A log start beyond everything on disk (e.g. the tail it pointed into
    // was cut on open).
    std::fs::write(&checkpoint, format!("0\n{}\n", end + 10)).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.log_start_offset(), log.end_offset()), (end, end));
    assert_eq!(
        std::fs::read_to_string(&checkpoint).unwrap(),
        format!("0\n{end}\n"),
        "the lowered log start is on disk"
    );
    log.append(&batch("acked", 1, 1)).unwrap();
    log.close().unwrap();
    for _ in 0..2 {
        let log = Log::open(dir.path(), small_config()).unwrap();
        assert_eq!((log.log_start_offset(), log.end_offset()), (end, end + 1));
        assert_eq!(
            values(&read_all(&log)),
            vec![(end, "acked-0".to_string())],
            "the record appended after the first open stays visible"
        );
        log.close().unwrap();
    }
}

#[test]
fn damage_in_the_active_segment_after_a_clean_shutdown_is_an_error_on_every_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..6 {
        log.append(&batch(&format!("v{i}"), 2, i)).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    log.close().unwrap();
    let path = active(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    // A payload byte of the first batch: before the last index entry, where
    // a trusted index would never look.
    flip(&path, 70);
    // The close fsynced the whole segment, so this is corruption, not a torn
    // tail: an error naming the file and position, and the same error again
    // on the next open (never a silent truncation then).
    for attempt in 0..2 {
        match Log::open(dir.path(), small_config()) {
            Err(LogError::Corrupt {
                file,
                position,
                reason,
            }) => {
                assert_eq!(file, path, "attempt {attempt}");
                assert_eq!(position, 0, "attempt {attempt}");
                assert!(reason.contains("CRC"), "attempt {attempt}: {reason}");
            }
            other => panic!("attempt {attempt}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "nothing cut");
    }
}

#[test]
fn clean_shutdown_reopens_agree_on_offsets_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 12);
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.close().unwrap();
    for i in 0..3 {
        let log = Log::open(dir.path(), small_config()).unwrap();
        let end = before.len() as i64 + i;
        assert_eq!((log.log_start_offset(), log.end_offset()), (0, end));
        assert_eq!(values(&read_all(&log))[..before.len()], before[..]);
        log.append(&batch("more", 1, 1)).unwrap();
        log.close().unwrap();
    }
}
