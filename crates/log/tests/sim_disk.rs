//! Durability and failure handling on the simulated disk: fsync counting
//! and sharing, rolls that do not block appends, crash-safe truncation at
//! every I/O step, directory fsyncs, injected I/O errors and recovery from
//! a failed fsync.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use streambus_log::io::Io;
use streambus_log::sim::{SimIo, SimOp};
use streambus_log::{
    CleanupPolicy, FsyncPolicy, FsyncStats, Log, LogConfig, LogError, OpenOptions,
};
use streambus_record::{BatchIter, Compression};

const DIR: &str = "/data/topic-0";

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

fn open(sim: &SimIo, config: LogConfig) -> Result<Log, LogError> {
    Log::open_with(dir(), config, OpenOptions::new().io(Arc::new(sim.clone())))
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 64,
        fsync,
        ..LogConfig::default()
    }
}

#[test]
fn concurrent_appenders_under_always_share_fsyncs() {
    const THREADS: usize = 8;
    const APPENDS: usize = 25;
    let sim = SimIo::new(1);
    // Each data fsync takes a while, as on a real disk: appenders arriving
    // meanwhile are covered by the next one.
    sim.set_sync_hook(Some(Arc::new(|p: &Path| {
        if p.extension().is_some_and(|e| e == "log") {
            std::thread::sleep(Duration::from_millis(3));
        }
    })));
    let counter = Arc::new(FsyncStats::default());
    let log = Arc::new(
        Log::open_with(
            dir(),
            LogConfig {
                fsync: FsyncPolicy::Always,
                ..LogConfig::default()
            },
            OpenOptions::new()
                .io(Arc::new(sim.clone()))
                .fsync_stats(counter.clone()),
        )
        .unwrap(),
    );
    let before = counter.count();
    assert!(before > 0, "opening fsyncs the new segment's directory");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..APPENDS {
                    let info = log.append(&batch(&format!("t{t}-{i}"), 1, 1)).unwrap();
                    assert!(log.durable_offset() > info.last_offset);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let fsyncs = counter.count() - before;
    let total = (THREADS * APPENDS) as u64;
    assert_eq!(log.end_offset(), total as i64);
    assert_eq!(log.durable_offset(), total as i64);
    assert_eq!(log.fsyncs(), counter.count());
    // Without sharing there would be one fsync per append.
    assert!(
        fsyncs <= total / 2,
        "{fsyncs} fsyncs for {total} appends: group commit does not share"
    );
    // Everything acknowledged is on the simulated disk.
    drop(log);
    sim.crash();
    let log = open(&sim, LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), total as i64);
}

#[test]
fn one_fsync_counter_serves_many_logs() {
    let sim = SimIo::new(2);
    let counter = Arc::new(FsyncStats::default());
    let opts = || {
        OpenOptions::new()
            .io(Arc::new(sim.clone()))
            .fsync_stats(counter.clone())
    };
    let a = Log::open_with("/data/a", config(FsyncPolicy::Never), opts()).unwrap();
    let b = Log::open_with("/data/b", config(FsyncPolicy::Never), opts()).unwrap();
    let start = counter.count();
    a.append(&batch("a", 1, 1)).unwrap();
    b.append(&batch("b", 1, 1)).unwrap();
    assert_eq!(counter.count(), start, "Never does not sync");
    a.flush().unwrap();
    b.flush().unwrap();
    assert_eq!(counter.count(), start + 2);
    assert_eq!(a.fsyncs(), b.fsyncs());
    // Every fsync is in the latency histogram too.
    let snapshot = counter.snapshot();
    assert_eq!(snapshot.count, start + 2);
    assert_eq!(snapshot.buckets.iter().map(|b| b.1).sum::<u64>(), start + 2);
}

