//! Rolling gateways: with two gateways, an idempotent SDK producer, a
//! `streambus produce` process fed line by line, and a `streambus consume`
//! process (all given both gateways) run while each gateway is restarted in
//! turn, with SIGTERM and once with SIGKILL. Afterwards every acknowledged
//! record was consumed exactly once, in order per partition, every line the
//! CLI producer read is in its topic once, and the clients kept running.

mod procs;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
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

    // A CLI producer reading stdin, fed a line at a time across the rolls.
    client
        .create_topic("roll-cli", 1, 3, Default::default())
        .await
        .unwrap();
    let mut cli_producer = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["produce", "roll-cli", "--gateway", &both])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli_stdin = cli_producer.stdin.take().unwrap();
    let mut lines_fed = 0u64;
    let mut feed = |count: u64| {
        for _ in 0..count {
            writeln!(cli_stdin, "line-{lines_fed}").unwrap();
            lines_fed += 1;
        }
        cli_stdin.flush().unwrap();
    };

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
    feed(200);
    // Each gateway in turn, twice with SIGTERM (a roll), then once killed.
    for (i, kill) in [(0, false), (1, false), (0, false), (1, false), (0, true)] {
        let g = &mut cluster.gateways[i];
        if kill {
            g.kill();
        } else {
            tokio::task::block_in_place(|| g.terminate());
        }
        feed(200);
        round(&mut acked).await;
        g.start();
        tokio::task::block_in_place(|| g.wait_ready());
        feed(200);
        round(&mut acked).await;
    }
    producer.close().await;
    // End of input: the CLI producer flushes and exits 0.
    drop(cli_stdin);
    let out = tokio::task::spawn_blocking(move || cli_producer.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "streambus produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sub = client
        .subscribe(streambus_client::SubscribeOptions {
            start: streambus_client::StartFrom::Earliest,
            ..streambus_client::SubscribeOptions::new("roll-cli")
        })
        .await
        .unwrap();
    use futures::StreamExt;
    let mut cli_lines = Vec::new();
    while (cli_lines.len() as u64) < lines_fed {
        let r = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("every line the CLI producer read is in the topic")
            .unwrap()
            .unwrap();
        cli_lines.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..lines_fed).map(|i| format!("line-{i}")).collect();
    assert_eq!(cli_lines, expected, "each line once, in order");
    let offsets = client.partition_offsets("roll-cli").await.unwrap();
    assert_eq!(offsets[0].high_watermark as u64, lines_fed, "no duplicates");

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
