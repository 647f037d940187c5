//! Idempotent producers: a retried batch is found in the log and answered
//! with its original offsets, on the leader that wrote it, after a reopen
//! or a crash, and on a follower that becomes leader; a batch that skips a
//! sequence is refused; a truncated batch may be written again.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use streambus_log::sim::SimIo;
use streambus_log::{FsyncPolicy, Log, LogConfig, LogError, OpenOptions};
use streambus_record::{BatchBuilder, Compression, Record};

/// A batch of `n` records of producer `pid` (epoch 0) starting at `seq`.
fn producer_batch(pid: i64, seq: i32, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).with_producer(pid, 0, seq);
    for i in 0..n {
        b.push(&Record {
            value: Some(Bytes::from(format!("p{pid}-s{}", seq + i as i32))),
            timestamp_ms: 1,
            ..Record::default()
        });
    }
    b.build().to_vec()
}

fn open(sim: &SimIo, fsync: FsyncPolicy) -> Log {
    Log::open_with(
        "/data/p0",
        LogConfig {
            fsync,
            ..small_config()
        },
        OpenOptions::new().io(Arc::new(sim.clone())),
    )
    .unwrap()
}

#[test]
fn a_retried_batch_gets_its_original_offsets_and_is_written_once() {
    let sim = SimIo::new(1);
    let log = open(&sim, FsyncPolicy::Always);
    log.append(&batch("plain", 2, 1)).unwrap();
    let first = log.append_with_epoch(&producer_batch(9, 0, 3), 1).unwrap();
    assert_eq!(
        (first.base_offset, first.last_offset, first.duplicate),
        (2, 4, false)
    );
    let second = log.append_with_epoch(&producer_batch(9, 3, 2), 1).unwrap();
    assert_eq!((second.base_offset, second.duplicate), (5, false));
    // Another producer in between.
    log.append_with_epoch(&producer_batch(10, 0, 1), 1).unwrap();

    let retry = log.append_with_epoch(&producer_batch(9, 0, 3), 1).unwrap();
    assert_eq!(
        (retry.base_offset, retry.last_offset, retry.duplicate),
        (2, 4, true)
    );
    assert_eq!(retry.size, 0);
    assert_eq!(log.end_offset(), 8);
    assert_eq!(log.producer_count(), 2);
    assert_eq!(read_all(&log).len(), 8);

    // A gap is refused and writes nothing.
    match log.append_with_epoch(&producer_batch(9, 7, 1), 1) {
        Err(LogError::OutOfOrderSequence {
            producer_id: 9,
            expected: 5,
            got: 7,
        }) => {}
        other => panic!("expected OutOfOrderSequence, got {other:?}"),
    }
    assert_eq!(log.end_offset(), 8);
    // The next sequence goes on.
    let next = log.append_with_epoch(&producer_batch(9, 5, 1), 1).unwrap();
    assert_eq!((next.base_offset, next.duplicate), (8, false));
}

#[test]
fn producer_state_survives_reopen_and_power_loss() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let sim = SimIo::new(2);
        let log = open(&sim, fsync);
        for i in 0..20 {
            log.append_with_epoch(&producer_batch(5, i * 2, 2), 1)
                .unwrap();
        }
        log.close().unwrap();
        let log = open(&sim, fsync);
        let retry = log.append_with_epoch(&producer_batch(5, 38, 2), 1).unwrap();
        assert!(retry.duplicate, "{fsync:?}");
        assert_eq!(retry.base_offset, 38);
        log.flush().unwrap();
        log.append_with_epoch(&producer_batch(5, 40, 2), 1).unwrap();
        log.flush().unwrap();
        drop(log);
        sim.crash();
        let log = open(&sim, fsync);
        let retry = log.append_with_epoch(&producer_batch(5, 40, 2), 1).unwrap();
        assert!(retry.duplicate, "{fsync:?}");
        assert_eq!((retry.base_offset, log.end_offset()), (40, 42));
        assert!(matches!(
            log.append_with_epoch(&producer_batch(5, 50, 1), 1),
            Err(LogError::OutOfOrderSequence { expected: 42, .. })
        ));
    }
}

#[test]
fn a_follower_that_becomes_leader_recognises_retries() {
    let leader_sim = SimIo::new(3);
    let follower_sim = SimIo::new(4);
    let leader = open(&leader_sim, FsyncPolicy::Never);
    let follower = open(&follower_sim, FsyncPolicy::Never);
    for i in 0..6 {
        leader
            .append_with_epoch(&producer_batch(3, i * 4, 4), 1)
            .unwrap();
    }
    let data = leader.read(0, 1 << 20, None).unwrap().data;
    follower.append_replicated(&data).unwrap();
    // The producer retries its last batch on the new leader.
    let retry = follower
        .append_with_epoch(&producer_batch(3, 20, 4), 2)
        .unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (20, true));
    assert_eq!(follower.end_offset(), 24);
}

#[test]
fn a_truncated_batch_is_no_duplicate() {
    let sim = SimIo::new(5);
    let log = open(&sim, FsyncPolicy::Never);
    for i in 0..4 {
        log.append_with_epoch(&producer_batch(1, i, 1), 1).unwrap();
    }
    // A new leader did not have offsets 2 and 3: they go.
    log.truncate_to(2).unwrap();
    let again = log.append_with_epoch(&producer_batch(1, 2, 1), 2).unwrap();
    assert_eq!((again.base_offset, again.duplicate), (2, false));
    log.reset_to(100).unwrap();
    assert_eq!(log.producer_count(), 0);
}
