//! Follower appends (`append_replicated`) and the leader-epoch cache:
//! batches copied byte for byte with their offsets and epochs, contiguity
//! and validation, `end_offset_for_epoch`, and the cache through
//! truncation, retention, reopening, crashes and a lost or damaged
//! checkpoint file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use streambus_log::sim::{SimIo, SimOp};
use streambus_log::{CleanupPolicy, FsyncPolicy, Log, LogConfig, LogError, OpenOptions};
use streambus_record::{BatchHeader, BatchIter, Compression, retain_records, set_base_offset};

const EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// Every batch of the log from its start, exactly as stored.
fn raw(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let r = log.read(offset, 1 << 20, None).unwrap();
        if r.data.is_empty() {
            return out;
        }
        out.extend_from_slice(&r.data);
        offset = r.next_offset;
    }
}

/// `(epoch, base offset)` of every batch in `data`.
fn batch_epochs(data: &[u8]) -> Vec<(i32, i64)> {
    BatchIter::new(data)
        .map(|b| {
            let (h, _) = b.unwrap();
            (h.partition_leader_epoch, h.base_offset)
        })
        .collect()
}

/// The leader-epoch cache the log's data implies: the first offset of
/// every epoch increase (from the log start).
fn expected_epochs(log: &Log) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for (epoch, base) in batch_epochs(&raw(log)) {
        if epoch >= 0 && out.last().is_none_or(|&(e, _)| epoch > e) {
            out.push((epoch, base.max(log.log_start_offset())));
        }
    }
    out
}

/// Copies the leader's log to the follower the way a fetcher would: read
/// whole batches from the follower's end offset, append them as they are.
fn replicate(leader: &Log, follower: &Log, max_bytes: usize) {
    loop {
        let at = follower.end_offset();
        let r = leader.read(at, max_bytes, None).unwrap();
        if r.data.is_empty() {
            return;
        }
        let info = follower.append_replicated(&r.data).unwrap();
        assert_eq!(info.base_offset, at);
        assert_eq!(info.last_offset, r.next_offset - 1);
        assert_eq!(info.size, r.data.len());
        assert_eq!(info.batch_count, BatchIter::new(&r.data).count());
        assert_eq!(follower.end_offset(), r.next_offset);
    }
}

/// A leader log with batches of epochs 1, 1, 2, 2, 2, 5, ... across several
/// segments, some appended without an epoch before the first one.
fn fill_leader(log: &Log, batches: usize) {
    log.append(&batch("plain", 2, 1)).unwrap();
    for i in 0..batches {
        let epoch = [1, 1, 2, 2, 2, 5, 5, 8][i * 8 / batches.max(1)];
        log.append_with_epoch(&batch(&format!("b{i}"), 1 + i % 4, i as i64), epoch)
            .unwrap();
    }
}

#[test]
fn replicated_append_copies_the_leader_byte_for_byte() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(dirs.0.path(), small_config()).unwrap();
    fill_leader(&leader, 40);
    assert!(leader.segment_count() > 3);
    // Smaller segments on the follower: one replicated append rolls
    // several times.
    let follower_config = LogConfig {
        segment_bytes: 300,
        fsync: FsyncPolicy::Always,
        ..small_config()
    };
    let follower = Log::open(dirs.1.path(), follower_config).unwrap();
    replicate(&leader, &follower, 4096);
    assert_eq!(follower.end_offset(), leader.end_offset());
    assert_eq!(
        follower.durable_offset(),
        follower.end_offset(),
        "always: durable on return"
    );
    assert!(follower.segment_count() > leader.segment_count());
    let bytes = raw(&leader);
    assert_eq!(raw(&follower), bytes, "identical bytes and offsets");
    assert_eq!(values(&read_all(&follower)), values(&read_all(&leader)));
    let entries = leader.epoch_entries();
    assert_eq!(entries, expected_epochs(&leader));
    assert_eq!(
        entries.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2, 5, 8]
    );
    assert_eq!(entries[0], (1, 2), "the plain batch before has no epoch");
    assert_eq!(follower.epoch_entries(), leader.epoch_entries());
    assert_eq!(follower.latest_epoch(), Some(8));
    // Timestamps are indexed as on the leader.
    for ts in [0, 7, 20, 39] {
        assert_eq!(
            follower.offset_for_timestamp(ts).unwrap(),
            leader.offset_for_timestamp(ts).unwrap()
        );
    }
    // Empty input is a no-op.
    let end = follower.end_offset();
    let info = follower.append_replicated(&[]).unwrap();
    assert_eq!((info.base_offset, info.batch_count, info.size), (end, 0, 0));
    assert_eq!(info.last_offset, end - 1);
    // All of it survives a reopen, the epoch cache too.
    follower.close().unwrap();
    let follower = Log::open(dirs.1.path(), follower_config).unwrap();
    assert_eq!(raw(&follower), bytes);
    assert_eq!(follower.epoch_entries(), leader.epoch_entries());
    // And the follower can take over as leader with a newer epoch.
    let info = follower.append_with_epoch(&batch("new", 1, 1), 9).unwrap();
    assert_eq!(
        follower.epoch_entries().last(),
        Some(&(9, info.base_offset))
    );
}

