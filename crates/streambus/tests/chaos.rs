//! Randomized faults, seeded and repeatable: an idempotent producer writes
//! with acks=all to a 3-partition topic of replication factor 3
//! (`min.insync.replicas=2`) on three storage nodes and three controllers,
//! and topics are created one after another, while storage nodes are
//! killed and restarted or cut off from everything and healed, controllers
//! are killed and restarted, cut off from the storage nodes, or cut off
//! from their Raft peers (the Raft leader, chosen on purpose, half of the
//! time; sometimes from the storage nodes too) and healed, and the gateway
//! the producer writes through is killed and restarted, one at a time
//! (always a minority), chosen by a seeded generator.
//!
//! Independent checkers verify: every acknowledged record is at its
//! acknowledged offset, no record appears twice, each partition's records
//! are in the order they were sent (reading every partition back from the
//! beginning); the partitions' leader and partition epochs seen through
//! the gateway never went back; and committed metadata was never rolled
//! back, asking every controller directly during the run: its Raft term
//! never goes back, no two controllers lead in one term, two controllers
//! that applied the same log index hold the same metadata, and metadata at
//! a later index has every topic (with its id) and no partition epoch
//! below what an earlier index had. At the end every controller holds every
//! topic whose creation was acknowledged.
//!
//! `STREAMBUS_CHAOS_SEED` picks the seed (random otherwise; it is printed)
//! and `STREAMBUS_CHAOS_SECONDS` the length (default 45). `cargo xtask
//! chaos --seed N --duration 10m` runs it with both. `RUST_LOG` (e.g.
//! `streambus_gateway=debug,warn`) shows the services' logs.

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use harness::{Cluster, wait_partition};
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};
use streambus_proto::internal::controller_service_client::ControllerServiceClient;
use streambus_proto::internal::{ClusterMetadata, DescribeControllerRequest, GetMetadataRequest};

const TOPIC: &str = "chaos";
const PARTITIONS: u32 = 3;

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    /// Every seed its own sequence (splitmix64 turns it into a nonzero
    /// state).
    fn seeded(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

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
    /// Cut off from the other controllers (and, with `from_nodes`, from the
    /// storage nodes); `leader`: it led when chosen.
    IsolateController {
        id: u64,
        leader: bool,
        from_nodes: bool,
    },
    KillGateway,
}

/// One partition as applied: leader, leader epoch, partition epoch,
/// replicas, in-sync replicas.
type AppliedPartition = (u64, u64, u64, Vec<u64>, Vec<u64>);

/// What a controller applied at one log index, as far as it must be the
/// same on every controller (its own view of who leads is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    /// name -> (topic id, partitions).
    topics: BTreeMap<String, (String, Vec<AppliedPartition>)>,
    /// node id -> alive.
    nodes: BTreeMap<u64, bool>,
}

impl Applied {
    fn of(md: &ClusterMetadata) -> Applied {
        Applied {
            topics: md
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            (
                                p.leader,
                                p.leader_epoch,
                                p.partition_epoch,
                                p.replicas.clone(),
                                p.isr.clone(),
                            )
                        })
                        .collect();
                    (t.name.clone(), (t.topic_id.clone(), partitions))
                })
                .collect(),
            nodes: md.nodes.iter().map(|n| (n.node_id, n.alive)).collect(),
        }
    }

    /// Why `later` (applied at a higher log index) cannot follow `self`:
    /// topics are never deleted here and epochs only grow.
    fn rolled_back_in(&self, later: &Applied) -> Option<String> {
        for (name, (id, partitions)) in &self.topics {
            let Some((later_id, later_partitions)) = later.topics.get(name) else {
                return Some(format!("topic {name} disappeared"));
            };
            if later_id != id {
                return Some(format!("topic {name} changed id from {id} to {later_id}"));
            }
            if later_partitions.len() < partitions.len() {
                return Some(format!("topic {name} lost partitions"));
            }
            for (p, (a, b)) in partitions.iter().zip(later_partitions).enumerate() {
                if (b.1, b.2) < (a.1, a.2) {
                    return Some(format!(
                        "{name}/{p} went back from epochs {:?} to {:?}",
                        (a.1, a.2),
                        (b.1, b.2)
                    ));
                }
            }
        }
        None
    }
}

