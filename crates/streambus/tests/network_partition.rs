//! Network partitions, not crashes.
//!
//! - The leader of a replication-factor-3 partition is cut off from the
//!   controller, its followers and the gateway while an idempotent producer
//!   writes with acks=all through the gateway, and a client on the leader's
//!   side of the partition keeps writing to it directly. The minority side
//!   must acknowledge nothing with acks=all; the majority elects a new
//!   leader and goes on; after healing, the old leader drops what only it
//!   had, and every acknowledged record is read back exactly once, in order.
//! - The controller Raft leader is cut off from the other controllers (the
//!   storage nodes and the gateway still reach it): the majority elects a
//!   new controller leader, topics are created and acks=all writes go on,
//!   and after healing the old leader follows and every controller holds
//!   the same metadata, none of it rolled back.
//! - A storage node that reaches only that isolated controller leader stops
//!   acknowledging acks=all before the majority moves its leaderships.

mod harness;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use harness::{Cluster, wait_partition};
use streambus_client::{ProducerConfig, Record, StartFrom, SubscribeOptions};
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{AppendRequest, PartitionRef};
use streambus_proto::v1::Acks;
use streambus_record::{BatchBuilder, Compression};

const TOPIC: &str = "split";

fn one_record(value: &str) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        value: Some(Bytes::from(value.to_string())),
        ..Record::default()
    });
    b.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_loses_nothing() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    client
        .create_topic(
            TOPIC,
            1,
            3,
            HashMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
        )
        .await
        .unwrap();
    let first = wait_partition(&client, TOPIC, 0, "in sync", |p| p.isr.len() == 3).await;
    let leader = first.leader;

    let producer = client.producer(ProducerConfig {
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    });
    let mut pending = Vec::new();
    let mut next = 0u64;
    let mut send = async |count: u64, pending: &mut Vec<_>| {
        for _ in 0..count {
            let record = Record {
                value: Some(Bytes::from(format!("r{next}"))),
                ..Record::default()
            };
            pending.push((next, producer.send(TOPIC, record, Some(0)).await.unwrap()));
            next += 1;
        }
    };
    send(1_000, &mut pending).await;
    producer.flush().await;

    cluster.isolate(leader);
    send(1_000, &mut pending).await;

    // From the leader's side of the partition: acks=all is never
    // acknowledged (its followers cannot copy, and soon its lease lapses).
    let mut direct =
        StorageServiceClient::connect(format!("http://{}", cluster.nodes[&leader].direct_addr()))
            .await
            .unwrap();
    let mut refused = HashMap::new();
    for i in 0..20 {
        let r = direct
            .append(AppendRequest {
                partition: Some(PartitionRef {
                    topic: TOPIC.into(),
                    partition: 0,
                }),
                batch: one_record(&format!("minority{i}")),
                acks: Acks::All as i32,
                leader_epoch: first.leader_epoch,
            })
            .await;
        match r {
            Ok(ok) => panic!("the isolated leader acknowledged minority{i}: {ok:?}"),
            Err(status) => {
                let e = streambus_proto::Error::from_status(&status);
                *refused.entry(e.reason).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the lease may have lapsed it says so at once.
    assert!(
        refused.contains_key(&streambus_proto::Reason::NotLeader),
        "{refused:?}"
    );

    // The majority has moved on.
    let moved = wait_partition(&client, TOPIC, 0, "led by the majority", |p| {
        p.leader != leader && p.leader != 0
    })
    .await;
    assert!(moved.leader_epoch > first.leader_epoch);
    send(1_000, &mut pending).await;
    producer.flush().await;

    // Heal: the old leader follows, drops its minority writes, rejoins.
    cluster.heal(leader);
    wait_partition(&client, TOPIC, 0, "fully in sync again", |p| {
        p.isr.len() == 3
    })
    .await;
    send(200, &mut pending).await;
    producer.flush().await;
    let mut acked = Vec::new();
    for (i, d) in pending {
        let m = d.await.unwrap_or_else(|e| panic!("r{i} failed: {e}"));
        acked.push((i, m.offset));
    }
    producer.close().await;

    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(TOPIC)
        })
        .await
        .unwrap();
    let mut read = Vec::new();
    while read.len() < acked.len() {
        let r = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("every acknowledged record is readable")
            .expect("open")
            .unwrap();
        read.push((
            r.offset,
            String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
        ));
    }
    let expected: Vec<String> = (0..next).map(|i| format!("r{i}")).collect();
    let values: Vec<String> = read.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values, expected,
        "exactly once, in order, no minority writes"
    );
    let by_offset: HashMap<i64, &str> = read.iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (i, offset) in acked {
        assert_eq!(
            by_offset.get(&offset).copied(),
            Some(format!("r{i}").as_str())
        );
    }
    // Nothing follows the last acknowledged record: the minority writes
    // were truncated on the old leader.
    let offsets = client.partition_offsets(TOPIC).await.unwrap();
    assert_eq!(offsets[0].high_watermark, next as i64, "{offsets:?}");
}

