//! A real `streambus dev` process killed with SIGKILL right after its acks
//! arrive: after a restart every acknowledged record is served.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use streambus_client::{Client, ProducerConfig, Record};

struct Process {
    child: Child,
    gateway: String,
}

fn start(data_dir: &Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--set", "gateway.listen_addr=127.0.0.1:0"])
        .args(["--set", "controller.listen_addr=127.0.0.1:0"])
        .args(["--set", "storage_node.listen_addr=127.0.0.1:0"])
        .args(["--set", "http.listen_addr=127.0.0.1:0"])
        .args(["--set", "log.level=warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("streambus binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.trim().strip_prefix("gateway (public gRPC)")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let gateway = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("dev instance prints its gateway address when ready");
    Process { child, gateway }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_sigkill_of_dev_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    let client = Client::connect(p.gateway.clone()).await.unwrap();
    client
        .create_topic("crash", 3, 1, HashMap::new())
        .await
        .unwrap();

    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..5_000u32 {
        let record = Record {
            key: Some(Bytes::from(format!("k{}", i % 17))),
            value: Some(Bytes::from(format!("v{i}"))),
            ..Record::default()
        };
        deliveries.push((i, producer.send("crash", record, None).await.unwrap()));
    }
    producer.flush().await;
    let mut acked = HashMap::new();
    for (i, d) in deliveries {
        let m = d.await.expect("acked");
        acked.insert((m.partition, m.offset), i);
    }
    // Kill right after the acks, with no chance to flush anything.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(client);

    let mut p = start(dir.path());
    let client = Client::connect(p.gateway.clone()).await.unwrap();
    let mut found = 0;
    for partition in 0..3u32 {
        let mut offset = 0;
        loop {
            let batch = client
                .fetch(
                    "crash",
                    partition,
                    offset,
                    1 << 20,
                    Duration::from_millis(0),
                )
                .await
                .unwrap();
            if batch.records.is_empty() {
                break;
            }
            for r in &batch.records {
                if let Some(i) = acked.get(&(partition, r.offset)) {
                    assert_eq!(r.value.as_deref(), Some(format!("v{i}").as_bytes()));
                    found += 1;
                }
            }
            offset = batch.next_offset;
        }
    }
    assert_eq!(
        found,
        acked.len(),
        "every acknowledged record is served after the crash"
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    let client = Client::connect(p.gateway.clone()).await.unwrap();
    client
        .create_topic("drain", 1, 1, HashMap::new())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let d = producer
        .send(
            "drain",
            Record {
                value: Some(Bytes::from_static(b"x")),
                ..Record::default()
            },
            None,
        )
        .await
        .unwrap();
    producer.flush().await;
    d.await.unwrap();
    let pid = p.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = p.child.wait().unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}