/// A sync hook that blocks the first sync of `target` until released.
struct Gate {
    armed: Arc<AtomicBool>,
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn gate(sim: &SimIo, target: &'static str) -> Gate {
    let armed = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let release_rx = Mutex::new(release_rx);
    let a = armed.clone();
    sim.set_sync_hook(Some(Arc::new(move |p: &Path| {
        if p.ends_with(target) && a.swap(false, Ordering::SeqCst) {
            entered_tx.lock().unwrap().send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
    })));
    Gate {
        armed,
        entered,
        release,
    }
}

#[test]
fn appends_and_reads_proceed_while_a_roll_fsyncs_the_sealed_segment() {
    let sim = SimIo::new(3);
    let gate = gate(&sim, "00000000000000000000.log");
    let log = Arc::new(open(&sim, config(FsyncPolicy::Never)).unwrap());
    log.append(&batch("first", 3, 1)).unwrap();
    gate.armed.store(true, Ordering::SeqCst);
    // Fill the first segment until an append rolls; that append blocks in
    // the fsync of the sealed segment.
    let roller = {
        let log = log.clone();
        std::thread::spawn(move || {
            while log.segment_count() < 2 {
                log.append(&batch("fill", 3, 1)).unwrap();
            }
        })
    };
    gate.entered
        .recv_timeout(Duration::from_secs(20))
        .expect("the roll fsyncs the sealed segment");
    let sealed_end = log.end_offset();
    assert_eq!(log.segment_count(), 2);
    assert!(
        log.durable_offset() < sealed_end,
        "nothing is durable while the sealed segment's fsync is in progress"
    );
    // Appends and reads are not blocked by that fsync.
    let (done_tx, done) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let r = log.read(0, 1 << 20, None).unwrap();
            assert!(!r.data.is_empty());
            let info = log.append(&batch("during-roll", 2, 1)).unwrap();
            let r = log.read(info.base_offset, 1 << 20, None).unwrap();
            let (h, _) = BatchIter::new(&r.data).next().unwrap().unwrap();
            assert_eq!(h.base_offset, info.base_offset);
            done_tx.send(info).unwrap();
        });
    }
    let info = done
        .recv_timeout(Duration::from_secs(20))
        .expect("append and read finish while the roll's fsync is blocked");
    // A flush cannot claim durability before the roll's fsync finished.
    let (flushed_tx, flushed) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            log.flush().unwrap();
            flushed_tx.send(log.durable_offset()).unwrap();
        });
    }
    assert!(flushed.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(log.durable_offset() < sealed_end);
    gate.release.send(()).unwrap();
    roller.join().unwrap();
    let durable = flushed.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(durable > info.last_offset);
    let names = sim.list(&dir());
    assert!(
        !names.iter().any(|n| n.ends_with(".rolling")),
        "the roll finished: {names:?}"
    );
    // Everything survives a power loss now.
    let end = log.end_offset();
    drop(log);
    sim.crash();
    let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
    assert_eq!(log.end_offset(), end);
}

