//! Randomized faults, seeded and repeatable: an idempotent producer writes
//! with acks=all to a 3-partition topic of replication factor 3
//! (`min.insync.replicas=2`) on three storage nodes and three controllers,
//! while storage nodes are killed and restarted or cut off from everything
//! and healed, controllers are killed and restarted or cut off from the
//! storage nodes and healed, and the gateway the producer writes through is
//! killed and restarted, one at a time (always a minority), chosen by a
//! seeded generator. An independent checker then
//! reads every partition back from the beginning and verifies: every
//! acknowledged record is at its acknowledged offset, no record appears
//! twice, each partition's records are in the order they were sent, and
//! the partitions' leader and partition epochs seen during the run never
//! went back.
//!
//! `STREAMBUS_CHAOS_SEED` picks the seed (random otherwise; it is printed)
//! and `STREAMBUS_CHAOS_SECONDS` the length (default 45). `cargo xtask
//! chaos --seed N --duration 10m` runs it with both. `RUST_LOG` (e.g.
//! `streambus_gateway=debug,warn`) shows the services' logs.

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use harness::{Cluster, wait_partition};
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const TOPIC: &str = "chaos";
const PARTITIONS: u32 = 3;

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(u64),
    Isolate(u64),
    KillController(u64),
    CutController(u64),
    KillGateway,
}

/// Waits until every partition has all three replicas in sync.
async fn wait_in_sync(client: &Client) {
    for p in 0..PARTITIONS {
        wait_partition(client, TOPIC, p, "fully in sync", |d| {
            d.isr.len() == 3 && d.leader != 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_and_partitions_lose_duplicate_and_reorder_nothing() {
    let seed = std::env::var("STREAMBUS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let seconds: u64 = std::env::var("STREAMBUS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    println!("chaos seed {seed}, {seconds} s (rerun: cargo xtask chaos --seed {seed})");
    // Silent unless RUST_LOG asks.
    streambus_service::telemetry::init(streambus_service::telemetry::LogFormat::Text, "off");
    let mut rng = Rng(seed | 1);

    let mut cluster = Cluster::start_with(3, 3).await;
    let client = cluster.client().await;
    client
        .create_topic(
            TOPIC,
            PARTITIONS,
            3,
            HashMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
        )
        .await
        .unwrap();
    wait_in_sync(&client).await;

    // The partitions' epochs must never go back.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let client = cluster.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(t) = client.describe_topic(TOPIC).await {
                    for p in t.partitions {
                        let now = (p.leader_epoch, p.partition_epoch);
                        let before = seen.entry(p.partition).or_insert(now);
                        assert!(
                            now >= *before,
                            "partition {} went back from epochs {before:?} to {now:?}",
                            p.partition
                        );
                        *before = now;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The workload: rounds of records to every partition, in order.
    let producing = {
        let client = cluster.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let producer = client.producer(ProducerConfig {
                delivery_timeout: Duration::from_secs(120),
                ..ProducerConfig::default()
            });
            let mut acked: Vec<(u32, i64, String)> = Vec::new();
            let mut failed = 0usize;
            let mut seq = [0u64; PARTITIONS as usize];
            while !stop.load(Ordering::Relaxed) {
                let mut round = Vec::new();
                for i in 0..300u32 {
                    let p = i % PARTITIONS;
                    let value = format!("p{p}-{}", seq[p as usize]);
                    seq[p as usize] += 1;
                    let record = Record {
                        value: Some(Bytes::from(value.clone())),
                        ..Record::default()
                    };
                    round.push((value, producer.send(TOPIC, record, Some(p)).await.unwrap()));
                }
                producer.flush().await;
                for (value, d) in round {
                    match d.await {
                        Ok(m) => acked.push((m.partition, m.offset, value)),
                        Err(e) => {
                            failed += 1;
                            println!("not acknowledged: {value}: {e}");
                        }
                    }
                }
            }
            producer.close().await;
            (acked, failed)
        })
    };

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut faults = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        let id = 1 + rng.below(3);
        let fault = match rng.below(7) {
            0 | 1 => Fault::Kill(id),
            2 | 3 => Fault::Isolate(id),
            4 => Fault::KillController(id),
            5 => Fault::CutController(id),
            _ => Fault::KillGateway,
        };
        println!("fault {faults}: {fault:?}");
        match fault {
            Fault::Kill(id) => cluster.kill_node(id).await,
            Fault::Isolate(id) => cluster.isolate(id),
            Fault::KillController(id) => cluster.kill_controller(id).await,
            Fault::CutController(id) => cluster.cut_controller(id, true),
            Fault::KillGateway => cluster.kill_gateway().await,
        }
        faults += 1;
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
        match fault {
            Fault::Kill(id) => cluster.start_node(id).await,
            Fault::Isolate(id) => cluster.heal(id),
            Fault::KillController(id) => cluster.start_controller(id).await,
            Fault::CutController(id) => cluster.cut_controller(id, false),
            Fault::KillGateway => cluster.start_gateway().await,
        }
        // The next fault only once the cluster is whole again, so at most
        // one of three nodes is ever down or cut off.
        wait_in_sync(&client).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = producing.await.unwrap();
    watcher.await.unwrap();
    println!(
        "{faults} faults, {} records acknowledged, {failed} not",
        acked.len()
    );
    assert!(faults > 0 && !acked.is_empty());

    // The independent check: read everything back.
    let offsets = client.partition_offsets(TOPIC).await.unwrap();
    let total: i64 = offsets
        .iter()
        .map(|o| o.high_watermark - o.log_start_offset)
        .sum();
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(TOPIC)
        })
        .await
        .unwrap();
    let mut log: HashMap<(u32, i64), String> = HashMap::new();
    let mut order: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    while (log.len() as i64) < total {
        let r = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("the log is readable up to its high watermark")
            .expect("open")
            .unwrap();
        let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
        let n: u64 = value.rsplit('-').next().unwrap().parse().unwrap();
        order.entry(r.partition).or_default().push(n);
        assert!(
            log.insert((r.partition, r.offset), value).is_none(),
            "offset read twice"
        );
    }
    let values: Vec<&String> = log.values().collect();
    let distinct: HashSet<&&String> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "a record was written twice");
    for (p, seqs) in &order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p} is out of send order"
        );
    }
    for (p, offset, value) in &acked {
        assert_eq!(
            log.get(&(*p, *offset)),
            Some(value),
            "acknowledged {value} is not at {p}/{offset}"
        );
    }
    // Without faults on the producer's side every record gets through.
    assert_eq!(failed, 0, "records were not acknowledged (seed {seed})");
    assert_eq!(log.len(), acked.len(), "unacknowledged records in the log");
}
