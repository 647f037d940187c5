//! Real processes: one controller, three storage nodes and a gateway, on
//! 127.0.0.1. The storage node leading a replication-factor-3 partition is
//! killed with SIGKILL while an idempotent producer writes with acks=all;
//! then it comes back, catches up and rejoins the in-sync replicas. Every
//! acknowledged record must be read back exactly once, in order, at the
//! offset it was acknowledged with.

mod procs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use procs::Cluster;
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const TOPIC: &str = "failover";

async fn partition(client: &Client) -> streambus_client::v1::PartitionDescription {
    client.describe_topic(TOPIC).await.unwrap().partitions[0].clone()
}

async fn wait_partition(
    client: &Client,
    what: &str,
    f: impl Fn(&streambus_client::v1::PartitionDescription) -> bool,
) -> streambus_client::v1::PartitionDescription {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = partition(client).await;
        if f(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "partition never {what}: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_partition_leader_loses_and_duplicates_nothing() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(1, 1))
        .await
        .unwrap();
    let client = Client::connect(cluster.gateway_addrs[0].clone())
        .await
        .unwrap();
    client
        .create_topic(
            TOPIC,
            1,
            3,
            HashMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
        )
        .await
        .unwrap();
    let first = wait_partition(&client, "in sync", |p| p.isr.len() == 3).await;

    let producer = client.producer(ProducerConfig {
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    });
    let mut pending = Vec::new();
    let mut acked: Vec<(u64, i64)> = Vec::new();
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
    send(2_000, &mut pending).await;
    // Kill the leader with records in flight.
    tokio::time::sleep(Duration::from_millis(20)).await;
    cluster.nodes.get_mut(&first.leader).unwrap().kill();
    send(2_000, &mut pending).await;
    let moved = wait_partition(&client, "led by another node", |p| {
        p.leader != first.leader && p.leader != 0
    })
    .await;
    assert!(moved.leader_epoch > first.leader_epoch, "{moved:?}");
    send(1_000, &mut pending).await;
    producer.flush().await;
    for (i, d) in pending.drain(..) {
        let m = d
            .await
            .unwrap_or_else(|e| panic!("record r{i} failed: {e}"));
        acked.push((i, m.offset));
    }

    // The old leader returns, truncates, catches up and rejoins.
    let node = cluster.nodes.get_mut(&first.leader).unwrap();
    node.start();
    tokio::task::block_in_place(|| node.wait_ready());
    wait_partition(&client, "back to three in-sync replicas", |p| {
        p.isr.len() == 3
    })
    .await;
    send(500, &mut pending).await;
    producer.flush().await;
    for (i, d) in pending.drain(..) {
        acked.push((i, d.await.unwrap().offset));
    }
    producer.close().await;

    // Read everything back.
    let read = read_all(&client, acked.len()).await;
    assert_exactly_once(&read, next, acked);
}

/// `read` (offset, value) holds r0..r{count} once each, in order, and each
/// acknowledged record at its offset.
fn assert_exactly_once(read: &[(i64, String)], count: u64, acked: Vec<(u64, i64)>) {
    let values: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("r{i}")).collect();
    assert_eq!(
        values,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "each record exactly once, in order"
    );
    let by_offset: HashMap<i64, &str> = read.iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (i, offset) in acked {
        assert_eq!(
            by_offset.get(&offset).copied(),
            Some(format!("r{i}").as_str())
        );
    }
}

