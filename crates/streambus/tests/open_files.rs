//! Many partitions on one storage node with a small
//! `storage_node.max_open_files`: producing to every partition, reading
//! every partition back, and again after a restart, the process's open
//! file descriptors stay within the bound plus what sockets need, while
//! without the bound every partition would hold at least one.
//!
//! The only test of this binary: it counts the descriptors of the whole
//! test process (`/proc/self/fd`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const TOPIC: &str = "fd.many";
const PARTITIONS: u32 = 400;
const MAX_OPEN_FILES: u64 = 32;
/// Records per partition: 2 KiB values in 4 KiB segments, so every
/// partition rolls (a rename of a file whose handle may be evicted).
const PER_PARTITION: usize = 4;
/// Descriptors the process may open besides the partition logs' files
/// while the test runs: gRPC connections between the roles and from the
/// client, the HTTP scrape, the Raft store's files.
const OTHERS: usize = 32;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What the process's descriptors are, by kind (for failure messages).
fn fd_kinds() -> HashMap<String, usize> {
    let mut kinds = HashMap::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(e.path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if let Some((k, _)) = target.split_once(':') {
            k.to_string()
        } else {
            match std::path::Path::new(&target).extension() {
                Some(ext) => format!("*.{}", ext.to_string_lossy()),
                None => target,
            }
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// Samples the process's descriptor count every few milliseconds until
/// dropped; `max()` is the most seen.
struct FdWatch {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    /// The descriptors by kind when the most were seen.
    at_max: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdWatch {
    fn start() -> FdWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let at_max = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let thread = {
            let (stop, max, at_max) = (stop.clone(), max.clone(), at_max.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = open_fds();
                    if n > max.fetch_max(n, Ordering::Relaxed) {
                        *at_max.lock().unwrap() = fd_kinds();
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        FdWatch {
            stop,
            max,
            at_max,
            thread: Some(thread),
        }
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    fn at_max(&self) -> HashMap<String, usize> {
        self.at_max.lock().unwrap().clone()
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn start(dir: &std::path::Path) -> common::Dev {
    common::Dev::start_with(dir, |s| {
        s.storage_node.max_open_files = MAX_OPEN_FILES;
    })
    .await
}

fn value(partition: u32, i: usize) -> Bytes {
    let mut v = format!("p{partition}-r{i}-").into_bytes();
    v.resize(2048, b'.');
    Bytes::from(v)
}

/// Reads every partition from the start: each holds exactly its records,
/// in order.
async fn read_all(client: &Client) {
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(TOPIC)
        })
        .await
        .unwrap();
    let mut next: HashMap<u32, usize> = HashMap::new();
    let total = PARTITIONS as usize * PER_PARTITION;
    for _ in 0..total {
        let r = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("records keep arriving")
            .expect("stream open")
            .unwrap();
        let i = next.entry(r.partition).or_insert(0);
        assert_eq!(r.offset, *i as i64, "partition {}", r.partition);
        assert_eq!(r.value, Some(value(r.partition, *i)));
        *i += 1;
    }
    assert_eq!(next.len(), PARTITIONS as usize);
    assert!(next.values().all(|&n| n == PER_PARTITION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_stay_bounded_with_many_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start(dir.path()).await;
    let baseline = open_fds();
    let watch = FdWatch::start();
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic(
            TOPIC,
            PARTITIONS,
            1,
            HashMap::from([("segment.bytes".to_string(), "4096".to_string())]),
        )
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    // One batch per partition and round, so every partition rolls.
    for i in 0..PER_PARTITION {
        let mut deliveries = Vec::new();
        for p in 0..PARTITIONS {
            let record = Record {
                key: None,
                value: Some(value(p, i)),
                headers: vec![],
                timestamp_ms: 0,
            };
            deliveries.push(producer.send(TOPIC, record, Some(p)).await.unwrap());
        }
        producer.flush().await;
        for d in deliveries {
            d.await.unwrap();
        }
    }
    producer.close().await;
    read_all(&client).await;
    let offsets = client.partition_offsets(TOPIC).await.unwrap();
    assert_eq!(offsets.len(), PARTITIONS as usize);
    assert!(
        offsets
            .iter()
            .all(|p| p.high_watermark == PER_PARTITION as i64)
    );
    // Let the metrics export (every 500 ms) catch up.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let http = dev.endpoints.http;
    let open = common::metric(http, "streambus_storage_open_files");
    let limit = common::metric(http, "streambus_storage_open_files_limit");
    let reopens = common::metric(http, "streambus_storage_file_reopens_total");
    let over = common::metric(http, "streambus_storage_open_files_over_limit_total");
    let (max, kinds) = (watch.max(), watch.at_max());
    drop(watch);
    eprintln!(
        "{PARTITIONS} partitions, max_open_files {MAX_OPEN_FILES}: descriptors {baseline} before \
         the topic, at most {max} while producing and reading; log files open {open}, \
         reopens {reopens}, opened over the limit {over}"
    );
    assert_eq!(limit, MAX_OPEN_FILES as f64);
    assert!(open <= MAX_OPEN_FILES as f64, "{open} log files open");
    assert!(
        reopens > PARTITIONS as f64,
        "every partition's files were closed and reopened: {reopens}"
    );
    assert!(
        max <= baseline + MAX_OPEN_FILES as usize + OTHERS,
        "{max} descriptors open at once, {baseline} before the topic was created: {kinds:?}"
    );
    drop(client);
    dev.stop().await;
    // Every partition rolled: more segments than partitions.
    let segments = std::fs::read_dir(dir.path().join("storage"))
        .unwrap()
        .flatten()
        .flat_map(|p| std::fs::read_dir(p.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "log"))
        .count();
    assert!(segments >= 2 * PARTITIONS as usize, "{segments} segments");

    // After a restart every partition opens (recovery through the cache)
    // and reads back whole, still within the bound.
    let watch = FdWatch::start();
    let dev = start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    read_all(&client).await;
    let (max, kinds) = (watch.max(), watch.at_max());
    drop(watch);
    eprintln!("after a restart: at most {max} descriptors while opening and reading");
    assert!(
        max <= baseline + MAX_OPEN_FILES as usize + OTHERS,
        "{max} descriptors open at once after the restart: {kinds:?}"
    );
    drop(client);
    dev.stop().await;
}
