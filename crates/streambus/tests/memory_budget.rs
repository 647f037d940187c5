//! Hundreds of subscriptions on one `streambus dev` process, most of them
//! stalled, over a topic with far more data than their buffers could hold:
//! the server's resident memory stays within its memory budgets plus a
//! fixed overhead, the subscriptions that read get everything, and stalled
//! ones resume where they were when they read again.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streambus_client::v1::consume_service_client::ConsumeServiceClient;
use streambus_client::v1::{Empty, StartPosition, SubscribeRequest, start_position};
use streambus_client::{Client, ProducerConfig, Record};

const MIB: u64 = 1024 * 1024;
/// Each role's budget (the smallest allowed: one largest decompressed
/// batch).
const BUDGET: u64 = 128 * MIB;
const PARTITIONS: u32 = 4;
const RECORDS: usize = 24_000;
const STALLED: usize = 200;
const ACTIVE: usize = 4;
const IDLE: usize = 100;

struct Server {
    child: Child,
    gateway: String,
    http: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path) -> Server {
    let budget = BUDGET.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--set", "gateway.listen_addr=127.0.0.1:0"])
        .args(["--set", "controller.listen_addr=127.0.0.1:0"])
        .args(["--set", "storage_node.listen_addr=127.0.0.1:0"])
        .args(["--set", "http.listen_addr=127.0.0.1:0"])
        .args(["--set", &format!("gateway.memory_budget_bytes={budget}")])
        .args([
            "--set",
            &format!("storage_node.memory_budget_bytes={budget}"),
        ])
        .args(["--set", "log.level=warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("streambus binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut gateway = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.trim().strip_prefix("gateway (public gRPC)") {
                gateway = Some(addr.trim().to_string());
            }
            if let Some(addr) = line.trim().strip_prefix("http (health/metrics)  http://")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((gateway.clone().unwrap(), addr.trim().to_string()));
            }
        }
    });
    let (gateway, http) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("dev instance prints its addresses when ready");
    Server {
        child,
        gateway,
        http,
    }
}

/// The bytes the gateway's memory budget has reserved, from `/metrics`.
fn gateway_memory_used(http: &str) -> u64 {
    common::metric(
        http,
        "streambus_gateway_memory_used_bytes{budget=\"gateway.memory_budget_bytes\"}",
    ) as u64
}

/// Resident memory of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn earliest(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.into(),
        start: Some(StartPosition {
            position: Some(start_position::Position::Earliest(Empty {})),
        }),
        ..SubscribeRequest::default()
    }
}

/// Reads `stream` until `want` records arrived; checks every partition's
/// offsets are contiguous from `from` (or 0).
async fn read_all(
    stream: &mut tonic::Streaming<streambus_client::v1::SubscribeResponse>,
    mut next: HashMap<u32, i64>,
    want: usize,
) -> usize {
    let mut got = 0;
    while got < want {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("a subscription keeps delivering")
            .expect("no stream error")
            .expect("the stream does not end");
        for r in &m.records {
            let expected = next.entry(m.partition).or_insert(r.offset);
            assert_eq!(r.offset, *expected, "partition {} in order", m.partition);
            *expected += 1;
            assert_eq!(r.value.as_ref().map(|v| v.len()), Some(1024));
        }
        got += m.records.len();
    }
    got
}

/// Runs [`ACTIVE`] readers, each on its own connection, reading every
/// record from the start; returns how long they took.
async fn read_everything(gateway: &str) -> Duration {
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..ACTIVE {
        let mut c = ConsumeServiceClient::connect(format!("http://{gateway}"))
            .await
            .unwrap();
        readers.push(tokio::spawn(async move {
            let mut s = c.subscribe(earliest("wide")).await.unwrap().into_inner();
            read_all(&mut s, HashMap::new(), RECORDS).await
        }));
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), RECORDS);
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriptions_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let pid = server.child.id();
    let client = Client::connect(server.gateway.clone()).await.unwrap();
    client
        .create_topic("wide", PARTITIONS, 1, HashMap::new())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let mut pending = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let mut value = vec![b'x'; 1024];
        value[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let record = Record {
            key: Some(Bytes::from((i % 64).to_string())),
            value: Some(Bytes::from(value)),
            ..Record::default()
        };
        pending.push(producer.send("wide", record, None).await.unwrap());
    }
    producer.flush().await;
    for d in pending {
        d.await.expect("acknowledged");
    }
    eprintln!("produced {RECORDS} records");
    // The readers alone first: what they take with nothing stalled.
    let alone = read_everything(&server.gateway).await;
    let before = rss(pid);

    // Stalled subscribers, each on its own connection like separate
    // consumer processes: each reads its first response, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut c = ConsumeServiceClient::connect(format!("http://{}", server.gateway))
            .await
            .unwrap();
        let mut s = c.subscribe(earliest("wide")).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .unwrap_or_else(|_| panic!("subscription {} gets no first response", stalled.len()))
            .unwrap()
            .unwrap();
        assert!(!first.records.is_empty());
        stalled.push((s, first, c));
    }
    eprintln!("{STALLED} subscriptions stalled");
    // Readers that read everything, meanwhile, each on its own connection
    // (on a connection it shares with streams nobody reads, HTTP/2's
    // connection window would stall it whatever the server does).
    let read_for = read_everything(&server.gateway).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "resident memory: {} MiB before the subscriptions, {} MiB with {STALLED} stalled and {ACTIVE} readers ({} MiB more); the readers took {read_for:.1?} for {RECORDS} records each, {alone:.1?} alone",
        before / MIB,
        after / MIB,
        grown / MIB
    );
    // Not a performance measurement (docs/benchmarks.md has that): a
    // check that stalled subscribers do not starve the others. When they
    // did, readers took 50 times as long.
    assert!(
        read_for < alone * 10 + Duration::from_secs(2),
        "readers took {read_for:.1?} beside {STALLED} stalled subscribers, {alone:.1?} alone"
    );
    // Both roles' budgets, plus a fixed overhead for connections, streams
    // and allocator slack. Without the budget each stalled subscription
    // buffers up to 4 responses of 1 MiB per partition: gigabytes.
    assert!(
        grown < 2 * BUDGET + 128 * MIB,
        "resident memory grew by {} MiB",
        grown / MIB
    );

    // Caught-up subscriptions waiting for new records hold no memory
    // while they wait, however many there are.
    let held = gateway_memory_used(&server.http);
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let latest = SubscribeRequest {
            topic: "wide".into(),
            ..SubscribeRequest::default()
        };
        let mut c = ConsumeServiceClient::connect(format!("http://{}", server.gateway))
            .await
            .unwrap();
        idle.push(c.subscribe(latest).await.unwrap().into_inner());
    }
    // Several long polls of every partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_held = gateway_memory_used(&server.http);
    eprintln!("{IDLE} idle subscriptions: {held} bytes held before, {idle_held} with them");
    assert!(
        idle_held <= held,
        "{IDLE} idle subscriptions hold {} bytes of the budget",
        idle_held - held
    );
    drop(idle);

    // Stalled subscriptions resume where they were.
    for (s, first, _) in stalled.iter_mut().take(3) {
        let next: HashMap<u32, i64> = first
            .records
            .last()
            .map(|r| (first.partition, r.offset + 1))
            .into_iter()
            .collect();
        let rest = read_all(s, next, RECORDS - first.records.len()).await;
        assert_eq!(rest + first.records.len(), RECORDS);
    }
    drop(stalled);
}
