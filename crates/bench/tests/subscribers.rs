//! `streambus-bench subscribers` end to end against an in-process dev
//! instance: the process measured is the test itself, which hosts the
//! server.

use std::time::Duration;

use streambus::dev::{self, DevListeners};
use streambus::settings::Settings;
use streambus_bench::subscribers::{self, Options};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_measures_memory_and_reader_throughput_with_stalled_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = DevListeners::ephemeral().await.unwrap();
    let endpoints = listeners.endpoints().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let path = dir.path().to_path_buf();
    let dev = tokio::spawn(async move {
        dev::run(
            Settings::default(),
            listeners,
            Some(&path),
            async {
                let _ = stop_rx.await;
            },
            move |_| {
                let _ = ready_tx.send(());
            },
        )
        .await
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("dev instance ready within 30 s")
        .unwrap();

    let options = Options {
        gateway: endpoints.gateway.to_string(),
        metrics: endpoints.http.to_string(),
        server_pid: std::process::id(),
        counts: vec![2, 6],
        active: None,
        records: 3_000,
        fill_bytes: 4 * 1024 * 1024,
        record_bytes: 1024,
        partitions: 2,
        producer_rate: 50,
        idle: 8,
        settle: Duration::from_millis(100),
        first_response_timeout: Duration::from_secs(30),
        phase_timeout: Duration::from_secs(60),
        rounds: 1,
    };
    let report = subscribers::run(options).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.fill.records, 4096);
    assert!(report.server.budgets.gateway.capacity_bytes > 0);

    let idle = report.idle.as_ref().expect("idle connections measured");
    assert_eq!(idle.units, 8);
    // Both ends of each connection are in this process.
    assert!(idle.server_files_added >= 8, "{idle:?}");
    assert_eq!(idle.probe_alone.finished, 1);
    assert_eq!(idle.probe_with_subscriptions.finished, 1);

    assert_eq!(report.steps.len(), 2);
    for step in &report.steps {
        let plan = step.plan;
        let s = &step.summary;
        assert_eq!(s.stalled_opened, plan.stalled, "{plan:?}");
        assert_eq!(s.stalled_answered, plan.stalled, "{plan:?}");
        assert_eq!(s.baseline_readers_finished, plan.active, "{plan:?}");
        assert_eq!(s.loaded_readers_finished, plan.active, "{plan:?}");
        assert!(s.ratio_median > 0.0, "{s:?}");
        assert!(s.loaded_peak_rss_bytes > 0, "{s:?}");
        let round = &step.rounds[0];
        let per_reader = round.loaded.readers.records_per_reader;
        assert_eq!(per_reader, 3_000u64.div_ceil(plan.active as u64));
        assert!(round.loaded.readers.records >= per_reader * plan.active as u64);
        let produced = round.loaded.produced.as_ref().expect("producers ran");
        assert_eq!(produced.producers, 1);
        assert!(produced.acked > 0 && produced.failed == 0, "{produced:?}");
    }
    let md = report.markdown();
    assert!(md.contains("| 6 (3 + 3) | 1 |"), "{md}");
    assert!(!md.contains("Problems"), "{md}");

    stop_tx.send(()).unwrap();
    dev.await.unwrap().unwrap();
}