type Produced = tokio::task::JoinHandle<(Vec<(u32, i64, String)>, usize)>;

/// An idempotent acks=all producer writing rounds of numbered records to
/// every partition of `topic` until `stop`; returns what was acknowledged
/// (partition, offset, value) and how many records failed, and counts
/// acknowledgments as they come in `progress`.
fn produce_until(
    client: streambus_client::Client,
    topic: &'static str,
    partitions: u32,
    stop: Arc<AtomicBool>,
) -> (Produced, Arc<AtomicUsize>) {
    let progress = Arc::new(AtomicUsize::new(0));
    let counted = progress.clone();
    let task = tokio::spawn(async move {
        let producer = client.producer(ProducerConfig {
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        });
        let mut acked = Vec::new();
        let mut failed = 0;
        let mut seq = vec![0u64; partitions as usize];
        while !stop.load(Ordering::Relaxed) {
            let mut round = Vec::new();
            for i in 0..60u32 {
                let p = i % partitions;
                let value = format!("{topic}-p{p}-{}", seq[p as usize]);
                seq[p as usize] += 1;
                let record = Record {
                    value: Some(Bytes::from(value.clone())),
                    ..Record::default()
                };
                round.push((value, producer.send(topic, record, Some(p)).await.unwrap()));
            }
            producer.flush().await;
            for (value, d) in round {
                match d.await {
                    Ok(m) => {
                        acked.push((m.partition, m.offset, value));
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed += 1;
                        println!("not acknowledged: {value}: {e}");
                    }
                }
            }
        }
        producer.close().await;
        (acked, failed)
    });
    (task, progress)
}

/// Waits until `progress` passes `at_least`.
async fn wait_progress(progress: &AtomicUsize, at_least: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "{what}: stuck at {progress:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `topic` back from the beginning and checks that every
/// acknowledged record is at its offset, once, each partition in send
/// order, and that nothing else is there.
async fn check_log(client: &streambus_client::Client, topic: &str, acked: &[(u32, i64, String)]) {
    let offsets = client.partition_offsets(topic).await.unwrap();
    let total: i64 = offsets
        .iter()
        .map(|o| o.high_watermark - o.log_start_offset)
        .sum();
    assert_eq!(total, acked.len() as i64, "{topic}: {offsets:?}");
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(topic)
        })
        .await
        .unwrap();
    let mut log: HashMap<(u32, i64), String> = HashMap::new();
    let mut order: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    while (log.len() as i64) < total {
        let r = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("every acknowledged record is readable")
            .expect("open")
            .unwrap();
        let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
        let n: u64 = value.rsplit('-').next().unwrap().parse().unwrap();
        order.entry(r.partition).or_default().push(n);
        assert!(log.insert((r.partition, r.offset), value).is_none());
    }
    for (p, seqs) in &order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{topic}/{p} is out of send order or has a duplicate"
        );
    }
    for (p, offset, value) in acked {
        assert_eq!(
            log.get(&(*p, *offset)),
            Some(value),
            "acknowledged {value} is not at {topic}/{p}/{offset}"
        );
    }
}