/// Compaction fsyncs the cleaned segment, its index files and the
/// directory (before and after the swap under the state lock): every one
/// of those fsyncs is blocked in turn, and while each is blocked an append
/// and reads (of the segment being compacted too) finish.
#[test]
fn appends_and_reads_proceed_while_compaction_fsyncs_the_cleaned_segment() {
    let sim = SimIo::new(5);
    let compactor: Arc<Mutex<Option<std::thread::ThreadId>>> = Arc::default();
    let (entered_tx, entered) = mpsc::channel::<PathBuf>();
    let (release, release_rx) = mpsc::channel::<()>();
    {
        let compactor = compactor.clone();
        let entered_tx = Mutex::new(entered_tx);
        let release_rx = Mutex::new(release_rx);
        sim.set_sync_hook(Some(Arc::new(move |p: &Path| {
            if *compactor.lock().unwrap() == Some(std::thread::current().id()) {
                entered_tx.lock().unwrap().send(p.to_path_buf()).unwrap();
                release_rx.lock().unwrap().recv().unwrap();
            }
        })));
    }
    let log = Arc::new(
        open(
            &sim,
            LogConfig {
                cleanup_policy: CleanupPolicy::Compact,
                ..config(FsyncPolicy::Never)
            },
        )
        .unwrap(),
    );
    for i in 0..14 {
        let b = batch_of(
            Compression::None,
            &[
                record(Some("same"), Some(&format!("v{i}a")), 1),
                record(Some(&format!("u{i}")), Some("x"), 1),
                record(Some("same"), Some(&format!("v{i}b")), 1),
            ],
        );
        log.append(&b.clone()).unwrap();
    }
    assert!(log.segment_count() >= 3);
    let compaction = {
        let log = log.clone();
        let compactor = compactor.clone();
        std::thread::spawn(move || {
            *compactor.lock().unwrap() = Some(std::thread::current().id());
            log.compact(10).unwrap()
        })
    };
    let mut blocked = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let path = match entered.recv_timeout(Duration::from_millis(20)) {
            Ok(path) => path,
            Err(_) if compaction.is_finished() => break,
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "compaction stalled");
                continue;
            }
        };
        let (done_tx, done) = mpsc::channel();
        {
            let log = log.clone();
            let tag = format!("during-sync-{}", blocked.len());
            std::thread::spawn(move || {
                let first = log.read(0, 1 << 20, None).unwrap();
                assert!(!first.data.is_empty());
                let info = log.append(&batch(&tag, 2, 1)).unwrap();
                let r = log.read(info.base_offset, 1 << 20, None).unwrap();
                let (h, _) = BatchIter::new(&r.data).next().unwrap().unwrap();
                assert_eq!(h.base_offset, info.base_offset);
                done_tx.send(()).unwrap();
            });
        }
        done.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "an append and reads did not finish while compaction fsyncs {}",
                    path.display()
                )
            });
        blocked.push(path);
        release.send(()).unwrap();
    }
    let outcome = compaction.join().unwrap();
    assert!(outcome.segments_cleaned > 0, "{outcome:?}");
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        blocked
            .iter()
            .any(|p| name(p) == "00000000000000000000.log.cleaned"),
        "{blocked:?}"
    );
    assert!(
        blocked.iter().filter(|p| **p == dir()).count() >= 2 * outcome.segments_cleaned,
        "the directory is fsynced before and after each swap: {blocked:?}"
    );
    // The compacted log and the appends made meanwhile survive a crash.
    sim.set_sync_hook(None);
    let (values_before, end) = snapshot(&log);
    log.flush().unwrap();
    drop(log);
    sim.crash();
    let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
    assert_eq!(snapshot(&log), (values_before, end));
}

/// A log with several sealed segments, one of them compacted (gaps in its
/// offsets), and an active segment; everything durable.
fn build_compacted_log(sim: &SimIo) -> Log {
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        ..config(FsyncPolicy::Never)
    };
    let log = open(sim, config).unwrap();
    for i in 0..14 {
        let key = if i % 2 == 0 { "same" } else { "other" };
        let b = batch_of(
            Compression::None,
            &[
                record(Some(key), Some(&format!("v{i}a")), 1),
                record(Some(&format!("u{i}")), Some("x"), 1),
                record(Some(key), Some(&format!("v{i}b")), 1),
            ],
        );
        log.append(&b.clone()).unwrap();
    }
    let outcome = log.compact(10).unwrap();
    assert!(outcome.records_removed > 0);
    log.flush().unwrap();
    assert!(log.segment_count() >= 3);
    log
}

fn snapshot(log: &Log) -> (Vec<(i64, String)>, i64) {
    (values(&read_all(log)), log.end_offset())
}