#[test]
fn replicated_append_refuses_batches_that_do_not_continue_the_log() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(dirs.0.path(), small_config()).unwrap();
    fill_leader(&leader, 8);
    let follower = Log::open(dirs.1.path(), small_config()).unwrap();
    let all = leader.read(0, 1 << 20, None).unwrap().data;
    let sizes: Vec<usize> = BatchIter::new(&all)
        .map(|b| b.unwrap().0.total_size())
        .collect();
    let (first, second) = (sizes[0], sizes[1]);
    let second_base = BatchHeader::parse(&all[first..]).unwrap().base_offset;
    // Not starting at the end offset.
    let err = follower.append_replicated(&all[first..]).unwrap_err();
    assert!(
        matches!(err, LogError::NonContiguous { expected: 0, got } if got == second_base),
        "{err}"
    );
    // A gap between two batches: nothing is written, not even the first.
    let mut gap = all[..first].to_vec();
    gap.extend_from_slice(&all[first + second..]);
    let err = follower.append_replicated(&gap).unwrap_err();
    assert!(
        matches!(err, LogError::NonContiguous { expected, .. } if expected == second_base),
        "{err}"
    );
    assert_eq!(follower.end_offset(), 0);
    assert_eq!(follower.epoch_entries(), vec![]);
    // Overlapping the end (a batch the follower already has).
    follower.append_replicated(&all[..first]).unwrap();
    let err = follower.append_replicated(&all).unwrap_err();
    assert!(
        matches!(err, LogError::NonContiguous { expected, got: 0 } if expected == second_base),
        "{err}"
    );
    follower.append_replicated(&all[first..]).unwrap();
    assert_eq!(raw(&follower), all);
}

#[test]
fn replicated_append_refuses_corrupt_truncated_or_oversized_batches() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(dirs.0.path(), small_config()).unwrap();
    fill_leader(&leader, 4);
    let follower = Log::open(
        dirs.1.path(),
        LogConfig {
            max_batch_bytes: 200,
            ..small_config()
        },
    )
    .unwrap();
    let all = leader.read(0, 1 << 20, None).unwrap().data.to_vec();
    let first = BatchHeader::parse(&all).unwrap().total_size();
    // A flipped payload byte in the second batch: its CRC fails, and the
    // valid first batch is not written either.
    let mut corrupt = all.clone();
    corrupt[first + 70] ^= 0x40;
    let err = follower.append_replicated(&corrupt).unwrap_err();
    assert!(
        matches!(&err, LogError::InvalidBatch(_)) && err.to_string().contains("CRC"),
        "{err}"
    );
    // A partial batch at the end.
    let err = follower
        .append_replicated(&all[..all.len() - 5])
        .unwrap_err();
    assert!(
        matches!(&err, LogError::InvalidBatch(_)) && err.to_string().contains("trailing"),
        "{err}"
    );
    // Not a batch at all.
    let err = follower.append_replicated(&[7u8; 80]).unwrap_err();
    assert!(matches!(&err, LogError::InvalidBatch(_)), "{err}");
    assert_eq!(follower.end_offset(), 0);
    // Larger than the follower's max_batch_bytes: still copied (that limit
    // bounds producers; every batch stays within MAX_BATCH_BYTES).
    let big = batch(&"x".repeat(300), 1, 1);
    leader.append_with_epoch(&big, 9).unwrap();
    follower.append_replicated(&all).unwrap();
    let r = leader.read(follower.end_offset(), 1 << 20, None).unwrap();
    assert!(r.data.len() > 200);
    follower.append_replicated(&r.data).unwrap();
    assert_eq!(follower.end_offset(), leader.end_offset());
    assert_eq!(follower.epoch_entries(), expected_epochs(&follower));
    assert_eq!(follower.latest_epoch(), Some(9));
}

