//! `streambus-bench groups` end to end against an in-process dev instance,
//! with small figures: every phase runs and reports what it measured.

use std::time::Duration;

use streambus::dev::{self, DevListeners};
use streambus::settings::Settings;
use streambus_bench::groups::{self, Options};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_measures_commits_rebalances_and_group_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = DevListeners::ephemeral().await.unwrap();
    let endpoints = listeners.endpoints().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let path = dir.path().to_path_buf();
    let mut settings = Settings::default();
    settings.storage_node.group_heartbeat_interval_ms = 200;
    let dev = tokio::spawn(async move {
        dev::run(
            settings,
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

    let report = groups::run(Options {
        gateway: endpoints.gateway.to_string(),
        groups: 20,
        concurrency: 4,
        commit_duration: Duration::from_millis(500),
        records: 2_000,
        record_bytes: 100,
        partitions: 3,
        rounds: 1,
    })
    .await
    .unwrap();
    assert!(
        report.commits > 0 && report.commits_per_second > 0.0,
        "{report:?}"
    );
    assert!(report.commit_p99_ms >= report.commit_p50_ms);
    assert_eq!(report.rebalance_ms.len(), 1);
    assert!(report.rebalance_median_ms > 0.0);
    assert!(report.direct_median > 0.0 && report.group_median > 0.0);
    assert!(report.markdown().contains("group / direct"));

    let _ = stop_tx.send(());
    dev.await.unwrap().unwrap();
}