#[test]
fn truncation_is_crash_safe_at_every_io_step() {
    let probe = SimIo::new(0);
    let log = build_compacted_log(&probe);
    let all = read_all(&log);
    let (old, old_end) = snapshot(&log);
    // Cuts: inside a batch of a compacted sealed segment, at a gap left by
    // compaction, at a segment boundary, inside the active segment.
    let offsets: Vec<i64> = all.iter().map(|r| r.offset).collect();
    let gap = (1..old_end)
        .find(|o| !offsets.contains(o))
        .expect("compaction left a gap");
    let cuts = [4, gap, 9, old_end - 2, 0];
    drop(log);
    for cut in cuts {
        // The expected outcome and the number of I/O steps, without a crash.
        let sim = SimIo::new(0);
        let log = build_compacted_log(&sim);
        let before = sim.mutations();
        log.truncate_to(cut).unwrap();
        let steps = sim.mutations() - before;
        let truncated = snapshot(&log);
        assert!(truncated.1 <= cut && truncated.1 < old_end);
        drop(log);
        let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
        assert_eq!(snapshot(&log), truncated, "truncation survives a reopen");
        drop(log);
        for k in 0..=steps {
            let sim = SimIo::new(k * 31 + cut as u64).with_sector_size(64);
            let log = build_compacted_log(&sim);
            sim.crash_after(k);
            let result = log.truncate_to(cut);
            assert_eq!(result.is_err(), k < steps, "cut {cut} crash after {k}");
            sim.cancel_crash();
            drop(log);
            sim.power_loss();
            sim.restart();
            let log = open(&sim, config(FsyncPolicy::Never))
                .unwrap_or_else(|e| panic!("cut {cut}, crash after {k}: {e}"));
            let got = snapshot(&log);
            assert!(
                got == (old.clone(), old_end) || got == truncated,
                "cut {cut}, crash after step {k} of {steps}: got {got:?}"
            );
            // The log works afterwards, and a repeated truncation gives the
            // truncated log.
            log.truncate_to(cut.min(log.end_offset())).unwrap();
            assert_eq!(snapshot(&log), truncated);
            let info = log.append(&batch("after", 1, 1)).unwrap();
            assert_eq!(info.base_offset, truncated.1);
            drop(log);
            sim.crash();
            let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
            assert!(log.end_offset() >= truncated.1);
        }
    }
}

/// `io::create_dir_all` (the storage node's data directory uses it) syncs
/// the parent of every directory it creates, so all of them survive a
/// power loss, and returns a failed sync.
#[test]
fn create_dir_all_syncs_the_parent_of_every_new_directory() {
    let sim = SimIo::new(3);
    sim.create_dir(Path::new("/srv")).unwrap();
    sim.sync_dir(Path::new("/")).unwrap();
    let synced: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    {
        let synced = synced.clone();
        sim.set_sync_hook(Some(Arc::new(move |p: &Path| {
            synced.lock().unwrap().push(p.to_path_buf());
        })));
    }
    streambus_log::io::create_dir_all(&sim, Path::new("/srv/data/storage")).unwrap();
    let mut synced = synced.lock().unwrap().clone();
    synced.sort();
    assert_eq!(synced, [PathBuf::from("/srv"), PathBuf::from("/srv/data")]);
    sim.crash();
    assert_eq!(sim.list(Path::new("/srv")), ["data"]);
    assert_eq!(sim.list(Path::new("/srv/data")), ["storage"]);

    sim.set_sync_hook(None);
    sim.fail_next(SimOp::SyncDir, "/srv");
    let err = streambus_log::io::create_dir_all(&sim, Path::new("/srv/other")).unwrap_err();
    assert!(err.to_string().contains("/srv"), "{err}");
}

#[test]
fn creating_the_log_directory_syncs_its_parents() {
    for seed in 0..20 {
        let sim = SimIo::new(seed);
        let log = Log::open_with(
            "/srv/streambus/topic-3",
            config(FsyncPolicy::Always),
            OpenOptions::new().io(Arc::new(sim.clone())),
        )
        .unwrap();
        log.append(&batch("x", 1, 1)).unwrap();
        drop(log);
        sim.crash();
        let names = sim.list(Path::new("/srv/streambus/topic-3"));
        assert!(
            names.contains(&"00000000000000000000.log".to_string()),
            "seed {seed}: {names:?}"
        );
        let log = Log::open_with(
            "/srv/streambus/topic-3",
            config(FsyncPolicy::Always),
            OpenOptions::new().io(Arc::new(sim.clone())),
        )
        .unwrap();
        assert_eq!(log.end_offset(), 1, "seed {seed}");
    }
    // A failed directory fsync fails the open.
    let sim = SimIo::new(1);
    sim.fail_next(SimOp::SyncDir, "/srv");
    let err = Log::open_with(
        "/srv/p",
        config(FsyncPolicy::Always),
        OpenOptions::new().io(Arc::new(sim.clone())),
    )
    .unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
}

