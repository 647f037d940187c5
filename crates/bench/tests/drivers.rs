//! Each driver end to end through the shared runner: StreamBus against an
//! in-process dev instance (always), Kafka and NATS JetStream against
//! local peers when one is listening (`cargo xtask peer kafka start`,
//! `cargo xtask peer nats start`), skipped with a message otherwise.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use streambus::dev::{self, DevListeners};
use streambus::settings::Settings;
use streambus_bench::driver::{self, Endpoints};
use streambus_bench::report::Report;
use streambus_bench::runner::{self, RunOptions};
use streambus_bench::workload::{Durability, Workload};
use tokio::sync::oneshot;

/// A short workload: a second of warm-up, two measured seconds.
fn short(rate: u64, durability: Durability) -> Workload {
    Workload {
        name: "smoke".to_string(),
        partitions_per_topic: 4,
        consumers_per_topic: 2,
        producer_rate: rate,
        duration: Duration::from_secs(2),
        warmup: Duration::from_secs(1),
        report_interval: Duration::from_secs(1),
        durability,
        max_outstanding_bytes: 4 * 1024 * 1024,
        ..Workload::default()
    }
}

fn assert_complete(report: &Report, what: &str) {
    let r = &report.results;
    assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
    assert!(r.measured.acked > 0, "{what}: nothing acknowledged");
    assert_eq!(r.total.failed, 0, "{what}");
    assert_eq!(r.backlog_at_end, 0, "{what}: consumers read everything");
    assert_eq!(r.total.received, r.total.acked, "{what}");
    assert!(r.publish_latency.count > 0, "{what}");
    assert!(r.end_to_end_latency.count > 0, "{what}");
    assert!(r.end_to_end_latency.p50_ms > 0.0, "{what}");
    assert!(!report.intervals.is_empty(), "{what}");
    assert!(report.machine.cores >= 1, "{what}");
}

/// Says a test was skipped where CI's log shows it: straight to stderr,
/// which the test harness does not capture (it captures `println!`).
fn skip(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn peer(env: &str, default: &str) -> Option<String> {
    let addr = std::env::var(env).unwrap_or_else(|_| default.to_string());
    let reachable = addr
        .parse()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok());
    reachable.then_some(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streambus_driver_measures_a_fixed_rate_and_a_max_rate_run() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = DevListeners::ephemeral().await.unwrap();
    let gateway = listeners.endpoints().unwrap().gateway.to_string();
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

    let endpoints = Endpoints {
        streambus: gateway,
        ..Endpoints::default()
    };
    let driver: Arc<dyn driver::Driver> =
        Arc::from(driver::build("streambus", &endpoints).unwrap());

    let fixed = short(2_000, Durability::Fsync);
    let report = runner::run(
        driver.clone(),
        &fixed,
        RunOptions {
            quiet: true,
            server_pid: None,
        },
    )
    .await
    .unwrap();
    assert_complete(&report, "fixed rate");
    let r = &report.results;
    // 2 000 msg/s for 1 s of warm-up and 2 measured seconds: the schedule
    // holds over the run (a slow start is caught up, never skipped).
    assert!(
        (5_000..=6_600).contains(&r.total.sent),
        "fixed rate kept over the run: {}",
        r.total.sent
    );
    // The measured window excludes the warm-up second, so it holds fewer
    // acknowledgments than the run; how many depends on how fast fsyncs
    // complete on a loaded machine, so only the bounds are checked.
    assert!(
        r.measured.acked > 0 && r.measured.acked < r.total.acked && r.measured.acked <= 6_000,
        "measured window: {} of {} acknowledged",
        r.measured.acked,
        r.total.acked
    );
    let delay = r.publish_delay.expect("a fixed rate has a schedule");
    assert!(delay.count > 0);

    let max = Workload {
        durability: Durability::PageCache,
        ..short(0, Durability::PageCache)
    };
    // The server runs in this process: measured as "the server" too, its
    // figures are there (not their split).
    let options = RunOptions {
        quiet: true,
        server_pid: Some(std::process::id()),
    };
    let report = runner::run(driver, &max, options).await.unwrap();
    assert_complete(&report, "max rate");
    assert!(report.results.publish_delay.is_none());
    let cpu = report.results.cpu.expect("CPU per message measured");
    assert!(
        cpu.client_s > 0.0 && cpu.client_s_per_million > 0.0,
        "{cpu:?}"
    );
    assert!(cpu.server_s_per_million.is_some_and(|s| s > 0.0), "{cpu:?}");
    assert!(
        report
            .intervals
            .iter()
            .filter(|l| !l.warmup)
            .all(|l| l.cpu.is_some()),
        "every measured interval carries its CPU"
    );
    assert!(
        report
            .results
            .summary_lines()
            .iter()
            .any(|l| l.starts_with("cpu: client")),
        "{:?}",
        report.results.summary_lines()
    );
    assert_eq!(report.settings["topic_configs"]["fsync.policy"], "never");

    stop_tx.send(()).unwrap();
    dev.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_driver_against_a_local_peer() {
    let Some(addr) = peer("STREAMBUS_BENCH_KAFKA", "127.0.0.1:9092") else {
        skip(&format!(
            "skipped: no Kafka peer at {} (start one with `cargo xtask peer kafka start`, or set STREAMBUS_BENCH_KAFKA)",
            std::env::var("STREAMBUS_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
        ));
        return;
    };
    let endpoints = Endpoints {
        kafka: addr,
        ..Endpoints::default()
    };
    let driver: Arc<dyn driver::Driver> = Arc::from(driver::build("kafka", &endpoints).unwrap());
    let report = runner::run(
        driver,
        &short(2_000, Durability::Fsync),
        RunOptions {
            quiet: true,
            server_pid: None,
        },
    )
    .await
    .unwrap();
    assert_complete(&report, "kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_driver_against_a_local_peer() {
    let Some(addr) = peer("STREAMBUS_BENCH_NATS", "127.0.0.1:4222") else {
        skip(&format!(
            "skipped: no NATS peer at {} (start one with `cargo xtask peer nats start`, or set STREAMBUS_BENCH_NATS)",
            std::env::var("STREAMBUS_BENCH_NATS").unwrap_or_else(|_| "127.0.0.1:4222".into())
        ));
        return;
    };
    let endpoints = Endpoints {
        nats: addr,
        nats_monitor: std::env::var("STREAMBUS_BENCH_NATS_MONITOR")
            .unwrap_or_else(|_| "127.0.0.1:8222".into()),
        ..Endpoints::default()
    };
    let driver: Arc<dyn driver::Driver> = Arc::from(driver::build("nats", &endpoints).unwrap());
    // The peer's fsync mode is a server setting: use whichever it runs.
    let mut last = None;
    for durability in [Durability::Fsync, Durability::PageCache] {
        match runner::run(
            driver.clone(),
            &short(2_000, durability),
            RunOptions {
                quiet: true,
                server_pid: None,
            },
        )
        .await
        {
            Ok(report) => {
                assert_complete(&report, "nats");
                return;
            }
            Err(e) if e.to_string().contains("durability") => last = Some(e),
            Err(e) => panic!("nats: {e:#}"),
        }
    }
    panic!("nats: {:#}", last.unwrap());
}