#[test]
fn replicated_append_accepts_compacted_batches_with_offset_gaps() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A batch of offsets 10..=14 of which compaction kept 11 and 14.
    let mut full = batch_of(
        Compression::None,
        &(0..5)
            .map(|i| record(Some(&format!("k{i}")), Some(&format!("v{i}")), 5))
            .collect::<Vec<_>>(),
    );
    set_base_offset(&mut full, 10);
    let compacted = retain_records(&full, |r| r.offset == 11 || r.offset == 14)
        .unwrap()
        .unwrap();
    let h = BatchHeader::parse(&compacted).unwrap();
    assert_eq!(
        (h.base_offset, h.last_offset(), h.record_count),
        (10, 14, 2)
    );
    let follower = Log::open(dirs.1.path(), small_config()).unwrap();
    let first = batch("first", 10, 1);
    follower.append(&first).unwrap();
    let info = follower.append_replicated(&compacted).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (10, 14));
    assert_eq!(follower.end_offset(), 15);
    let mut next = batch("next", 1, 6);
    set_base_offset(&mut next, 15);
    follower.append_replicated(&next).unwrap();
    let offsets: Vec<i64> = read_all(&follower).iter().map(|r| r.offset).collect();
    assert_eq!(offsets[10..], [11, 14, 15]);
    // A producer append still refuses such a batch.
    let err = follower.append(&compacted).unwrap_err();
    assert!(matches!(err, LogError::InvalidBatch(_)), "{err}");

    // A whole compacted leader log (gaps inside batches) replicates too.
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        ..small_config()
    };
    let leader = Log::open(dirs.0.path(), config).unwrap();
    for i in 0..30 {
        let key = if i % 2 == 0 { "same" } else { "other" };
        let b = batch_of(
            Compression::None,
            &[
                record(Some(key), Some(&format!("v{i}a")), 1),
                record(Some(&format!("u{i}")), Some("x"), 1),
                record(Some(key), Some(&format!("v{i}b")), 1),
            ],
        );
        leader.append_with_epoch(&b.clone(), 1 + i / 10).unwrap();
    }
    assert!(leader.compact(10).unwrap().records_removed > 0);
    let follower = Log::open(dirs.1.path().join("second"), config).unwrap();
    replicate(&leader, &follower, 1000);
    assert_eq!(raw(&follower), raw(&leader));
    assert_eq!(values(&read_all(&follower)), values(&read_all(&leader)));
    assert_eq!(follower.epoch_entries(), vec![(1, 0), (2, 30), (3, 60)]);
}

