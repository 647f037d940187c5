//! Replication factor 3 in one process: a real controller and three real
//! storage nodes over loopback gRPC (`common`). Nodes are killed mid-flight
//! and restarted on the same data directory; every record acknowledged
//! with `acks=all` must be in every replica's log at the offset it was
//! acknowledged at.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Cluster, read_replica, retriable};
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{AppendRequest, PartitionRef};
use streambus_proto::v1::Acks;
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, Compression, Record};

const TOPIC: &str = "r";

/// The harness's calls for partition 0 of [`TOPIC`].
impl Cluster {
    async fn create(&self, configs: &[(&str, &str)]) {
        self.create_topic(TOPIC, 1, 3, configs).await;
    }
}

/// Stops every node and checks that all replicas hold the same records and
/// that every acknowledged value is at its acknowledged offset.
async fn check_replicas(cluster: &mut Cluster, acked: &HashMap<String, i64>) {
    cluster.kill_all().await;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    common::check_partition(cluster, TOPIC, 0, &ids, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_all_survives_losing_a_follower_then_the_leader() {
    let mut cluster = Cluster::start(3).await;
    cluster.create(&[("min.insync.replicas", "2")]).await;
    let mut acked = HashMap::new();
    let mut n = 0;
    let mut produce = async |cluster: &Cluster, count: usize| {
        for _ in 0..count {
            let v = format!("v{n}");
            n += 1;
            let offset = cluster.append_acked(TOPIC, 0, &v).await;
            acked.insert(v, offset);
        }
    };
    produce(&cluster, 50).await;

    // A follower dies: after the ISR shrinks, acks=all goes on with two.
    let first = cluster.partition(TOPIC, 0).await;
    let follower = *first.replicas.iter().find(|&&r| r != first.leader).unwrap();
    cluster.kill_node(follower).await;
    produce(&cluster, 50).await;
    let p = cluster
        .wait_partition(TOPIC, 0, "without the dead follower", |p| {
            !p.isr.contains(&follower) && p.isr.len() == 2
        })
        .await;
    assert_eq!(p.leader, first.leader);

    // Then the leader dies: the last in-sync replica takes over with a new
    // epoch, but one replica is below min.insync.replicas=2.
    cluster.kill_node(first.leader).await;
    let p = cluster
        .wait_partition(TOPIC, 0, "led by the survivor", |p| {
            p.leader != first.leader && p.leader != 0
        })
        .await;
    assert!(p.leader_epoch > first.leader_epoch, "{p:?}");
    assert_eq!(p.isr, vec![p.leader]);
    let err = loop {
        match cluster.append(TOPIC, 0, "refused", Acks::All).await {
            Err(e) if e.reason == Reason::NotEnoughReplicas => break e,
            Err(e) if retriable(&e) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("expected NOT_ENOUGH_REPLICAS, got {other:?}"),
        }
    };
    assert!(err.message.contains("min.insync.replicas is 2"), "{err}");
    // acks=leader still works (and promises less).
    cluster
        .append(TOPIC, 0, "leader-only", Acks::Leader)
        .await
        .unwrap();

    // The first follower comes back, catches up and rejoins the ISR:
    // acks=all works again.
    cluster.start_node(follower).await;
    cluster
        .wait_partition(TOPIC, 0, "with the follower back", |p| {
            p.isr.contains(&follower)
        })
        .await;
    produce(&cluster, 50).await;

    // The old leader comes back as a follower, truncates what it may hold
    // beyond the new leader's log and rejoins.
    cluster.start_node(first.leader).await;
    let p = cluster
        .wait_partition(TOPIC, 0, "fully in sync again", |p| p.isr.len() == 3)
        .await;
    assert_ne!(p.leader, first.leader);
    produce(&cluster, 20).await;

    check_replicas(&mut cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_leader_truncates_what_only_it_had() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .create(&[("unclean.leader.election.enable", "true")])
        .await;
    let mut acked = HashMap::new();
    for i in 0..20 {
        let v = format!("a{i}");
        acked.insert(v.clone(), cluster.append_acked(TOPIC, 0, &v).await);
    }
    let first = cluster.partition(TOPIC, 0).await;
    let followers: Vec<u64> = first
        .replicas
        .iter()
        .copied()
        .filter(|&r| r != first.leader)
        .collect();
    for &f in &followers {
        cluster.kill_node(f).await;
    }
    cluster
        .wait_partition(TOPIC, 0, "led alone", |p| p.isr == vec![first.leader])
        .await;
    // Records only the leader has (acks=leader promises no more).
    for i in 0..5 {
        cluster
            .append(TOPIC, 0, &format!("lost{i}"), Acks::Leader)
            .await
            .unwrap();
    }
    cluster.kill_node(first.leader).await;
    // An out-of-sync follower returns: unclean election (opted in) lets it
    // lead, and it writes its own records at the offsets the old leader
    // used.
    cluster.start_node(followers[0]).await;
    let p = cluster
        .wait_partition(TOPIC, 0, "led by the returning follower", |p| {
            p.leader == followers[0]
        })
        .await;
    assert!(p.leader_epoch > first.leader_epoch);
    for i in 0..3 {
        let v = format!("b{i}");
        acked.insert(v.clone(), cluster.append_acked(TOPIC, 0, &v).await);
    }
    // The old leader returns as follower: its five records diverge and go.
    cluster.start_node(first.leader).await;
    cluster.start_node(followers[1]).await;
    cluster
        .wait_partition(TOPIC, 0, "fully in sync again", |p| p.isr.len() == 3)
        .await;
    for i in 0..5 {
        let v = format!("c{i}");
        acked.insert(v.clone(), cluster.append_acked(TOPIC, 0, &v).await);
    }
    let leader_dir = cluster.node_dir(first.leader);
    check_replicas(&mut cluster, &acked).await;
    let log = read_replica(&leader_dir, TOPIC, 0);
    assert!(
        log.iter().all(|(_, v)| !v.starts_with("lost")),
        "the divergent tail survived: {log:?}"
    );
    assert_eq!(log.len(), 20 + 3 + 5, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_controller_stops_acknowledging() {
    let mut cluster = Cluster::start(3).await;
    cluster.create(&[]).await;
    cluster.append_acked(TOPIC, 0, "before").await;
    let p = cluster.partition(TOPIC, 0).await;
    let addr = cluster
        .metadata()
        .await
        .nodes
        .iter()
        .find(|n| n.node_id == p.leader)
        .unwrap()
        .address
        .clone();
    cluster.stop_controller().await;
    // Past the lease another leader could have been elected: acks=all is
    // refused rather than acknowledged by a possibly deposed leader.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut client = StorageServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        value: Some(b"isolated".to_vec().into()),
        ..Record::default()
    });
    let status = client
        .append(AppendRequest {
            partition: Some(PartitionRef {
                topic: TOPIC.into(),
                partition: 0,
            }),
            batch: b.build(),
            acks: Acks::All as i32,
            leader_epoch: p.leader_epoch,
        })
        .await
        .unwrap_err();
    let err = Error::from_status(&status);
    assert_eq!(err.reason, Reason::NotLeader, "{err}");
    assert!(err.message.contains("lease"), "{err}");

    // The controller returns: the lease renews and writes go on.
    cluster.restart_controller().await;
    cluster.append_acked(TOPIC, 0, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .create(&[
            ("segment.bytes", "600"),
            ("retention.bytes", "1200"),
            ("min.insync.replicas", "2"),
        ])
        .await;
    let mut acked = HashMap::new();
    for i in 0..5 {
        let v = format!("early{i:03}-{}", "x".repeat(80));
        acked.insert(v.clone(), cluster.append_acked(TOPIC, 0, &v).await);
    }
    let first = cluster.partition(TOPIC, 0).await;
    let follower = *first.replicas.iter().find(|&&r| r != first.leader).unwrap();
    cluster.kill_node(follower).await;
    // Enough records that retention deletes everything the dead follower
    // has on the leader.
    let mut i = 0;
    loop {
        let v = format!("late{i:03}-{}", "x".repeat(80));
        acked.insert(v.clone(), cluster.append_acked(TOPIC, 0, &v).await);
        i += 1;
        let start = cluster.log_start(TOPIC, 0).await;
        if i >= 40 && start > 5 {
            break;
        }
        assert!(i < 500, "retention never moved the log start");
    }
    cluster.start_node(follower).await;
    cluster
        .wait_partition(TOPIC, 0, "with the follower back", |p| {
            p.isr.contains(&follower)
        })
        .await;
    let last = cluster.append_acked(TOPIC, 0, "last").await;
    acked.insert("last".into(), last);

    cluster.kill_all().await;
    let leader_log = read_replica(&cluster.node_dir(first.leader), TOPIC, 0);
    let follower_log = read_replica(&cluster.node_dir(follower), TOPIC, 0);
    assert_eq!(follower_log.last().unwrap(), &(last, "last".to_string()));
    assert!(
        follower_log[0].0 > 5,
        "the follower kept its old records: {:?}",
        follower_log[0]
    );
    // Where both have an offset, they hold the same record.
    let leader: HashMap<i64, &String> = leader_log.iter().map(|(o, v)| (*o, v)).collect();
    for (o, v) in &follower_log {
        if let Some(lv) = leader.get(o) {
            assert_eq!(lv, &v, "offset {o}");
        }
    }
    let follower: HashMap<i64, &String> = follower_log.iter().map(|(o, v)| (*o, v)).collect();
    for (v, o) in &acked {
        if *o >= follower_log[0].0 {
            assert_eq!(follower.get(o), Some(&v), "acknowledged {v} at {o}");
        }
    }
}

/// Heartbeats run on a thread of their own: a node whose runtime has no
/// free worker for three leases keeps its lease, and the controller
/// applies no liveness change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_runtime_stalls_keeps_its_lease() {
    let c = Cluster::start(1).await;
    let before = c.metadata().await;
    assert!(before.nodes.iter().all(|n| n.alive));
    c.stall_node(1, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let after = c.metadata().await;
    assert!(after.nodes.iter().all(|n| n.alive), "{:?}", after.nodes);
    assert_eq!(after.version, before.version, "no liveness change applied");
}
