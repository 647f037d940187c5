//! Real processes: one controller, three storage nodes and a gateway, on
//! 127.0.0.1.
//!
//! - The storage node leading a replication-factor-3 partition is killed
//!   with SIGKILL while an idempotent producer writes with acks=all; then
//!   it comes back, catches up and rejoins the in-sync replicas. Every
//!   acknowledged record must be read back exactly once, in order, at the
//!   offset it was acknowledged with.
//! - A storage node is decommissioned with `streambus cluster decommission
//!   --wait` while records are written: it ends with no replica and no
//!   partition directory, and every acknowledged record is still there.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const TOPIC: &str = "failover";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One role process, restartable with the same command line.
struct Proc {
    name: String,
    args: Vec<String>,
    http: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(dir: &Path, name: &str, role: &str, settings: &[String]) -> Proc {
        let http = format!("127.0.0.1:{}", free_port());
        let mut args = vec![role.to_string()];
        for s in settings.iter().cloned().chain([
            format!("http.listen_addr={http}"),
            "log.level=info,openraft=warn".into(),
        ]) {
            args.push("--set".into());
            args.push(s);
        }
        Proc {
            name: name.to_string(),
            args,
            http,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_streambus"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("streambus binary starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for `/readyz` to answer 200.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_status(&self.http, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("{} not ready within 60 s; log:\n{log}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

struct Cluster {
    dir: tempfile::TempDir,
    controller: Proc,
    nodes: BTreeMap<u64, Proc>,
    gateway: Proc,
    gateway_addr: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let controller_addr = format!("127.0.0.1:{}", free_port());
        let mut controller = Proc::new(
            path,
            "controller",
            "controller",
            &[
                "controller.node_id=1".into(),
                format!("controller.listen_addr={controller_addr}"),
                format!("controller.data_dir={}", path.join("controller").display()),
                "controller.node_lease_ms=2000".into(),
            ],
        );
        controller.start();
        controller.wait_ready();
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            let mut n = Proc::new(
                path,
                &format!("storage-node-{id}"),
                "storage-node",
                &[
                    format!("storage_node.node_id={id}"),
                    format!("storage_node.listen_addr=127.0.0.1:{}", free_port()),
                    format!(
                        "storage_node.data_dir={}",
                        path.join(format!("storage-{id}")).display()
                    ),
                    format!("storage_node.controllers={controller_addr}"),
                    "storage_node.heartbeat_interval_ms=200".into(),
                    "storage_node.replica_lag_time_max_ms=3000".into(),
                    "storage_node.replica_fetch_wait_ms=200".into(),
                ],
            );
            n.start();
            nodes.insert(id, n);
        }
        for n in nodes.values() {
            n.wait_ready();
        }
        let gateway_addr = format!("127.0.0.1:{}", free_port());
        let mut gateway = Proc::new(
            path,
            "gateway",
            "gateway",
            &[
                format!("gateway.listen_addr={gateway_addr}"),
                format!("gateway.controllers={controller_addr}"),
            ],
        );
        gateway.start();
        gateway.wait_ready();
        Cluster {
            dir,
            controller,
            nodes,
            gateway,
            gateway_addr,
        }
    }
}

/// Every partition of `topic`, from the log start.
async fn from_start(client: &Client, topic: &str) -> streambus_client::Subscription {
    client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(topic)
        })
        .await
        .unwrap()
}

/// Reads every record of `topic` from the beginning until `count` arrived;
/// returns (partition, offset) → value.
async fn read_all(client: &Client, topic: &str, count: usize) -> HashMap<(u32, i64), String> {
    let mut sub = from_start(client, topic).await;
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
    let mut cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let client = Client::connect(cluster.gateway_addr.clone()).await.unwrap();
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
    let mut sub = from_start(&client, TOPIC).await;
    let mut read: Vec<(i64, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read.len() < acked.len() {
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
    let values: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
    let expected: Vec<String> = (0..next).map(|i| format!("r{i}")).collect();
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
    drop(cluster.gateway);
    drop(cluster.controller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_storage_node_is_emptied_without_losing_a_record() {
    const DRAIN: &str = "drain";
    let mut cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let client = Client::connect(cluster.gateway_addr.clone()).await.unwrap();
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

    let gateway = cluster.gateway_addr.clone();
    let cli = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["cluster", "decommission", "1", "--wait"])
        .env("STREAMBUS_GATEWAY", &gateway)
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

    let read = read_all(&client, DRAIN, acked.len()).await;
    assert_eq!(
        read, acked,
        "every acknowledged record, once, where it was acknowledged"
    );
    drop(cluster.gateway);
    drop(cluster.controller);
}
