//! A full disk, on a small file system the test mounts (tmpfs, so the
//! test needs the privilege to mount, as the project's machines have):
//! produce is refused with `DISK_FULL` before the file system runs out,
//! reads and metadata keep working, and deleting a topic or lowering a
//! topic's retention gives space back and produce resumes without a
//! restart. Every acknowledged record is read back at the end.

mod common;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use streambus_client::{Client, StartFrom, SubscribeOptions};
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use streambus_proto::v1::{Acks, ProduceBatch, ProduceRequest, Record};

const MIB: u64 = 1 << 20;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallFs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: u64) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size}-byte tmpfs for the disk-full test failed (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { path, _dir: dir }
    }

    fn available(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.path).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn records(tag: &str, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            value: Some(
                format!("{tag}-{i:06}-{}", "x".repeat(1000))
                    .into_bytes()
                    .into(),
            ),
            ..Record::default()
        })
        .collect()
}

/// Produces one batch of 100 records of about 1 KiB; the acknowledged
/// offsets, or the error reason and message.
async fn produce(
    client: &mut ProduceServiceClient<tonic::transport::Channel>,
    topic: &str,
    tag: &str,
) -> Result<(i64, i64), (String, String)> {
    let resp = client
        .produce(ProduceRequest {
            batches: vec![ProduceBatch {
                topic: topic.into(),
                partition: Some(0),
                records: records(tag, 100),
                ..ProduceBatch::default()
            }],
            acks: Acks::All as i32,
            timeout_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    let result = &resp.results[0];
    match &result.error {
        Some(e) => Err((e.reason.clone(), e.message.clone())),
        None => Ok((result.acks[0].base_offset, result.acks[0].last_offset)),
    }
}

/// Every value of `topic`'s partition 0 below its high watermark.
async fn read_all(client: &Client, topic: &str, end: i64) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    if end == 0 {
        return out;
    }
    let mut sub = client
        .subscribe(SubscribeOptions {
            partition: Some(0),
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(topic)
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.keys().next_back().is_none_or(|&last| last + 1 < end) {
        let r = tokio::time::timeout_at(deadline.into(), sub.next())
            .await
            .expect("read back within 30 s")
            .expect("subscription open")
            .unwrap();
        out.insert(
            r.offset,
            String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
        );
    }
    out
}

/// Produces batches to `topic` until one is refused; returns the refusal
/// and records every acknowledged batch in `acked`.
async fn fill(
    client: &mut ProduceServiceClient<tonic::transport::Channel>,
    topic: &str,
    acked: &mut BTreeMap<(String, i64), String>,
) -> (String, String) {
    for round in 0..1000 {
        let tag = format!("{topic}{round}");
        match produce(client, topic, &tag).await {
            Ok((base, last)) => {
                assert_eq!(last - base, 99);
                for (i, offset) in (base..=last).enumerate() {
                    acked.insert((topic.to_string(), offset), format!("{tag}-{i:06}-"));
                }
            }
            Err(refused) => return refused,
        }
    }
    panic!("{topic}: 100 MB produced to a small disk without a refusal");
}

fn check_acked(acked: &BTreeMap<(String, i64), String>, topic: &str, read: &BTreeMap<i64, String>) {
    for ((t, offset), prefix) in acked.iter().filter(|((t, _), _)| t == topic) {
        let value = read
            .get(offset)
            .unwrap_or_else(|| panic!("acknowledged {t}@{offset} is missing"));
        assert!(
            value.starts_with(prefix),
            "{t}@{offset}: {value:.20} is not {prefix}"
        );
    }
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok().await {
        assert!(Instant::now() < deadline, "{what} within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn high_watermark(client: &Client, topic: &str) -> (i64, i64) {
    let offsets = client.partition_offsets(topic).await.unwrap();
    (offsets[0].log_start_offset, offsets[0].high_watermark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_produce_early_and_recovers_when_space_is_freed() {
    let fs = SmallFs::mount(24 * MIB);
    let dev = common::Dev::start_with(&fs.path, |s| {
        s.storage_node.disk_min_free_bytes = 6 * MIB;
        s.storage_node.disk_max_used_percent = 100;
        s.controller.disk_reserve_bytes = 4 * MIB;
    })
    .await;
    let gw = dev.gateway();
    let client = Client::connect(&gw).await.unwrap();
    let mut raw = ProduceServiceClient::connect(format!("http://{gw}"))
        .await
        .unwrap();
    let segment: HashMap<String, String> = [("segment.bytes".to_string(), MIB.to_string())].into();
    for topic in ["big", "kept"] {
        client
            .create_topic(topic, 1, 1, segment.clone())
            .await
            .unwrap();
    }
    wait_for("partitions open", async || {
        produce(&mut raw, "kept", "warmup").await.is_ok()
    })
    .await;
    let mut acked = BTreeMap::new();
    for (i, offset) in (0..100).enumerate() {
        acked.insert(("kept".to_string(), offset), format!("warmup-{i:06}-"));
    }

    // Filled until refused: DISK_FULL, before the file system runs out.
    let (reason, message) = fill(&mut raw, "big", &mut acked).await;
    assert_eq!(reason, "DISK_FULL", "{message}");
    assert!(message.contains("storage node 1"), "{message}");
    assert!(fs.available() > 2 * MIB, "{} bytes left", fs.available());
    // The cluster status says so.
    let status = client.describe_cluster().await.unwrap();
    let node = &status.storage_nodes[0];
    assert!(node.disk_full, "{node:?}");
    assert!(
        node.disk_total_bytes > 0 && node.disk_available_bytes < 6 * MIB,
        "{node:?}"
    );
    // Every topic of the node is refused; reads and metadata go on.
    assert_eq!(
        produce(&mut raw, "kept", "no").await.unwrap_err().0,
        "DISK_FULL"
    );
    let (_, big_end) = high_watermark(&client, "big").await;
    check_acked(&acked, "big", &read_all(&client, "big", big_end).await);
    client
        .create_topic("meta", 1, 1, Default::default())
        .await
        .expect("metadata changes work on a full disk");

    // Deleting a topic gives its space back and produce resumes, even
    // when something else filled the file system to the last byte.
    let filler = fs.path.join("filler");
    let reserve = fs.path.join("controller/space.reserve");
    assert!(reserve.exists(), "the controller holds its space reserve");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }
    // A metadata write while the file system filled up released the
    // controller's reserve, and the filler took that space too: as if the
    // disk had filled before the release, give the reserve's size back.
    let reserve_eaten = !reserve.exists();
    if reserve_eaten {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(4 * MIB)).unwrap();
    } else {
        assert!(fs.available() < 64 << 10, "{} bytes left", fs.available());
    }
    let before = fs.available();
    client.delete_topic("big").await.unwrap();
    acked.retain(|(t, _), _| t != "big");
    wait_for("space back after the delete", async || {
        fs.available() > before + 8 * MIB
    })
    .await;
    std::fs::remove_file(&filler).unwrap();
    wait_for("produce accepted again", async || {
        produce(&mut raw, "kept", "after-delete").await.is_ok()
    })
    .await;
    let (_, end) = high_watermark(&client, "kept").await;
    for (i, offset) in (end - 100..end).enumerate() {
        acked.insert(
            ("kept".to_string(), offset),
            format!("after-delete-{i:06}-"),
        );
    }

    // Full again; lowering retention frees it too, without a restart.
    let (reason, message) = fill(&mut raw, "kept", &mut acked).await;
    assert_eq!(reason, "DISK_FULL", "{message}");
    let (_, end) = high_watermark(&client, "kept").await;
    check_acked(&acked, "kept", &read_all(&client, "kept", end).await);
    client
        .alter_topic_configs(
            "kept",
            [("retention.bytes".to_string(), (2 * MIB).to_string())].into(),
            Vec::new(),
        )
        .await
        .unwrap();
    wait_for("produce accepted after retention", async || {
        produce(&mut raw, "kept", "after-retention").await.is_ok()
    })
    .await;
    let (start, end) = high_watermark(&client, "kept").await;
    assert!(start > 0, "retention deleted the oldest segments");
    // What retention did not delete is all there.
    acked.retain(|(t, offset), _| t != "kept" || *offset >= start);
    acked.retain(|(t, offset), _| t != "kept" || *offset < end - 100);
    let read = read_all(&client, "kept", end).await;
    check_acked(&acked, "kept", &read);
    assert!(
        read.get(&(end - 1))
            .unwrap()
            .starts_with("after-retention-000099-")
    );

    dev.stop().await;
}

/// Without the watermark the file system really runs out: the appends
/// that hit ENOSPC fail with `STORAGE_ERROR`, and produce succeeds again
/// once space is back, without a restart. Every acknowledged record is
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_hit_enospc_fail_alone_and_writes_resume_when_space_returns() {
    let fs = SmallFs::mount(16 * MIB);
    let dev = common::Dev::start_with(&fs.path, |s| {
        s.storage_node.disk_min_free_bytes = 0;
        s.storage_node.disk_max_used_percent = 100;
        s.controller.disk_reserve_bytes = 2 * MIB;
    })
    .await;
    let gw = dev.gateway();
    let client = Client::connect(&gw).await.unwrap();
    let mut raw = ProduceServiceClient::connect(format!("http://{gw}"))
        .await
        .unwrap();
    let segment: HashMap<String, String> = [("segment.bytes".to_string(), MIB.to_string())].into();
    client.create_topic("t", 1, 1, segment).await.unwrap();
    wait_for("partition open", async || {
        produce(&mut raw, "t", "warmup").await.is_ok()
    })
    .await;
    let mut acked = BTreeMap::new();
    for (i, offset) in (0..100).enumerate() {
        acked.insert(("t".to_string(), offset), format!("warmup-{i:06}-"));
    }
    // Something else takes a third of the disk.
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0u8; (5 * MIB) as usize]).unwrap();

    let (reason, message) = fill(&mut raw, "t", &mut acked).await;
    assert_eq!(reason, "STORAGE_ERROR", "{message}");
    assert!(message.contains("No space left"), "{message}");

    // The failed append was cut back (or, if the disk ran out while a
    // segment roll wrote its indexes, the replica is reopened from disk
    // by the node within its reopen interval): no restart needed.
    std::fs::remove_file(&filler).unwrap();
    wait_for("produce accepted again", async || {
        produce(&mut raw, "t", "after").await.is_ok()
    })
    .await;
    let topic = client.describe_topic("t").await.unwrap();
    assert!(topic.partitions[0].offline_replicas.is_empty(), "{topic:?}");
    let (_, end) = high_watermark(&client, "t").await;
    for (i, offset) in (end - 100..end).enumerate() {
        acked.insert(("t".to_string(), offset), format!("after-{i:06}-"));
    }
    let read = read_all(&client, "t", end).await;
    check_acked(&acked, "t", &read);
    assert_eq!(read.len() as i64, end, "no gap, nothing extra");
    dev.stop().await;
}