#[test]
fn epoch_changes_make_cache_entries_and_older_epochs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    let file = dir.path().join(EPOCH_FILE);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "0\n0\n");
    log.append(&batch("plain", 1, 1)).unwrap();
    assert_eq!((log.latest_epoch(), log.epoch_entries()), (None, vec![]));
    log.append_with_epoch(&batch("a", 2, 1), 0).unwrap();
    log.append_with_epoch(&batch("b", 2, 1), 0).unwrap();
    assert_eq!(log.epoch_entries(), vec![(0, 1)]);
    let info = log.append_with_epoch(&batch("c", 3, 1), 3).unwrap();
    assert_eq!(info.base_offset, 5);
    log.append_with_epoch(&batch("d", 1, 1), 3).unwrap();
    // Plain appends leave the cache alone.
    log.append(&batch("plain", 1, 1)).unwrap();
    assert_eq!(log.epoch_entries(), vec![(0, 1), (3, 5)]);
    assert_eq!(log.latest_epoch(), Some(3));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "0\n2\n0 1\n3 5\n");
    // An older epoch is refused and writes nothing.
    let end = log.end_offset();
    let err = log.append_with_epoch(&batch("old", 1, 1), 2).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::StaleLeaderEpoch {
                epoch: 2,
                latest: 3
            }
        ),
        "{err}"
    );
    let mut stale = batch("old", 1, 1);
    streambus_record::set_partition_leader_epoch(&mut stale, 1);
    set_base_offset(&mut stale, end);
    let err = log.append_replicated(&stale).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::StaleLeaderEpoch {
                epoch: 1,
                latest: 3
            }
        ),
        "{err}"
    );
    assert_eq!(log.end_offset(), end);
    // Epochs may only rise within one replicated append too.
    let mut pair = batch("e7", 1, 1);
    streambus_record::set_partition_leader_epoch(&mut pair, 7);
    set_base_offset(&mut pair, end);
    let mut back = batch("e6", 1, 1);
    streambus_record::set_partition_leader_epoch(&mut back, 6);
    set_base_offset(&mut back, end + 1);
    pair.extend_from_slice(&back);
    let err = log.append_replicated(&pair).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::StaleLeaderEpoch {
                epoch: 6,
                latest: 7
            }
        ),
        "{err}"
    );
    assert_eq!(log.end_offset(), end);
    assert_eq!(log.epoch_entries(), vec![(0, 1), (3, 5)]);
    assert_eq!(log.epoch_entries(), expected_epochs(&log));
}

#[test]
fn end_offset_for_epoch_answers_offsets_for_leader_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.end_offset_for_epoch(0), None, "empty cache");
    log.append(&batch("plain", 2, 1)).unwrap();
    assert_eq!(log.end_offset_for_epoch(3), None, "still empty");
    for (epoch, n) in [(2, 8), (4, 10), (7, 5)] {
        log.append_with_epoch(&batch("e", n, 1), epoch).unwrap();
    }
    assert_eq!(log.epoch_entries(), vec![(2, 2), (4, 10), (7, 20)]);
    assert_eq!(log.end_offset(), 25);
    for (requested, expected) in [
        (-1, None),
        (0, None),
        (1, None),
        (2, Some((2, 10))),
        (3, Some((2, 10))),
        (4, Some((4, 20))),
        (6, Some((4, 20))),
        (7, Some((7, 25))),
        (8, Some((7, 25))),
        (1000, Some((7, 25))),
    ] {
        assert_eq!(
            log.end_offset_for_epoch(requested),
            expected,
            "requested {requested}"
        );
    }
}

#[test]
fn truncation_drops_the_entries_of_removed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for (epoch, n) in [(1, 5), (2, 5), (3, 5), (3, 5), (4, 5)] {
        log.append_with_epoch(&batch("e", n, 1), epoch).unwrap();
    }
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 5), (3, 10), (4, 20)]);
    log.truncate_to(20).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 5), (3, 10)]);
    assert_eq!(log.end_offset_for_epoch(4), Some((3, 20)));
    // Inside the first batch of epoch 3: that whole batch goes, and its entry.
    log.truncate_to(12).unwrap();
    assert_eq!(log.end_offset(), 10);
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 5)]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(EPOCH_FILE)).unwrap(),
        "0\n2\n1 0\n2 5\n"
    );
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 5)]);
    // The divergent epoch 3 can be replaced by the new leader's epoch 5.
    log.append_with_epoch(&batch("new", 2, 1), 5).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 5), (5, 10)]);
    log.truncate_to(0).unwrap();
    assert_eq!(log.epoch_entries(), vec![]);
    assert_eq!(log.latest_epoch(), None);
    // Afterwards any epoch may start again.
    log.append_with_epoch(&batch("again", 1, 1), 0).unwrap();
    assert_eq!(log.epoch_entries(), vec![(0, 0)]);
}

