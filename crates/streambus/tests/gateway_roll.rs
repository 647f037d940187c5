//! Rolling gateways: with two gateways, an idempotent SDK producer and a
//! `streambus consume` process (both given both gateways) run while each
//! gateway is restarted in turn, with SIGTERM and once with SIGKILL.
//! Afterwards every acknowledged record was consumed exactly once, in order
//! per partition, and both clients are still running.

mod procs;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use procs::Cluster;
use streambus_client::{Client, ProducerConfig, Record};

const TOPIC: &str = "roll";
const PARTITIONS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ride_through_gateway_restarts() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(1, 2))
        .await
        .unwrap();
    let both = cluster.gateway_addrs.join(",");
    let client = Client::connect(both.clone()).await.unwrap();
    client
        .create_topic(TOPIC, PARTITIONS, 3, Default::default())
        .await
        .unwrap();

    // The consumer: a real CLI process following the topic.
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["consume", TOPIC, "--from-beginning", "--format", "json"])
        .args(["--gateway", &both])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    {
        let lines = lines.clone();
        let stdout = consumer.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
    }
    let notices = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let notices = notices.clone();
        let stderr = consumer.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                notices.lock().unwrap().push(line);
            }
        });
    }

    // The producer writes in rounds while the gateways roll.
    let producer = client.producer(ProducerConfig {
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    });
    let mut acked: Vec<(u32, i64, String)> = Vec::new();
    let mut n = 0u64;
    let mut round = async |acked: &mut Vec<(u32, i64, String)>| {
        let mut pending = Vec::new();
        for _ in 0..300 {
            let p = (n % u64::from(PARTITIONS)) as u32;
            let value = format!("v{n}");
            n += 1;
            let record = Record {
                value: Some(Bytes::from(value.clone())),
                ..Record::default()
            };
            pending.push((value, producer.send(TOPIC, record, Some(p)).await.unwrap()));
        }
        producer.flush().await;
        for (value, d) in pending {
            let m = d.await.unwrap_or_else(|e| panic!("{value} failed: {e}"));
            acked.push((m.partition, m.offset, value));
        }
    };
    round(&mut acked).await;
    // Each gateway in turn, twice with SIGTERM (a roll), then once killed.
    for (i, kill) in [(0, false), (1, false), (0, false), (1, false), (0, true)] {
        let g = &mut cluster.gateways[i];
        if kill {
            g.kill();
        } else {
            tokio::task::block_in_place(|| g.terminate());
        }
        round(&mut acked).await;
        g.start();
        tokio::task::block_in_place(|| g.wait_ready());
        round(&mut acked).await;
    }
    producer.close().await;

    // The consumer gets everything, once, in order per partition.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while lines.lock().unwrap().len() < acked.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer has {} of {} records; stderr: {:?}",
            lines.lock().unwrap().len(),
            acked.len(),
            notices.lock().unwrap()
        );
        assert!(
            consumer.try_wait().unwrap().is_none(),
            "the consumer exited; stderr: {:?}",
            notices.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), acked.len(), "no duplicates after the end");
    let mut per_partition: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    let mut values = HashSet::new();
    for l in &lines {
        per_partition
            .entry(l["partition"].as_u64().unwrap())
            .or_default()
            .push(l["offset"].as_i64().unwrap());
        assert!(
            values.insert(l["value"].as_str().unwrap().to_string()),
            "{l}"
        );
    }
    for (p, offsets) in &per_partition {
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p}: {offsets:?}"
        );
    }
    for (p, offset, value) in &acked {
        assert!(
            lines
                .iter()
                .any(|l| l["partition"] == *p && l["offset"] == *offset && l["value"] == **value),
            "{value} at {p}/{offset} not consumed"
        );
    }
    // Still following, and it said when it reconnected.
    assert!(consumer.try_wait().unwrap().is_none());
    let notices = notices.lock().unwrap().clone();
    assert!(
        notices
            .iter()
            .any(|l| l.contains("reconnecting to the gateway")),
        "{notices:?}"
    );
    let _ = consumer.kill();
    let _ = consumer.wait();
}
