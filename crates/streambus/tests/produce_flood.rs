//! A produce flood against a slow disk: many streams, `acks=ALL`,
//! replication factor 3, every fsync slow. The gateway and the storage
//! nodes hold what is in flight within their memory budgets: producers are
//! slowed by flow control (the budgets fill and writes wait), nothing is
//! refused, and every acknowledged record is read back.

mod harness;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{StartFrom, SubscribeOptions};
use streambus_log::io::{Io, IoFile, OpenMode, StdIo};
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use streambus_proto::v1::{Acks, ProduceBatch, ProduceStreamRequest, Record};
use streambus_service::budget::MemoryBudget;

const MIB: usize = 1024 * 1024;
/// Each role's budget: the smallest allowed (one largest batch).
const BUDGET: usize = 128 * MIB;
const PARTITIONS: u32 = 4;
const STREAMS: usize = 48;
const BATCHES: usize = 40;
const RECORDS: usize = 100;
const VALUE: usize = 1024;
/// How long every fsync of every storage node takes.
const FSYNC: Duration = Duration::from_millis(25);

/// The real file system with slow fsyncs.
#[derive(Debug)]
struct SlowDisk;

#[derive(Debug)]
struct SlowFile(Arc<dyn IoFile>);

impl IoFile for SlowFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        std::thread::sleep(FSYNC);
        self.0.sync_data()
    }
}

impl Io for SlowDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(SlowFile(StdIo.open(path, mode)?)))
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        StdIo.create_dir(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        StdIo.exists(path)
    }
    fn read_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        StdIo.read_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdIo.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdIo.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::thread::sleep(FSYNC);
        StdIo.sync_dir(dir)
    }
}

/// The highest use and waiter count seen of each budget.
#[derive(Debug, Default, Clone)]
struct Peak {
    used: usize,
    capacity: usize,
    waiters: usize,
}

fn sample(budgets: &[MemoryBudget], peaks: &mut HashMap<String, Peak>) {
    for b in budgets {
        let peak = peaks.entry(b.name().to_string()).or_default();
        peak.capacity = b.capacity();
        peak.used = peak.used.max(b.in_use());
        peak.waiters = peak.waiters.max(b.waiters());
    }
}

fn record(stream: usize, batch: usize, i: usize) -> Record {
    let mut value = vec![b'.'; VALUE];
    let id = format!("{stream}/{batch}/{i}");
    value[..id.len()].copy_from_slice(id.as_bytes());
    Record {
        key: None,
        value: Some(Bytes::from(value)),
        headers: vec![],
        timestamp_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_flood_against_a_slow_disk_stays_within_the_budgets() {
    let cluster = harness::Cluster::start_with_options(
        1,
        3,
        harness::Options {
            log_options: Some(streambus_log::OpenOptions::new().io(Arc::new(SlowDisk))),
            node_memory_budget: BUDGET as u64,
            gateway_memory_budget: BUDGET,
        },
    )
    .await;
    let client = cluster.client().await;
    client
        .create_topic(
            "flood",
            PARTITIONS,
            3,
            HashMap::from([
                ("fsync.policy".to_string(), "always".to_string()),
                ("min.insync.replicas".to_string(), "2".to_string()),
            ]),
        )
        .await
        .unwrap();

    // Every budget of every role, sampled while the flood runs.
    let mut budgets = cluster.gateway_metrics.as_ref().unwrap().budgets.all();
    for m in cluster.node_metrics.values() {
        budgets.extend(m.budgets.all());
    }
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peaks = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                sample(&budgets, &mut peaks);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peaks
        })
    };

    // Each stream on its own connection, as separate producer processes
    // would be, sending as fast as the gateway reads.
    let started = Instant::now();
    let mut streams = Vec::new();
    for s in 0..STREAMS {
        let gateway = cluster.gateway.clone();
        streams.push(tokio::spawn(async move {
            let mut producer = ProduceServiceClient::connect(format!("http://{gateway}"))
                .await
                .unwrap()
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let requests = futures::stream::iter(0..BATCHES).map(move |b| ProduceStreamRequest {
                sequence: b as u64,
                batch: Some(ProduceBatch {
                    topic: "flood".into(),
                    partition: Some(s as u32 % PARTITIONS),
                    records: (0..RECORDS).map(|i| record(s, b, i)).collect(),
                    encoded_batch: Bytes::new(),
                    traceparent: String::new(),
                }),
                acks: Acks::All as i32,
            });
            let mut responses = producer
                .produce_stream(requests)
                .await
                .unwrap()
                .into_inner();
            let mut acked = 0;
            while let Some(r) = tokio::time::timeout(Duration::from_secs(60), responses.message())
                .await
                .expect("acknowledgements keep coming")
                .expect("the stream does not fail")
            {
                let result = r.result.unwrap();
                assert!(
                    result.error.is_none(),
                    "stream {s} batch {}: {:?}",
                    r.sequence,
                    result.error
                );
                acked += result
                    .acks
                    .iter()
                    .map(|a| a.record_count as usize)
                    .sum::<usize>();
            }
            acked
        }));
    }
    let mut acked = 0;
    for s in streams {
        acked += s.await.unwrap();
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let peaks = sampler.await.unwrap();
    let total = STREAMS * BATCHES * RECORDS;
    assert_eq!(acked, total, "every record acknowledged, none refused");
    let mut names: Vec<_> = peaks.keys().cloned().collect();
    names.sort();
    for name in &names {
        let p = &peaks[name];
        eprintln!(
            "{name}: peak {} of {} MiB used, {} waiting",
            p.used / MIB,
            p.capacity / MIB,
            p.waiters
        );
        // A child budget counts a reservation while it waits for its
        // parent; only a whole budget is memory held.
        if !name.starts_with("gateway.max_in_flight") {
            assert!(p.used <= p.capacity, "{name} held more than its budget");
        }
    }
    eprintln!(
        "{total} records ({} MiB) acknowledged in {took:.1?}",
        total * VALUE / MIB
    );
    // The flood pressed against the gateway's budget: writes waited for
    // room, and what was in flight reached most of it.
    let gateway = &peaks["gateway.memory_budget_bytes"];
    assert!(
        gateway.used > BUDGET / 2,
        "the flood never filled the gateway's budget ({} MiB): not a flood",
        gateway.used / MIB
    );
    assert!(
        gateway.waiters > 0,
        "no produce write ever waited for the gateway's budget"
    );

    // Everything acknowledged is there, once, in each stream's order.
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new("flood")
        })
        .await
        .unwrap();
    let mut next: HashMap<usize, (usize, usize)> = HashMap::new();
    for _ in 0..total {
        let r = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("read back")
            .expect("subscription open")
            .unwrap();
        let value = r.value.unwrap();
        let id = std::str::from_utf8(&value[..value.iter().position(|&c| c == b'.').unwrap()])
            .unwrap()
            .to_string();
        let mut parts = id.split('/').map(|p| p.parse::<usize>().unwrap());
        let (s, b, i) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let expected = next.entry(s).or_insert((0, 0));
        assert_eq!((b, i), *expected, "stream {s} in order, each record once");
        *expected = if i + 1 == RECORDS {
            (b + 1, 0)
        } else {
            (b, i + 1)
        };
    }
    assert!(
        next.values().all(|&n| n == (BATCHES, 0)),
        "every stream read back whole"
    );
}