/// Asks every controller directly, again and again, for its Raft view and
/// its applied metadata, and checks that committed metadata never goes
/// back (see the module documentation). Returns how many snapshots it
/// checked.
fn check_controllers(
    controllers: BTreeMap<u64, SocketAddr>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let clients: BTreeMap<u64, ControllerServiceClient<tonic::transport::Channel>> =
            controllers
                .iter()
                .map(|(id, addr)| {
                    let channel = streambus_service::grpc::channel(&addr.to_string()).unwrap();
                    (*id, ControllerServiceClient::new(channel))
                })
                .collect();
        let mut terms: BTreeMap<u64, u64> = BTreeMap::new();
        let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
        let mut applied: BTreeMap<u64, (u64, Applied)> = BTreeMap::new();
        let mut checked = 0;
        let ask = Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) {
            for (id, client) in &clients {
                let mut c = client.clone();
                if let Ok(Ok(s)) =
                    tokio::time::timeout(ask, c.describe_controller(DescribeControllerRequest {}))
                        .await
                {
                    let s = s.into_inner();
                    let before = terms.entry(*id).or_insert(s.term);
                    assert!(
                        s.term >= *before,
                        "controller {id}'s term went back from {before} to {}",
                        s.term
                    );
                    *before = s.term;
                    if s.state == "leader" {
                        let leader = *leaders.entry(s.term).or_insert(*id);
                        assert_eq!(leader, *id, "two controllers led in term {}", s.term);
                    }
                }
                let Ok(Ok(md)) =
                    tokio::time::timeout(ask, c.get_metadata(GetMetadataRequest::default())).await
                else {
                    continue;
                };
                let md = md.into_inner();
                let now = Applied::of(&md);
                let v = md.version;
                checked += 1;
                if let Some((from, same)) = applied.get(&v) {
                    assert_eq!(
                        same, &now,
                        "controllers {from} and {id} applied different metadata at index {v}"
                    );
                    continue;
                }
                if let Some((_, (from, earlier))) = applied.range(..v).next_back()
                    && let Some(why) = earlier.rolled_back_in(&now)
                {
                    panic!(
                        "controller {id} at index {v} after controller {from}'s earlier index: {why}"
                    );
                }
                if let Some((w, (from, later))) = applied.range(v..).next()
                    && let Some(why) = now.rolled_back_in(later)
                {
                    panic!("controller {from} at index {w} after controller {id} at {v}: {why}");
                }
                applied.insert(v, (*id, now));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        checked
    })
}