/// Waits until a controller other than `old` leads in a term above `term`.
async fn new_controller_leader(
    cluster: &Cluster,
    old: u64,
    term: u64,
    within: Duration,
) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        for id in cluster.controllers.keys().filter(|id| **id != old) {
            if let Some(s) = cluster.describe_controller(*id).await
                && s.state == "leader"
                && s.term > term
            {
                return (*id, s.term);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the majority elected no controller leader within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_controller_leader_is_replaced_and_loses_no_metadata() {
    const BEFORE: &str = "before";
    const DURING: &str = "during";
    let cluster = Cluster::start_with(3, 3).await;
    let client = cluster.client().await;
    let min_isr = HashMap::from([("min.insync.replicas".to_string(), "2".to_string())]);
    client
        .create_topic(BEFORE, 3, 3, min_isr.clone())
        .await
        .unwrap();
    for p in 0..3 {
        wait_partition(&client, BEFORE, p, "in sync", |d| d.isr.len() == 3).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (producing, progress) = produce_until(cluster.client().await, BEFORE, 3, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (old, term) = cluster
        .controller_leader()
        .await
        .expect("a controller leader");
    let committed = cluster.controller_metadata(old).await.unwrap();
    cluster.isolate_controller(old, true);
    let cut = Instant::now();

    // The majority elects a leader of its own (the election timeout is
    // 300-600 ms, and a follower waits out the old leader's lease first).
    let (new, new_term) = new_controller_leader(&cluster, old, term, Duration::from_secs(10)).await;
    println!(
        "controller {new} leads (term {new_term}) {} ms after controller {old} was cut off",
        cut.elapsed().as_millis()
    );

    // Topics are created through the gateway, and written to.
    let created = tokio::time::timeout(
        Duration::from_secs(20),
        client.create_topic(DURING, 3, 3, min_isr.clone()),
    )
    .await
    .expect("CreateTopic answers while the old controller leader is cut off")
    .expect("a topic is created while the old controller leader is cut off");
    let (producing_during, progress_during) =
        produce_until(cluster.client().await, DURING, 3, stop.clone());

    // Both topics take acks=all writes while the old leader is cut off:
    // the storage nodes learn of the new topic from a controller in
    // contact with the majority. And for longer than several storage-node
    // leases: the nodes must have moved their heartbeats to the new
    // leader, or it would declare them dead.
    let isolated = Instant::now();
    let before_now = progress.load(Ordering::Relaxed);
    wait_progress(
        &progress_during,
        600,
        "writes to the topic created while cut off",
    )
    .await;
    wait_progress(
        &progress,
        before_now + 600,
        "writes to the existing topic while cut off",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(isolated.elapsed())).await;
    let md = cluster.controller_metadata(new).await.unwrap();
    let dead: Vec<u64> = md
        .nodes
        .iter()
        .filter(|n| !n.alive)
        .map(|n| n.node_id)
        .collect();
    assert!(dead.is_empty(), "storage nodes {dead:?} were declared dead");
    assert!(
        md.topics
            .iter()
            .any(|t| t.name == DURING && t.topic_id == created.topic_id)
    );

    // Heal: the old leader follows the new one, and every controller ends
    // with the same metadata.
    cluster.isolate_controller(old, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let old_status = cluster.describe_controller(old).await;
        let mut views = Vec::new();
        for id in cluster.controllers.keys() {
            views.push(cluster.controller_metadata(*id).await);
        }
        let follows = old_status
            .as_ref()
            .is_some_and(|s| s.state == "follower" && s.term >= new_term && s.leader_id != old);
        let same = views.iter().all(|v| v.is_some() && *v == views[0]);
        if follows && same {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "controllers did not converge after healing: {old_status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing committed before the cut was rolled back on the old leader.
    let healed = cluster.controller_metadata(old).await.unwrap();
    assert!(healed.version >= committed.version);
    for t in &committed.topics {
        let now = healed.topics.iter().find(|h| h.name == t.name);
        let now = now.unwrap_or_else(|| panic!("topic {} disappeared", t.name));
        assert_eq!(now.topic_id, t.topic_id);
        for (a, b) in t.partitions.iter().zip(&now.partitions) {
            assert!(
                (b.leader_epoch, b.partition_epoch) >= (a.leader_epoch, a.partition_epoch),
                "{}/{} went back from {a:?} to {b:?}",
                t.name,
                a.partition
            );
        }
    }
    assert!(
        healed
            .topics
            .iter()
            .any(|t| t.name == DURING && t.topic_id == created.topic_id)
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = producing.await.unwrap();
    let (acked_during, failed_during) = producing_during.await.unwrap();
    println!(
        "{} + {} records acknowledged",
        acked.len(),
        acked_during.len()
    );
    assert_eq!(
        (failed, failed_during),
        (0, 0),
        "records were not acknowledged"
    );
    assert!(!acked_during.is_empty());
    check_log(&client, BEFORE, &acked).await;
    check_log(&client, DURING, &acked_during).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_that_reaches_only_an_isolated_controller_leader_stops_acknowledging() {
    const LONELY: &str = "lonely";
    let cluster = Cluster::start_with(3, 3).await;
    let client = cluster.client().await;
    // min.insync.replicas=1 and unclean elections: the leader may
    // acknowledge alone, and the majority may elect an out-of-sync replica.
    // Only the lease keeps two leaders from both acknowledging acks=all.
    client
        .create_topic(
            LONELY,
            1,
            3,
            HashMap::from([(
                "unclean.leader.election.enable".to_string(),
                "true".to_string(),
            )]),
        )
        .await
        .unwrap();
    let first = wait_partition(&client, LONELY, 0, "in sync", |p| p.isr.len() == 3).await;
    let leader = first.leader;

    // Its followers lose it: the ISR shrinks to the leader alone.
    cluster.nodes[&leader].inbound.set_cut(true);
    let alone = wait_partition(&client, LONELY, 0, "led alone", |p| p.isr == [leader]).await;
    let mut direct =
        StorageServiceClient::connect(format!("http://{}", cluster.nodes[&leader].direct_addr()))
            .await
            .unwrap();
    let append = |value: String| AppendRequest {
        partition: Some(PartitionRef {
            topic: LONELY.into(),
            partition: 0,
        }),
        batch: one_record(&value),
        acks: Acks::All as i32,
        leader_epoch: alone.leader_epoch,
    };
    direct
        .append(append("alone".into()))
        .await
        .expect("a leader alone in its ISR acknowledges acks=all");

    // Now it reaches only the controller leader, and that controller is cut
    // off from the other controllers.
    let (old, term) = cluster
        .controller_leader()
        .await
        .expect("a controller leader");
    let at = cluster.controllers.keys().position(|c| *c == old).unwrap();
    for (i, p) in cluster.nodes[&leader].to_controllers.iter().enumerate() {
        p.set_cut(i != at);
    }
    cluster.isolate_controller(old, true);
    let (new, _) = new_controller_leader(&cluster, old, term, Duration::from_secs(10)).await;

    // The majority hears nothing from the node, declares it dead and hands
    // its partition to an out-of-sync replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        if let Some(md) = cluster.controller_metadata(new).await
            && let Some(p) = md
                .topics
                .iter()
                .find(|t| t.name == LONELY)
                .map(|t| t.partitions[0].clone())
            && p.leader != leader
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the majority never moved the partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(moved.leader_epoch > alone.leader_epoch);

    // The old partition leader, still heartbeating the old controller
    // leader, must not acknowledge acks=all any more.
    let mut refused = HashMap::new();
    for i in 0..10 {
        match direct.append(append(format!("split{i}"))).await {
            Ok(ok) => panic!(
                "storage node {leader} acknowledged split{i} after the majority moved its partition to {}: {ok:?}",
                moved.leader
            ),
            Err(status) => {
                let e = streambus_proto::Error::from_status(&status);
                *refused.entry(e.reason).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused.contains_key(&streambus_proto::Reason::NotLeader),
        "{refused:?}"
    );

    // Healed, the cluster is whole again.
    cluster.isolate_controller(old, false);
    for p in &cluster.nodes[&leader].to_controllers {
        p.set_cut(false);
    }
    cluster.nodes[&leader].inbound.set_cut(false);
    wait_partition(&client, LONELY, 0, "fully in sync again", |p| {
        p.isr.len() == 3
    })
    .await;
}
