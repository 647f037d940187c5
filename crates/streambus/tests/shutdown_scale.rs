//! 20,000 partitions on one `streambus dev` process whose open-file limit
//! (1,024) is far below one descriptor per partition: every partition is
//! served, SIGTERM drains and exits 0 within `shutdown.grace_ms`, a restart
//! is ready again with everything acknowledged; a drain that cannot finish
//! within its grace exits 1 at the grace, and the restart after it (which
//! recovers the logs that were not closed) loses nothing either.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const TOPICS: [&str; 2] = ["scale.a", "scale.b"];
const PER_TOPIC: u32 = 10_000;
/// The child's soft and hard `RLIMIT_NOFILE`.
const NOFILE: u64 = 1024;
/// Partitions of each topic that get a record.
const SAMPLE: [u32; 4] = [0, 3_333, 6_666, 9_999];
const GRACE_MS: u64 = 25_000;

struct Server {
    child: Child,
    gateway: String,
    http: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGTERM, then the exit status and how long it took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        // SAFETY: kill with a valid signal on our own child's pid.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM sent");
        let status = self.child.wait().unwrap();
        (status, started.elapsed())
    }
}

fn start(data_dir: &Path, grace_ms: u64) -> (Server, Duration) {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_streambus"));
    command
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--set", "gateway.listen_addr=127.0.0.1:0"])
        .args(["--set", "controller.listen_addr=127.0.0.1:0"])
        .args(["--set", "storage_node.listen_addr=127.0.0.1:0"])
        .args(["--set", "http.listen_addr=127.0.0.1:0"])
        .args(["--set", &format!("shutdown.grace_ms={grace_ms}")])
        .args(["--set", "log.level=warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("streambus binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut gateway = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.trim().strip_prefix("gateway (public gRPC)") {
                gateway = Some(addr.trim().to_string());
            }
            if let Some(addr) = line.trim().strip_prefix("http (health/metrics)  http://")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((gateway.clone().unwrap(), addr.trim().to_string()));
            }
        }
    });
    let (gateway, http) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("dev instance prints its addresses when ready");
    let ready = started.elapsed();
    (
        Server {
            child,
            gateway,
            http,
        },
        ready,
    )
}

/// A metric's value from `/metrics` (the sum over its label sets).
fn metric(http: &str, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(http).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the storage node hosts every partition with none offline.
async fn wait_all_open(http: &str) -> Duration {
    let started = Instant::now();
    let total = (TOPICS.len() as u32 * PER_TOPIC) as f64;
    loop {
        let (replicas, offline) = (
            metric(http, "streambus_storage_replicas"),
            metric(http, "streambus_storage_offline_replicas"),
        );
        if replicas == total && offline == 0.0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{replicas} of {total} replicas hosted, {offline} offline"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn value(topic: &str, partition: u32, round: usize) -> Bytes {
    Bytes::from(format!("{topic}/{partition}/{round}"))
}

async fn produce(gateway: &str, round: usize) {
    let client = Client::connect(gateway).await.unwrap();
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for topic in TOPICS {
        for p in SAMPLE {
            let record = Record {
                key: None,
                value: Some(value(topic, p, round)),
                headers: vec![],
                timestamp_ms: 0,
            };
            deliveries.push(producer.send(topic, record, Some(p)).await.unwrap());
        }
    }
    producer.flush().await;
    for d in deliveries {
        d.await.expect("acknowledged");
    }
    producer.close().await;
}

/// Every sampled partition holds exactly the records of `rounds`, in order.
async fn read_back(gateway: &str, rounds: usize) {
    let client = Client::connect(gateway).await.unwrap();
    for topic in TOPICS {
        for p in SAMPLE {
            let mut sub = client
                .subscribe(SubscribeOptions {
                    partition: Some(p),
                    start: StartFrom::Earliest,
                    ..SubscribeOptions::new(topic)
                })
                .await
                .unwrap();
            for round in 0..rounds {
                let r = tokio::time::timeout(Duration::from_secs(60), sub.next())
                    .await
                    .expect("record arrives")
                    .expect("stream open")
                    .unwrap();
                assert_eq!((r.partition, r.offset), (p, round as i64));
                assert_eq!(r.value, Some(value(topic, p, round)));
            }
        }
    }
    let offsets = client.partition_offsets(TOPICS[0]).await.unwrap();
    assert_eq!(offsets.len(), PER_TOPIC as usize);
    let ends: HashMap<u32, i64> = offsets
        .iter()
        .map(|o| (o.partition, o.high_watermark))
        .collect();
    for p in SAMPLE {
        assert_eq!(ends[&p], rounds as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_partitions_drain_within_the_grace_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _) = start(dir.path(), GRACE_MS);
    let client = Client::connect(server.gateway.clone()).await.unwrap();
    let create = Instant::now();
    for topic in TOPICS {
        client
            .create_topic(topic, PER_TOPIC, 1, HashMap::new())
            .await
            .unwrap();
    }
    let created = create.elapsed();
    let opened = wait_all_open(&server.http).await;
    let limit = metric(&server.http, "streambus_storage_open_files_limit");
    assert_eq!(limit, (NOFILE / 2) as f64, "half the open-file limit");
    produce(&server.gateway, 0).await;

    let (status, drained) = server.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    assert!(drained < Duration::from_millis(GRACE_MS), "{drained:?}");

    // Restarted with a grace no drain of 20,000 partitions can meet.
    let (mut server, ready) = start(dir.path(), 1);
    let reopened = wait_all_open(&server.http).await;
    read_back(&server.gateway, 1).await;
    produce(&server.gateway, 1).await;
    let (status, cut) = server.terminate();
    assert_eq!(status.code(), Some(1), "a drain past its grace exits 1");
    assert!(cut < Duration::from_secs(5), "exits at the grace: {cut:?}");
    eprintln!(
        "20,000 partitions, RLIMIT_NOFILE {NOFILE}: created in {created:?}, all open {opened:?} \
         later; SIGTERM to exit 0 in {drained:?}; restart ready in {ready:?}, all open \
         {reopened:?} later; a 1 ms grace exits 1 in {cut:?}"
    );

    // Logs the cut drain did not close are recovered; nothing is lost.
    let (mut server, ready) = start(dir.path(), GRACE_MS);
    let recovered = wait_all_open(&server.http).await;
    let read = Instant::now();
    read_back(&server.gateway, 2).await;
    let read = read.elapsed();
    let (status, drained) = server.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    eprintln!(
        "after the cut drain: ready in {ready:?}, all open {recovered:?} later, read back in \
         {read:?}; SIGTERM to exit 0 in {drained:?}"
    );
}