#[test]
fn unreadable_or_corrupt_checkpoint_is_an_error_not_absent() {
    let sim = SimIo::new(4);
    let log = open(
        &sim,
        LogConfig {
            retention_bytes: Some(1),
            ..config(FsyncPolicy::Never)
        },
    )
    .unwrap();
    for i in 0..10 {
        log.append(&batch(&format!("b{i}"), 3, 1)).unwrap();
    }
    assert!(log.apply_retention(0).unwrap().segments_deleted > 0);
    let start = log.log_start_offset();
    drop(log);
    let checkpoint = dir().join("log-start-offset.checkpoint");
    let good = sim.contents(&checkpoint).unwrap();

    sim.fail_next(SimOp::Open, "log-start-offset.checkpoint");
    let err = open(&sim, config(FsyncPolicy::Never)).unwrap_err();
    assert!(
        matches!(&err, LogError::Io { context, .. } if context.contains("checkpoint")),
        "{err}"
    );

    sim.set_contents(&checkpoint, b"0\nnot a number\n").unwrap();
    let err = open(&sim, config(FsyncPolicy::Never)).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { file, .. } if file == &checkpoint),
        "{err}"
    );

    sim.set_contents(&checkpoint, &good).unwrap();
    let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn a_failed_write_is_undone_and_a_failed_undo_fails_the_log() {
    let sim = SimIo::new(5);
    let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
    log.append(&batch("a", 1, 1)).unwrap();
    let size = log.size_bytes();
    // The write fails, the partial batch is cut off, the log goes on.
    sim.fail_next(SimOp::Write, ".log");
    assert!(matches!(
        log.append(&batch("b", 1, 1)),
        Err(LogError::Io { .. })
    ));
    assert_eq!(log.failure(), None);
    assert_eq!(log.size_bytes(), size);
    let seg = dir().join("00000000000000000000.log");
    assert_eq!(sim.contents(&seg).unwrap().len() as u64, size);
    assert_eq!(log.append(&batch("c", 1, 1)).unwrap().base_offset, 1);
    // The write fails and cutting it off fails too: the file may hold a
    // partial batch, so the log is failed.
    sim.fail_next(SimOp::Write, ".log");
    sim.fail_next(SimOp::SetLen, ".log");
    assert!(log.append(&batch("d", 1, 1)).is_err());
    assert!(log.failure().is_some());
    assert!(matches!(
        log.append(&batch("e", 1, 1)),
        Err(LogError::Failed(_))
    ));
    drop(log);
    let log = open(&sim, config(FsyncPolicy::Never)).unwrap();
    assert_eq!(
        values(&read_all(&log)),
        vec![(0, "a-0".into()), (1, "c-0".into())]
    );
}

#[test]
fn a_failed_fsync_fails_the_log_until_it_is_reopened() {
    for power_loss in [false, true] {
        let sim = SimIo::new(6).with_sector_size(16);
        let log = open(&sim, config(FsyncPolicy::Always)).unwrap();
        for i in 0..5 {
            log.append(&batch(&format!("acked{i}"), 2, 1)).unwrap();
        }
        let acked = values(&read_all(&log));
        sim.fail_next(SimOp::SyncData, ".log");
        let err = log.append(&batch("unacked", 2, 1)).unwrap_err();
        assert!(matches!(err, LogError::Io { .. }), "{err}");
        let reason = log.failure().expect("the log is failed");
        assert!(reason.contains("fsync"), "{reason}");
        assert!(matches!(
            log.append(&batch("refused", 1, 1)),
            Err(LogError::Failed(_))
        ));
        assert!(matches!(log.flush(), Err(LogError::Failed(_))));
        // Reopen without restarting the process (optionally after the
        // machine lost power too).
        drop(log);
        if power_loss {
            sim.crash();
        }
        let log = open(&sim, config(FsyncPolicy::Always)).unwrap();
        assert_eq!(log.failure(), None);
        let got = values(&read_all(&log));
        assert_eq!(&got[..acked.len()], &acked[..], "acknowledged data kept");
        let rest = &got[acked.len()..];
        assert!(
            rest.is_empty() || rest == [(10, "unacked-0".into()), (11, "unacked-1".into())],
            "the unacknowledged batch is there whole or not at all: {rest:?}"
        );
        let info = log.append(&batch("again", 1, 1)).unwrap();
        assert_eq!(info.base_offset, got.len() as i64);
        assert_eq!(log.durable_offset(), info.last_offset + 1);
    }
}