fn fault_kind(fault: &Fault) -> &'static str {
    match fault {
        Fault::Kill(_) => "kill node",
        Fault::Isolate(_) => "isolate node",
        Fault::KillController(_) => "kill controller",
        Fault::CutController(_) => "cut controller from nodes",
        Fault::IsolateController {
            leader: true,
            from_nodes: false,
            ..
        } => "isolate controller leader",
        Fault::IsolateController {
            leader: true,
            from_nodes: true,
            ..
        } => "isolate controller leader from all",
        Fault::IsolateController {
            leader: false,
            from_nodes: false,
            ..
        } => "isolate controller",
        Fault::IsolateController {
            leader: false,
            from_nodes: true,
            ..
        } => "isolate controller from all",
        Fault::KillGateway => "kill gateway",
    }
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
    streambus_service::telemetry::init(streambus_service::telemetry::LogFormat::Text, "off", None);
    let mut rng = Rng::seeded(seed);

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

    let stop = Arc::new(AtomicBool::new(false));

    // Committed metadata must never go back, on any controller.
    let metadata_checks = check_controllers(
        cluster
            .controllers
            .iter()
            .map(|(id, c)| (*id, c.addr))
            .collect(),
        stop.clone(),
    );

    // Topics are created all along; each acknowledged one must survive.
    let creating = {
        let client = cluster.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut created: Vec<(String, String)> = Vec::new();
            let mut refused = 0usize;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("meta-{n}");
                n += 1;
                match client.create_topic(&name, 1, 1, HashMap::new()).await {
                    Ok(t) => created.push((name, t.topic_id)),
                    Err(e) => {
                        refused += 1;
                        println!("topic {name} not acknowledged: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            (created, refused)
        })
    };

    // The partitions' epochs must never go back.
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
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        let id = 1 + rng.below(3);
        let kind = rng.below(9);
        let on_leader = rng.below(2) == 0;
        let from_nodes = rng.below(3) == 0;
        let hold = Duration::from_millis(500 + rng.below(2500));
        let fault = match kind {
            0 | 1 => Fault::Kill(id),
            2 | 3 => Fault::Isolate(id),
            4 => Fault::KillController(id),
            5 => Fault::CutController(id),
            6 | 7 => {
                // The Raft leader, the interesting case, half of the time.
                let leader = match on_leader {
                    true => cluster.controller_leader().await.map(|(l, _)| l),
                    false => None,
                };
                Fault::IsolateController {
                    id: leader.unwrap_or(id),
                    leader: leader.is_some(),
                    from_nodes,
                }
            }
            _ => Fault::KillGateway,
        };
        println!("fault {faults}: {fault:?}");
        *counts.entry(fault_kind(&fault)).or_insert(0) += 1;
        match fault {
            Fault::Kill(id) => cluster.kill_node(id).await,
            Fault::Isolate(id) => cluster.isolate(id),
            Fault::KillController(id) => cluster.kill_controller(id).await,
            Fault::CutController(id) => cluster.cut_controller(id, true),
            Fault::IsolateController { id, from_nodes, .. } => {
                cluster.isolate_controller(id, true);
                if from_nodes {
                    cluster.cut_controller(id, true);
                }
            }
            Fault::KillGateway => cluster.kill_gateway().await,
        }
        faults += 1;
        // A controller cut off from its peers stays so for a few seconds:
        // long enough for the others to elect a leader and for the storage
        // nodes to move to it.
        let hold = match fault {
            Fault::IsolateController { .. } => hold + Duration::from_secs(2),
            _ => hold,
        };
        tokio::time::sleep(hold).await;
        match fault {
            Fault::Kill(id) => cluster.start_node(id).await,
            Fault::Isolate(id) => cluster.heal(id),
            Fault::KillController(id) => cluster.start_controller(id).await,
            Fault::CutController(id) => cluster.cut_controller(id, false),
            Fault::IsolateController { id, .. } => {
                cluster.isolate_controller(id, false);
                cluster.cut_controller(id, false);
            }
            Fault::KillGateway => cluster.start_gateway().await,
        }
        // The next fault only once the cluster is whole again, so at most
        // one of three nodes (and of three controllers) is ever down or
        // cut off.
        wait_in_sync(&client).await;
        cluster.wait_controllers_whole().await;
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = producing.await.unwrap();
    watcher.await.unwrap();
    let (created, refused) = creating.await.unwrap();
    let snapshots = metadata_checks.await.unwrap();
    println!(
        "{faults} faults ({counts:?}), {} records acknowledged, {failed} not; {} topics created, {refused} not; {snapshots} controller metadata snapshots checked",
        acked.len(),
        created.len()
    );
    assert!(faults > 0 && !acked.is_empty());

    // Every controller ends with the same metadata, holding every topic
    // whose creation was acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let mut views = Vec::new();
        for id in cluster.controllers.keys() {
            views.push(
                cluster
                    .controller_metadata(*id)
                    .await
                    .map(|md| Applied::of(&md)),
            );
        }
        if views.iter().all(|v| v.is_some() && *v == views[0]) {
            break views[0].clone().unwrap();
        }
        assert!(Instant::now() < deadline, "the controllers never converged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (name, id) in &created {
        assert_eq!(
            last.topics.get(name).map(|t| &t.0),
            Some(id),
            "acknowledged topic {name} is not on every controller with its id"
        );
    }

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

#[test]
fn the_metadata_check_finds_lost_topics_and_epochs_gone_back() {
    let applied = |topics: &[(&str, &str, u64)]| Applied {
        topics: topics
            .iter()
            .map(|(name, id, epoch)| {
                (
                    name.to_string(),
                    (id.to_string(), vec![(1, *epoch, *epoch, vec![1], vec![1])]),
                )
            })
            .collect(),
        nodes: BTreeMap::new(),
    };
    let earlier = applied(&[("a", "x", 2)]);
    assert_eq!(
        earlier.rolled_back_in(&applied(&[("a", "x", 3), ("b", "y", 0)])),
        None
    );
    assert!(earlier.rolled_back_in(&applied(&[("b", "y", 0)])).is_some());
    assert!(earlier.rolled_back_in(&applied(&[("a", "z", 2)])).is_some());
    assert!(earlier.rolled_back_in(&applied(&[("a", "x", 1)])).is_some());
    assert_ne!(Rng::seeded(2).next(), Rng::seeded(3).next());
}
