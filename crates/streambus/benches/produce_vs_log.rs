//! What the gRPC path costs: the SDK producer into an in-process `dev`
//! instance against the partition log's own append rate, in one run, with
//! the same record size, batch size and fsync policy (`always`).
//!
//! `cargo bench -p streambus --bench produce_vs_log`
//! Environment: `BENCH_RECORDS` (default 200000), `BENCH_PARTITIONS` (4),
//! `BENCH_BATCH_BYTES` (262144).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use streambus::dev::{self, DevListeners};
use streambus::settings::Settings;
use streambus_client::{Client, ProducerConfig, Record};
use streambus_log::{Log, LogConfig};
use streambus_record::{BatchBuilder, Compression};

const RECORD_BYTES: usize = 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Rate {
    records_per_s: f64,
    mib_per_s: f64,
}

fn rate(records: usize, elapsed: Duration) -> Rate {
    let s = elapsed.as_secs_f64();
    Rate {
        records_per_s: records as f64 / s,
        mib_per_s: (records * RECORD_BYTES) as f64 / s / (1024.0 * 1024.0),
    }
}

/// Appends `records` 1 KiB records in batches of `batch_bytes` to
/// `partitions` logs from `partitions` threads, fsync `always`.
fn log_baseline(
    dir: &std::path::Path,
    records: usize,
    partitions: usize,
    batch_bytes: usize,
) -> Rate {
    let per_batch = (batch_bytes / (RECORD_BYTES + 16)).max(1);
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let mut builder = BatchBuilder::new(Compression::None);
    for _ in 0..per_batch {
        builder.push(&Record {
            key: None,
            value: Some(value.clone()),
            headers: vec![],
            timestamp_ms: 1,
        });
    }
    let batch = builder.build();
    let batches = records / per_batch / partitions;
    let logs: Vec<Log> = (0..partitions)
        .map(|p| Log::open(dir.join(format!("p{p}")), LogConfig::default()).expect("open log"))
        .collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for log in &logs {
            let batch = batch.clone();
            s.spawn(move || {
                for _ in 0..batches {
                    let b = batch.to_vec();
                    log.append(&b).expect("append");
                }
            });
        }
    });
    rate(batches * per_batch * partitions, started.elapsed())
}

async fn sdk_into_dev(
    dir: &std::path::Path,
    records: usize,
    partitions: u32,
    batch_bytes: usize,
) -> Rate {
    let listeners = DevListeners::ephemeral().await.expect("bind");
    let gateway = listeners.endpoints().expect("endpoints").gateway;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let data = dir.to_path_buf();
    let mut settings = Settings::default();
    settings.log.level = "warn".into();
    let server = tokio::spawn(async move {
        dev::run(
            settings,
            listeners,
            Some(&data),
            async {
                let _ = stop_rx.await;
            },
            move |_| {
                let _ = ready_tx.send(());
            },
        )
        .await
    });
    ready_rx.await.expect("dev ready");
    let client = Client::connect(gateway.to_string()).await.expect("connect");
    client
        .create_topic("bench", partitions, 1, HashMap::new())
        .await
        .expect("create topic");
    let producer = client.producer(ProducerConfig {
        max_batch_bytes: batch_bytes,
        ..ProducerConfig::default()
    });
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(records);
    for i in 0..records {
        let record = Record {
            key: None,
            value: Some(value.clone()),
            headers: vec![],
            timestamp_ms: 0,
        };
        pending.push(
            producer
                .send("bench", record, Some((i % partitions as usize) as u32))
                .await
                .expect("send"),
        );
    }
    producer.flush().await;
    for p in pending {
        p.await.expect("acked");
    }
    let r = rate(records, started.elapsed());
    producer.close().await;
    let _ = stop_tx.send(());
    server.await.expect("server task").expect("server");
    r
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // special: run a tiny smoke version there.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let records = if smoke {
        2_000
    } else {
        env_usize("BENCH_RECORDS", 200_000)
    };
    let partitions = env_usize("BENCH_PARTITIONS", 4);
    let batch_bytes = env_usize("BENCH_BATCH_BYTES", 256 * 1024);
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");

    let log = log_baseline(&dir.path().join("log"), records, partitions, batch_bytes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sdk = rt.block_on(sdk_into_dev(
        &dir.path().join("dev"),
        records,
        partitions as u32,
        batch_bytes,
    ));

    println!(
        "records: {records} x {RECORD_BYTES} B, partitions: {partitions}, batch: {batch_bytes} B, fsync: always"
    );
    println!(
        "log append (baseline): {:>10.0} records/s {:>8.1} MiB/s",
        log.records_per_s, log.mib_per_s
    );
    println!(
        "sdk -> dev over gRPC:  {:>10.0} records/s {:>8.1} MiB/s",
        sdk.records_per_s, sdk.mib_per_s
    );
    println!(
        "ratio sdk/log: {:.2}",
        sdk.records_per_s / log.records_per_s
    );
}