/// A write or a segment creation that fails (no space left, say) fails
/// that append only: the log is not failed, the partial batch is gone, and
/// the next append succeeds once the disk allows it.
#[test]
fn a_failed_write_or_segment_creation_fails_only_that_append() {
    let sim = SimIo::new(7);
    let log = open(&sim, config(FsyncPolicy::Always)).unwrap();
    log.append(&batch("a", 2, 1)).unwrap();
    let end = log.end_offset();

    sim.fail_next(SimOp::Write, ".log");
    assert!(log.append(&batch("b", 2, 2)).is_err());
    assert_eq!(log.failure(), None);
    assert_eq!(log.end_offset(), end);

    // Fill the active segment so the next append rolls, and make creating
    // the new segment fail.
    while log.segment_count() == 1 {
        sim.fail_next(SimOp::Open, ".rolling");
        match log.append(&batch("c", 2, 3)) {
            Ok(_) => {
                // It fitted: no roll was attempted; the fault is unused.
                sim.clear_faults();
            }
            Err(_) => {
                assert_eq!(log.failure(), None, "a failed roll must not fail the log");
                log.append(&batch("d", 2, 4)).unwrap();
            }
        }
    }
    assert_eq!(log.failure(), None);
    let kept: Vec<String> = values(&read_all(&log))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(!kept.iter().any(|v| v.starts_with('b')), "{kept:?}");
    drop(log);
    let reopened = open(&sim, config(FsyncPolicy::Always)).unwrap();
    let again: Vec<String> = values(&read_all(&reopened))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(again, kept);
}

/// Logs behind one file-handle cache of a single descriptor: opening a
/// second log evicts the first one's active segment, which has unsynced
/// appends (`fsync.policy=never`), so the eviction fsyncs it. When that
/// fsync fails, the first log learns it at its next fsync and fails, as if
/// its own fsync had failed; the other log is unaffected.
#[test]
fn a_failed_fsync_of_an_evicted_segment_fails_its_log() {
    let sim = SimIo::new(9);
    let cache = streambus_log::HandleCache::new(Arc::new(sim.clone()), 1);
    let opts = || OpenOptions::new().io(Arc::new(cache.clone()));
    let a = Log::open_with("/data/a", config(FsyncPolicy::Never), opts()).unwrap();
    a.append(&batch("a", 3, 1)).unwrap();
    sim.fail_next(SimOp::SyncData, "/data/a/");
    let b = Log::open_with("/data/b", config(FsyncPolicy::Never), opts()).unwrap();
    let stats = cache.stats();
    assert_eq!(stats.eviction_sync_failures, 1, "{stats:?}");
    assert!(stats.peak_open <= 1, "{stats:?}");
    b.append(&batch("b", 2, 1)).unwrap();
    b.flush().unwrap();
    // Reads of `a` still work (its segment is reopened); its fsync fails.
    assert_eq!(values(&read_all(&a)).len(), 3);
    let err = a.flush().unwrap_err();
    assert!(err.to_string().contains("evicted"), "{err}");
    assert!(a.failure().is_some_and(|r| r.contains("fsync")));
    assert!(matches!(
        a.append(&batch("refused", 1, 1)),
        Err(LogError::Failed(_))
    ));
    // Reopened, it works again.
    drop(a);
    let a = Log::open_with("/data/a", config(FsyncPolicy::Never), opts()).unwrap();
    a.append(&batch("again", 1, 1)).unwrap();
    a.flush().unwrap();
    assert_eq!(values(&read_all(&b)).len(), 2);
}