#[test]
fn retention_drops_entries_below_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(1500),
        ..small_config()
    };
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..60 {
        log.append_with_epoch(&batch(&format!("b{i}"), 2, i), 1 + i as i32 / 6)
            .unwrap();
    }
    let before = log.epoch_entries();
    assert_eq!(before.len(), 10);
    let outcome = log.apply_retention(0).unwrap();
    assert!(outcome.segments_deleted > 0);
    let start = log.log_start_offset();
    let entries = log.epoch_entries();
    // The epoch of the first remaining batch now starts at the log start;
    // the later ones are unchanged.
    assert_eq!(entries[0].1, start);
    let covering = before.iter().rev().find(|(_, s)| *s <= start).unwrap();
    assert_eq!(entries[0].0, covering.0);
    assert_eq!(
        entries[1..],
        before[before.iter().position(|e| e == covering).unwrap() + 1..]
    );
    assert_eq!(entries, expected_epochs(&log));
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.epoch_entries(), entries);
}

#[test]
fn the_epoch_cache_survives_reopen_and_crash() {
    let sim = SimIo::new(11);
    let open = || {
        Log::open_with(
            "/data/p0",
            small_config(),
            OpenOptions::new().io(Arc::new(sim.clone())),
        )
    };
    let log = open().unwrap();
    for (epoch, n) in [(3, 4), (3, 2), (6, 1), (10, 3)] {
        log.append_with_epoch(&batch("e", n, 1), epoch).unwrap();
    }
    let entries = vec![(3, 0), (6, 6), (10, 7)];
    assert_eq!(log.epoch_entries(), entries);
    log.close().unwrap();
    let log = open().unwrap();
    assert_eq!(log.epoch_entries(), entries);
    log.flush().unwrap();
    drop(log);
    sim.crash();
    let log = open().unwrap();
    assert_eq!(log.epoch_entries(), entries);
    assert_eq!(log.end_offset(), 10);
}

/// A log on `sim` with epochs 1 and 2, everything durable.
fn crash_setup(sim: &SimIo, fsync: FsyncPolicy) -> Log {
    let log = sim_open(sim, fsync).unwrap();
    for epoch in [1, 1, 2] {
        log.append_with_epoch(&batch("setup", 3, 1), epoch).unwrap();
    }
    log.flush().unwrap();
    log
}

fn sim_dir() -> PathBuf {
    PathBuf::from("/data/p0")
}

fn sim_open(sim: &SimIo, fsync: FsyncPolicy) -> Result<Log, LogError> {
    Log::open_with(
        sim_dir(),
        LogConfig {
            segment_bytes: 400,
            fsync,
            ..small_config()
        },
        OpenOptions::new().io(Arc::new(sim.clone())),
    )
}

/// Two replicated batches of epochs 4 and 5 at offset 9, as a leader wrote
/// them (they roll the segment).
fn replicated_batches() -> Vec<u8> {
    let mut out = Vec::new();
    for (epoch, base, n) in [(4, 9, 3), (5, 12, 2)] {
        let mut b = batch(&format!("r{epoch}"), n, 2);
        set_base_offset(&mut b, base);
        streambus_record::set_partition_leader_epoch(&mut b, epoch);
        out.extend_from_slice(&b);
    }
    out
}

