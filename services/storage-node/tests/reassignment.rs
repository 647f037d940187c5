//! Placement changes the controller makes on a running cluster (`common`:
//! a real controller and real storage nodes in one process): leaderships
//! going back to preferred replicas, and a storage node decommissioned
//! while records are written with `acks=all`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Cluster, WAIT, check_partition, partition_dirs};
use streambus_cluster::ControllerClient;
use streambus_proto::Reason;

/// Values acknowledged per partition, with their offsets.
type Acked = HashMap<u32, HashMap<String, i64>>;

/// Appends `count` records to every partition of `topic` with acks=all.
async fn produce(cluster: &Cluster, topic: &str, partitions: u32, count: usize, acked: &mut Acked) {
    for _ in 0..count {
        for p in 0..partitions {
            let log = acked.entry(p).or_default();
            let v = format!("{topic}-{p}-{}", log.len());
            let offset = cluster.append_acked(topic, p, &v).await;
            log.insert(v, offset);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_returns_to_the_preferred_replica_once_it_is_back_in_sync() {
    let mut cluster = Cluster::start_with(3, 300).await;
    cluster
        .create_topic("p", 3, 3, &[("min.insync.replicas", "2")])
        .await;
    let mut acked = Acked::new();
    produce(&cluster, "p", 3, 10, &mut acked).await;
    let first = cluster.partition("p", 0).await;
    assert_eq!(first.leader, first.replicas[0]);
    let preferred = first.leader;

    // The preferred leader dies: another in-sync replica takes over.
    cluster.kill_node(preferred).await;
    let moved = cluster
        .wait_partition("p", 0, "led by another node", |p| {
            p.leader != preferred && p.leader != 0
        })
        .await;
    produce(&cluster, "p", 3, 10, &mut acked).await;

    // It comes back, catches up, rejoins the ISR, and leads again in a new
    // epoch, without anything else happening.
    cluster.start_node(preferred).await;
    let back = cluster
        .wait_partition("p", 0, "led by its preferred replica again", |p| {
            p.leader == preferred
        })
        .await;
    assert!(back.leader_epoch > moved.leader_epoch, "{back:?}");
    assert!(back.partition_epoch > moved.partition_epoch, "{back:?}");
    assert!(back.isr.contains(&preferred), "{back:?}");
    produce(&cluster, "p", 3, 10, &mut acked).await;
    // Leaderships are spread as placed: every partition led by replicas[0].
    for p in 0..3 {
        let d = cluster.partition("p", p).await;
        assert_eq!(d.leader, d.replicas[0], "{d:?}");
    }

    cluster.kill_all().await;
    for p in 0..3 {
        check_partition(&cluster, "p", p, &[1, 2, 3], &acked[&p]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decommissioning_a_node_moves_its_replicas_and_keeps_every_acknowledged_record() {
    const PARTITIONS: u32 = 4;
    let mut cluster = Cluster::start(4).await;
    cluster
        .create_topic("d", PARTITIONS, 3, &[("min.insync.replicas", "2")])
        .await;
    let mut acked = Acked::new();
    produce(&cluster, "d", PARTITIONS, 20, &mut acked).await;
    let md = cluster.metadata().await;
    let leaving = 1;
    let on_leaving = |md: &streambus_proto::internal::ClusterMetadata| {
        md.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.replicas.contains(&leaving))
            .count()
    };
    let hosted = on_leaving(&md);
    assert!(hosted >= 3, "{md:?}");
    assert!(
        md.topics[0].partitions.iter().any(|p| p.leader == leaving),
        "the node leads a partition"
    );

    let status = cluster.client.decommission_node(leaving).await.unwrap();
    assert!(status.decommissioning, "{status:?}");
    assert_eq!(status.replicas as usize, hosted);

    // Keep writing while the replicas move, until none is left on the node.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        produce(&cluster, "d", PARTITIONS, 1, &mut acked).await;
        let md = cluster.metadata().await;
        if on_leaving(&md) == 0 {
            let node = md.nodes.iter().find(|n| n.node_id == leaving).unwrap();
            assert!(node.decommissioning);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas still on node {leaving}: {md:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut replicas = HashMap::new();
    for p in 0..PARTITIONS {
        let d = cluster
            .wait_partition("d", p, "fully in sync", |d| d.isr.len() == 3)
            .await;
        assert_eq!(d.replicas.len(), 3, "{d:?}");
        assert!(!d.replicas.contains(&leaving), "{d:?}");
        replicas.insert(p, d.replicas);
    }
    // The node deletes the replicas it no longer hosts.
    let dir = cluster.node_dir(leaving);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !partition_dirs(&dir, "d", None).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left on the node: {:?}",
            partition_dirs(&dir, "d", None)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&cluster, "d", PARTITIONS, 10, &mut acked).await;

    // Three nodes left for replication factor 3: another one cannot go.
    let once = ControllerClient::new(cluster.client.addresses().to_vec())
        .unwrap()
        .with_retry_for(Duration::ZERO);
    let err = once.decommission_node(2).await.unwrap_err();
    assert_eq!(err.reason, Reason::InsufficientNodes, "{err}");
    assert!(err.message.contains("replication factor 3"), "{err}");
    // New topics avoid the decommissioned node.
    cluster.create_topic("after", 3, 3, &[]).await;
    let md = cluster.metadata().await;
    let after = md.topics.iter().find(|t| t.name == "after").unwrap();
    assert!(
        after
            .partitions
            .iter()
            .all(|p| !p.replicas.contains(&leaving))
    );

    cluster.kill_all().await;
    assert!(partition_dirs(&dir, "d", None).is_empty());
    for p in 0..PARTITIONS {
        check_partition(&cluster, "d", p, &replicas[&p], &acked[&p]);
    }
}
