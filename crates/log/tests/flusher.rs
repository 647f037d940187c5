//! Interval logs share flusher threads: many partitions, few threads. A
//! test binary of its own, so that the process's thread count means
//! something.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use streambus_log::sim::SimIo;
use streambus_log::{Flusher, FsyncPolicy, Log, LogConfig, OpenOptions};

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn interval(ms: u64) -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(ms)),
        ..LogConfig::default()
    }
}

fn wait_durable(log: &Log, within: Duration) -> Duration {
    let start = Instant::now();
    while log.durable_offset() < log.end_offset() {
        assert!(
            start.elapsed() < within,
            "not durable after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

#[test]
fn many_interval_logs_share_one_flusher_thread() {
    let sim = SimIo::new(7);
    let before = threads();
    // No flusher given: the process-wide one.
    let logs: Vec<Log> = (0..500)
        .map(|i| {
            Log::open_with(
                format!("/data/p{i}"),
                interval(50),
                OpenOptions::new().io(Arc::new(sim.clone())),
            )
            .unwrap()
        })
        .collect();
    let after = threads();
    assert!(
        after <= before + 1,
        "500 interval logs started {} threads",
        after - before
    );
    assert_eq!(Flusher::global().unwrap().registered(), 500);
    for log in &logs[..20] {
        log.append(&batch("x", 1, 1)).unwrap();
        assert_eq!(log.durable_offset(), 0);
    }
    // Each becomes durable within about its interval (generous bound for a
    // busy machine).
    for log in &logs[..20] {
        wait_durable(log, Duration::from_secs(5));
    }
    // And stays within it for later appends, round after round.
    let log = &logs[0];
    for i in 0..3 {
        log.append(&batch(&format!("again{i}"), 1, 1)).unwrap();
        wait_durable(log, Duration::from_secs(5));
    }
    // Dropped logs unregister.
    drop(logs);
    assert_eq!(Flusher::global().unwrap().registered(), 0);
    assert!(threads() <= before + 1);

    // An explicit flusher: one more thread for any number of logs, gone
    // when the flusher and its logs are dropped.
    let before = threads();
    let flusher = Flusher::new().unwrap();
    let logs: Vec<Log> = (0..50)
        .map(|i| {
            Log::open_with(
                format!("/data/q{i}"),
                interval(20),
                OpenOptions::new()
                    .io(Arc::new(sim.clone()))
                    .flusher(flusher.clone()),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(threads(), before + 1);
    assert_eq!(flusher.registered(), 50);
    assert_eq!(Flusher::global().unwrap().registered(), 0);
    logs[7].append(&batch("y", 1, 1)).unwrap();
    wait_durable(&logs[7], Duration::from_secs(5));
    drop(logs);
    drop(flusher);
    assert_eq!(threads(), before);
}
