//! `WatchRecords`: many partitions waited on over one stream. Watches fire
//! when records arrive, when their wait runs out, and as `unanswered` when
//! the node does not lead the partition (or stops leading it while the
//! watch waits); cancelled watches never fire.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Cluster, WAIT};
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{
    FiredWatch, PartitionRef, RecordWatch, WatchRecordsRequest, WatchRecordsResponse,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

struct WatchStream {
    requests: mpsc::UnboundedSender<WatchRecordsRequest>,
    fired: Streaming<WatchRecordsResponse>,
}

impl WatchStream {
    async fn open(mut client: StorageServiceClient<Channel>) -> WatchStream {
        let (requests, rx) = mpsc::unbounded_channel();
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let fired = client.watch_records(outbound).await.unwrap().into_inner();
        WatchStream { requests, fired }
    }

    fn add(&self, id: u64, topic: &str, partition: u32, offset: i64, wait: Duration) {
        self.requests
            .send(WatchRecordsRequest {
                add: vec![RecordWatch {
                    id,
                    partition: Some(PartitionRef {
                        topic: topic.into(),
                        partition,
                    }),
                    offset,
                    max_wait_ms: wait.as_millis() as u32,
                }],
                cancel: vec![],
            })
            .unwrap();
    }

    fn cancel(&self, id: u64) {
        self.requests
            .send(WatchRecordsRequest {
                add: vec![],
                cancel: vec![id],
            })
            .unwrap();
    }

    /// The watches that fire within `within`.
    async fn fired(&mut self, within: Duration) -> HashMap<u64, FiredWatch> {
        let mut out = HashMap::new();
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(m) = tokio::time::timeout_at(deadline, self.fired.message()).await {
            for f in m.unwrap().expect("stream open").fired {
                assert!(out.insert(f.id, f).is_none(), "a watch fired twice");
            }
        }
        out
    }

    /// Waits for watch `id` to fire; no other may fire meanwhile.
    async fn next(&mut self, id: u64) -> FiredWatch {
        let m = tokio::time::timeout(WAIT, self.fired.message())
            .await
            .expect("a watch fires")
            .unwrap()
            .expect("stream open");
        assert_eq!(m.fired.len(), 1, "{m:?}");
        assert_eq!(m.fired[0].id, id, "{m:?}");
        m.fired[0]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_fire_on_records_on_their_wait_and_unanswered_elsewhere() {
    let cluster = Cluster::start(1).await;
    cluster.create_topic("w", 3, 1, &[]).await;
    let (client, _) = cluster.leader("w", 0).await.unwrap();
    let mut s = WatchStream::open(client).await;

    let long = Duration::from_secs(60);
    s.add(1, "w", 0, 0, long);
    s.add(2, "w", 1, 0, Duration::from_millis(300));
    s.add(3, "nope", 0, 0, long);
    s.add(4, "w", 2, 5, long);
    s.add(5, "w", 2, 0, long);
    let fired = s.fired(Duration::from_millis(1500)).await;
    // Unknown partition and an offset past the log end: unanswered, at
    // once. The short wait ran out with nothing new. The others wait.
    assert_eq!(fired.len(), 3, "{fired:?}");
    assert!(fired[&3].unanswered, "{fired:?}");
    assert!(fired[&4].unanswered, "{fired:?}");
    assert!(!fired[&2].unanswered, "{fired:?}");
    assert_eq!(fired[&2].high_watermark, 0);

    // A cancelled watch never fires, even when its records come.
    s.cancel(5);
    cluster.append_acked("w", 2, "x").await;
    // Records on the watched partition fire its watch, with the high
    // watermark past the offset.
    cluster.append_acked("w", 0, "a").await;
    let f = s.next(1).await;
    assert!(!f.unanswered);
    assert_eq!(f.high_watermark, 1);
    assert!(s.fired(Duration::from_millis(500)).await.is_empty());

    // A watch at an offset already below the high watermark fires at once;
    // an id reused for a new watch replaces the old one.
    s.add(6, "w", 2, 0, long);
    assert_eq!(s.next(6).await.high_watermark, 1);
    s.add(7, "w", 0, 1, long);
    s.add(7, "w", 0, 0, long);
    assert_eq!(s.next(7).await.high_watermark, 1);
    assert!(s.fired(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_fires_unanswered_when_its_node_stops_leading() {
    let mut cluster = Cluster::start_with(3, 300).await;
    cluster
        .create_topic("m", 1, 3, &[("min.insync.replicas", "2")])
        .await;
    cluster.append_acked("m", 0, "a").await;
    let preferred = cluster.partition("m", 0).await.leader;

    // The preferred leader dies; another replica leads.
    cluster.kill_node(preferred).await;
    let moved = cluster
        .wait_partition("m", 0, "led by another node", |p| {
            p.leader != preferred && p.leader != 0
        })
        .await;
    let (client, _) = cluster.leader("m", 0).await.unwrap();
    let mut s = WatchStream::open(client).await;
    let end = cluster.append_acked("m", 0, "b").await + 1;
    s.add(1, "m", 0, end, Duration::from_secs(60));
    assert!(s.fired(Duration::from_millis(300)).await.is_empty());

    // The preferred replica comes back and takes the lead again: the
    // watch on the node that stepped down fires, unanswered.
    cluster.start_node(preferred).await;
    let f = s.next(1).await;
    assert!(f.unanswered, "{f:?}");
    let now = cluster.partition("m", 0).await;
    assert_ne!(now.leader, moved.leader, "{now:?}");
}