#[test]
fn a_crash_between_an_epoch_entry_and_its_batch_drops_the_entry_on_open() {
    let epoch_file = sim_dir().join(EPOCH_FILE);
    for replicated in [false, true] {
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
            let append = |log: &Log| -> Result<(), LogError> {
                if replicated {
                    log.append_replicated(&replicated_batches()).map(drop)
                } else {
                    log.append_with_epoch(&batch("new", 3, 2), 4).map(drop)
                }
            };
            // The number of I/O steps without a crash.
            let probe = SimIo::new(0);
            let log = crash_setup(&probe, fsync);
            let before = probe.mutations();
            append(&log).unwrap();
            let steps = probe.mutations() - before;
            let complete = log.epoch_entries();
            assert_eq!(complete.last().unwrap().0, if replicated { 5 } else { 4 });
            drop(log);
            let mut entry_without_batch = 0;
            for k in 0..=steps {
                let sim = SimIo::new(k * 7 + 1).with_sector_size(64);
                let log = crash_setup(&sim, fsync);
                sim.crash_after(k);
                let result = append(&log);
                assert_eq!(result.is_err(), k < steps, "crash after {k} of {steps}");
                sim.cancel_crash();
                drop(log);
                sim.power_loss();
                sim.restart();
                let on_disk = String::from_utf8(sim.contents(&epoch_file).unwrap()).unwrap();
                let log = sim_open(&sim, fsync)
                    .unwrap_or_else(|e| panic!("crash after {k} of {steps}: {e}"));
                let entries = log.epoch_entries();
                // Never a batch without its entry, never an entry without
                // its batch.
                assert_eq!(entries, expected_epochs(&log), "crash after {k}");
                if on_disk.contains("\n4 9\n") && log.end_offset() == 9 {
                    entry_without_batch += 1;
                    assert_eq!(entries, vec![(1, 0), (2, 6)]);
                    let rewritten = String::from_utf8(sim.contents(&epoch_file).unwrap()).unwrap();
                    assert_eq!(rewritten, "0\n2\n1 0\n2 6\n", "trimmed on open");
                }
                // The log works afterwards: the append can be repeated.
                if log.end_offset() == 9 {
                    append(&log).unwrap();
                    assert_eq!(log.epoch_entries(), complete);
                }
                assert_eq!(log.epoch_entries(), expected_epochs(&log));
            }
            assert!(
                entry_without_batch > 0,
                "no crash left the entry without its batch (replicated {replicated}, {fsync:?})"
            );
        }
    }
}

#[test]
fn an_entry_left_by_a_failed_write_never_claims_a_later_batch() {
    let sim = SimIo::new(12);
    let log = crash_setup(&sim, FsyncPolicy::Never);
    sim.fail_next(SimOp::Write, ".log");
    let err = log.append_with_epoch(&batch("lost", 2, 1), 4).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(log.failure().is_none(), "the failed write was undone");
    // The entry (4, 9) was made durable before the write; it describes no
    // data, so it is not shown and not the latest epoch.
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 6)]);
    assert_eq!(log.latest_epoch(), Some(2));
    // The old leader's epoch 2 may still append at offset 9 then, and the
    // stale entry must not claim that batch.
    log.append_with_epoch(&batch("two", 2, 1), 2).unwrap();
    log.append(&batch("plain", 1, 1)).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 6)]);
    log.flush().unwrap();
    drop(log);
    sim.crash();
    let log = sim_open(&sim, FsyncPolicy::Never).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 6)]);
    assert_eq!(log.end_offset(), 12);
}

#[test]
fn a_missing_epoch_checkpoint_is_rebuilt_from_the_batch_headers() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(1500),
        ..small_config()
    };
    let log = Log::open(dir.path(), config).unwrap();
    log.append(&batch("plain", 2, 1)).unwrap();
    for i in 0..60 {
        log.append_with_epoch(&batch(&format!("b{i}"), 2, i), 1 + i as i32 / 7)
            .unwrap();
    }
    let file = dir.path().join(EPOCH_FILE);
    let expect = |log: &Log| {
        let entries = log.epoch_entries();
        assert_eq!(entries, expected_epochs(log));
        entries
    };
    let entries = expect(&log);
    assert_eq!(entries.len(), 9);
    log.close().unwrap();
    std::fs::remove_file(&file).unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.epoch_entries(), entries);
    assert!(file.exists(), "the rebuilt cache is written back");
    // Also after retention moved the log start into the middle of an epoch.
    assert!(log.apply_retention(0).unwrap().segments_deleted > 0);
    let trimmed = expect(&log);
    drop(log);
    std::fs::remove_file(&file).unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.epoch_entries(), trimmed);
    assert_eq!(log.epoch_entries()[0].1, log.log_start_offset());
}