/// Reads `count` records of partition 0 from the beginning.
async fn read_all(client: &Client, count: usize) -> Vec<(i64, String)> {
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(TOPIC)
        })
        .await
        .unwrap();
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read.len() < count {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("every record is readable")
            .expect("subscription open")
            .unwrap();
        read.push((
            r.offset,
            String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
        ));
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_of_every_role_can_die_at_once() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 2))
        .await
        .unwrap();
    // Clients use the second gateway; the first one dies.
    let client = Client::connect(cluster.gateway_addrs[1].clone())
        .await
        .unwrap();
    client
        .create_topic(
            TOPIC,
            1,
            3,
            HashMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
        )
        .await
        .unwrap();
    let first = wait_partition(&client, "in sync", |p| p.isr.len() == 3).await;
    let status = client.describe_cluster().await.unwrap();
    let controller_leader = status
        .controllers
        .iter()
        .find(|c| c.state == "leader")
        .expect("a controller leads")
        .node_id;

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
    send(2_000, &mut pending).await;

    // One of each at the same moment: the controller leader, the
    // partition's leader and a gateway.
    cluster
        .controllers
        .get_mut(&controller_leader)
        .unwrap()
        .kill();
    cluster.nodes.get_mut(&first.leader).unwrap().kill();
    cluster.gateways[0].kill();

    // Topic creation through the controller failover: each create ends in
    // success or a clear error; retried, it exists exactly once.
    for i in 0..5 {
        let name = format!("during-{i}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.create_topic(&name, 1, 2, HashMap::new()).await {
                Ok(_) => break,
                Err(streambus_client::ClientError::Server(e))
                    if e.reason == streambus_client::Reason::TopicAlreadyExists =>
                {
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "create {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    send(2_000, &mut pending).await;
    let moved = wait_partition(&client, "led by another node", |p| {
        p.leader != first.leader && p.leader != 0
    })
    .await;
    assert!(moved.leader_epoch > first.leader_epoch, "{moved:?}");
    send(1_000, &mut pending).await;
    producer.flush().await;
    let mut acked = Vec::new();
    for (i, d) in pending.drain(..) {
        let m = d
            .await
            .unwrap_or_else(|e| panic!("record r{i} failed: {e}"));
        acked.push((i, m.offset));
    }
    producer.close().await;
    let topics = client.list_topics().await.unwrap();
    for i in 0..5 {
        let name = format!("during-{i}");
        assert_eq!(
            topics.iter().filter(|t| t.name == name).count(),
            1,
            "{name} exists once"
        );
    }
    let read = read_all(&client, acked.len()).await;
    assert_exactly_once(&read, next, acked);
    let status = client.describe_cluster().await.unwrap();
    let leaders = status
        .controllers
        .iter()
        .filter(|c| c.state == "leader")
        .count();
    assert_eq!(leaders, 1, "{:?}", status.controllers);
}

/// Reads every record of `topic` (all partitions) from the beginning until
/// `count` arrived; returns (partition, offset) → value.
async fn read_topic(client: &Client, topic: &str, count: usize) -> HashMap<(u32, i64), String> {
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(topic)
        })
        .await
        .unwrap();
    let mut read = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read.len() < count {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("every record is readable")
            .expect("subscription open")
            .unwrap();
        let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
        assert!(
            read.insert((r.partition, r.offset), value).is_none(),
            "read twice"
        );
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_storage_node_is_emptied_without_losing_a_record() {
    const DRAIN: &str = "drain";
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(1, 1))
        .await
        .unwrap();
    let client = Client::connect(cluster.gateway_addrs[0].clone())
        .await
        .unwrap();
    client
        .create_topic(DRAIN, 3, 2, HashMap::new())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .describe_topic(DRAIN)
        .await
        .unwrap()
        .partitions
        .iter()
        .all(|p| p.isr.len() == 2)
    {
        assert!(Instant::now() < deadline, "never in sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = client.producer(ProducerConfig::default());
    let mut pending = Vec::new();
    let mut next = 0u64;
    let mut send = async |count: u64, pending: &mut Vec<_>| {
        for _ in 0..count {
            let record = Record {
                value: Some(Bytes::from(format!("d{next}"))),
                ..Record::default()
            };
            pending.push((next, producer.send(DRAIN, record, None).await.unwrap()));
            next += 1;
        }
    };
    send(600, &mut pending).await;
    producer.flush().await;

    let gateway = cluster.gateway_addrs[0].clone();
    let cli = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["cluster", "decommission", "1", "--wait"])
        .env("STREAMBUS_GATEWAY", &gateway)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Writes go on while the replicas move.
    for _ in 0..10 {
        send(30, &mut pending).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    producer.flush().await;
    let out = tokio::task::spawn_blocking(move || {
        let mut cli = cli;
        let deadline = Instant::now() + Duration::from_secs(90);
        while cli.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = cli.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cli.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("storage node 1 is decommissioning: "),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(
            "storage node 1 is decommissioned: it hosts no replicas and can be stopped\n"
        ),
        "{stdout}"
    );
    let status = client.describe_cluster().await.unwrap();
    let node = status
        .storage_nodes
        .iter()
        .find(|n| n.node_id == 1)
        .unwrap();
    assert!(node.decommissioning && node.replicas == 0, "{node:?}");
    for p in client.describe_topic(DRAIN).await.unwrap().partitions {
        assert!(!p.replicas.contains(&1), "{p:?}");
        assert_eq!(p.replicas.len(), 2, "{p:?}");
    }
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["cluster", "status"])
        .env("STREAMBUS_GATEWAY", &gateway)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("decommissioned"), "{text}");

    // The node deleted what it no longer hosts; it can be stopped.
    let dir = cluster.dir.path().join("storage-1");
    let left = || -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("drain-")
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", left());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A decommissioned node takes no new replica until recommissioned.
    let err = client
        .create_topic("wide", 1, 3, HashMap::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("decommissioning"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["cluster", "recommission", "1"])
        .env("STREAMBUS_GATEWAY", &gateway)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "storage node 1 is active: it hosts 0 replicas and takes new ones\n"
    );
    let status = client.describe_cluster().await.unwrap();
    assert!(
        status.storage_nodes.iter().all(|n| !n.decommissioning),
        "{status:?}"
    );
    let wide = client
        .create_topic("wide", 1, 3, HashMap::new())
        .await
        .unwrap();
    assert!(wide.partitions[0].replicas.contains(&1), "{wide:?}");
    for p in client.describe_topic(DRAIN).await.unwrap().partitions {
        assert!(!p.replicas.contains(&1), "moved replicas stay: {p:?}");
    }
    cluster.nodes.get_mut(&1).unwrap().kill();
    send(100, &mut pending).await;
    producer.close().await;
    let mut acked = HashMap::new();
    for (i, d) in pending.drain(..) {
        let m = d
            .await
            .unwrap_or_else(|e| panic!("record d{i} failed: {e}"));
        acked.insert((m.partition, m.offset), format!("d{i}"));
    }

    let read = read_topic(&client, DRAIN, acked.len()).await;
    assert_eq!(
        read, acked,
        "every acknowledged record, once, where it was acknowledged"
    );
}