#[test]
fn a_damaged_or_unreadable_epoch_checkpoint_is_an_error_naming_it() {
    let sim = SimIo::new(13);
    let log = crash_setup(&sim, FsyncPolicy::Never);
    log.close().unwrap();
    let file = sim_dir().join(EPOCH_FILE);
    let good = sim.contents(&file).unwrap();
    assert_eq!(good, b"0\n2\n1 0\n2 6\n");
    for bad in [
        &b"0\n2\n1 0\n"[..],
        b"0\n2\n2 0\n1 6\n",
        b"1\n0\n",
        b"0\n1\nx 0\n",
        b"",
    ] {
        sim.set_contents(&file, bad).unwrap();
        let err = sim_open(&sim, FsyncPolicy::Never).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { file: f, .. } if f == &file),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains(EPOCH_FILE), "{err}");
    }
    sim.set_contents(&file, &good).unwrap();
    sim.fail_next(SimOp::Open, EPOCH_FILE);
    let err = sim_open(&sim, FsyncPolicy::Never).unwrap_err();
    assert!(
        matches!(&err, LogError::Io { context, .. } if context.contains(EPOCH_FILE)),
        "{err}"
    );
    let log = sim_open(&sim, FsyncPolicy::Never).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 6)]);
}

#[test]
fn concurrent_appends_across_a_leader_change_keep_the_cache_exact() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                fsync: FsyncPolicy::Always,
                ..small_config()
            },
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut refused = 0;
                for i in 0..40 {
                    let epoch = (i / 10) * 2 + t % 2;
                    match log.append_with_epoch(&batch(&format!("t{t}-{i}"), 1, 1), epoch) {
                        Ok(_) => {}
                        Err(LogError::StaleLeaderEpoch { .. }) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                refused
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let entries = log.epoch_entries();
    assert_eq!(entries, expected_epochs(&log));
    let epochs: Vec<i32> = batch_epochs(&raw(&log)).iter().map(|e| e.0).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
    assert_eq!(log.latest_epoch(), epochs.last().copied());
}

#[test]
fn reads_go_on_and_appends_wait_while_an_epoch_entry_is_made_durable() {
    let sim = SimIo::new(14);
    let log = Arc::new(crash_setup(&sim, FsyncPolicy::Never));
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let armed = Arc::new(AtomicBool::new(true));
    let a = armed.clone();
    sim.set_sync_hook(Some(Arc::new(move |p: &Path| {
        if p.ends_with(format!("{EPOCH_FILE}.tmp")) && a.swap(false, Ordering::SeqCst) {
            entered_tx.lock().unwrap().send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
    })));
    let leader_change = {
        let log = log.clone();
        std::thread::spawn(move || log.append_with_epoch(&batch("new", 2, 1), 3).unwrap())
    };
    entered
        .recv_timeout(Duration::from_secs(20))
        .expect("the new epoch's entry is being written");
    // Not under the state lock: reads and queries go on.
    assert_eq!(read_all(&log).len(), 9);
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 6)]);
    assert_eq!(log.end_offset(), 9);
    // An append (of the old epoch, or without one) waits: offset 9 is the
    // new epoch's.
    let (done_tx, done) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            done_tx
                .send(log.append_with_epoch(&batch("old", 1, 1), 2))
                .unwrap()
        });
    }
    assert!(done.recv_timeout(Duration::from_millis(200)).is_err());
    release.send(()).unwrap();
    let info = leader_change.join().unwrap();
    assert_eq!(info.base_offset, 9);
    let err = done
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::StaleLeaderEpoch {
                epoch: 2,
                latest: 3
            }
        ),
        "{err}"
    );
    assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 6), (3, 9)]);
}

/// Two replicated batches of epoch 7 starting at `base`.
fn batches_at(base: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, n) in [3, 2].into_iter().enumerate() {
        let mut b = batch(&format!("at{base}-{i}"), n, 3);
        set_base_offset(&mut b, base + if i == 0 { 0 } else { 3 });
        streambus_record::set_partition_leader_epoch(&mut b, 7);
        out.extend_from_slice(&b);
    }
    out
}

#[test]
fn reset_to_empties_the_log_and_starts_it_at_the_offset() {
    let sim = SimIo::new(21);
    let log = crash_setup(&sim, FsyncPolicy::Always);
    for _ in 0..5 {
        log.append_with_epoch(&batch("more", 3, 1), 2).unwrap();
    }
    assert_eq!(log.end_offset(), 24);
    assert!(log.segment_count() > 1);
    // Not above the end: refused, nothing changes.
    for offset in [0, 5, 24] {
        match log.reset_to(offset) {
            Err(LogError::ResetNotAboveEnd { offset: o, end: 24 }) => assert_eq!(o, offset),
            other => panic!("expected ResetNotAboveEnd, got {other:?}"),
        }
    }
    assert_eq!(log.end_offset(), 24);

    log.reset_to(40).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.end_offset(),
            log.durable_offset()
        ),
        (40, 40, 40)
    );
    assert_eq!(log.segment_count(), 1);
    assert!(log.epoch_entries().is_empty());
    assert!(raw(&log).is_empty());
    assert!(matches!(
        log.read(10, 1 << 20, None),
        Err(LogError::OffsetBelowStart { .. })
    ));
    // A follower goes on from there.
    let info = log.append_replicated(&batches_at(40)).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (40, 44));
    assert_eq!(log.epoch_entries(), vec![(7, 40)]);
    log.close().unwrap();
    let log = sim_open(&sim, FsyncPolicy::Always).unwrap();
    assert_eq!((log.log_start_offset(), log.end_offset()), (40, 45));
    assert_eq!(log.epoch_entries(), vec![(7, 40)]);
    assert_eq!(batch_epochs(&raw(&log)), vec![(7, 40), (7, 43)]);
}

#[test]
fn a_crash_during_reset_to_leaves_the_old_log_or_the_new_one() {
    let probe = SimIo::new(0);
    let log = crash_setup(&probe, FsyncPolicy::Always);
    let before = probe.mutations();
    log.reset_to(40).unwrap();
    let steps = probe.mutations() - before;
    drop(log);
    let (mut old, mut new) = (0, 0);
    for k in 0..=steps {
        let sim = SimIo::new(k * 13 + 5).with_sector_size(64);
        let log = crash_setup(&sim, FsyncPolicy::Always);
        sim.crash_after(k);
        let result = log.reset_to(40);
        assert_eq!(result.is_err(), k < steps, "crash after {k} of {steps}");
        sim.cancel_crash();
        drop(log);
        sim.power_loss();
        sim.restart();
        let log = sim_open(&sim, FsyncPolicy::Always)
            .unwrap_or_else(|e| panic!("crash after {k} of {steps}: {e}"));
        assert_eq!(
            log.epoch_entries(),
            expected_epochs(&log),
            "crash after {k}"
        );
        if log.end_offset() == 40 {
            // The new log: empty at 40, nothing of the old one left.
            new += 1;
            assert_eq!(log.log_start_offset(), 40, "crash after {k}");
            assert!(raw(&log).is_empty());
            assert!(log.epoch_entries().is_empty());
        } else {
            // The old log, or what is left of it (its start may have been
            // raised to its end): the reset can be done again.
            old += 1;
            assert_eq!(log.end_offset(), 9, "crash after {k}");
            let kept = raw(&log);
            if log.log_start_offset() == 0 {
                assert_eq!(batch_epochs(&kept).len(), 3, "crash after {k}");
            }
            log.reset_to(40).unwrap();
        }
        // Either way the follower can go on at 40.
        log.append_replicated(&batches_at(40)).unwrap();
        assert_eq!(log.epoch_entries(), vec![(7, 40)]);
    }
    assert!(old > 0 && new > 0, "old {old}, new {new}");
}

/// A topic's lowered `max.message.bytes` bounds what producers send from
/// then on; a follower still copies the larger batches the leader wrote
/// before, or it could never catch up.
#[test]
fn a_follower_copies_batches_above_a_lowered_batch_limit() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(dirs.0.path(), small_config()).unwrap();
    fill_leader(&leader, 10);
    let follower = Log::open(dirs.1.path(), small_config()).unwrap();
    let lowered = LogConfig {
        max_batch_bytes: streambus_log::MIN_BATCH_BYTES,
        ..small_config()
    };
    follower.update_config(lowered).unwrap();
    leader.update_config(lowered).unwrap();
    replicate(&leader, &follower, 4096);
    assert_eq!(follower.end_offset(), leader.end_offset());
    assert_eq!(raw(&follower), raw(&leader));
    // A producer's batch is held to the new limit.
    assert!(matches!(
        leader.append(&batch("big", 2, 1)),
        Err(LogError::BatchTooLarge { .. })
    ));
}
