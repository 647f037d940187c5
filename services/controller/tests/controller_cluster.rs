//! Controllers started in-process on pre-bound `127.0.0.1:0` listeners.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use streambus_proto::internal::OfflineReplica;
use streambus_proto::internal::controller_service_client::ControllerServiceClient;
use streambus_proto::{Error, Reason};

#[tokio::test]
async fn topics_survive_controller_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    client
        .register_node(reg(7, "127.0.0.1:9001"))
        .await
        .unwrap();
    let mut req = topic("orders", 3);
    req.configs.insert("retention.ms".into(), "-1".into());
    let created = client.create_topic(req).await.unwrap();
    assert_eq!(created.configs["retention.ms"], "-1");
    assert_eq!(created.configs["segment.bytes"], "1073741824");
    client.create_topic(topic("payments", 1)).await.unwrap();
    client.delete_topic("payments").await.unwrap();
    client.create_topic(topic("audit", 2)).await.unwrap();
    let before = client.get_metadata().await.unwrap();
    assert_eq!(before.topics.len(), 2);
    c.shutdown().await;

    let c = single(dir.path(), 60_000).await;
    let client = self::client(&[&c]);
    let after = client.get_metadata().await.unwrap();
    // Identical; the version never goes back.
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.nodes, before.nodes);
    assert!(
        after.version >= before.version,
        "{} < {}",
        after.version,
        before.version
    );
    // Still writable, and names stay unique.
    let err = client.create_topic(topic("orders", 1)).await.unwrap_err();
    assert_eq!(err.reason, Reason::TopicAlreadyExists);
    client.create_topic(topic("payments", 1)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_stable_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);

    // Retriable: the client retries it (a storage node may be starting),
    // then gives up with the reason.
    let impatient = client.clone().with_retry_for(Duration::from_millis(200));
    let err = impatient.create_topic(topic("t", 1)).await.unwrap_err();
    assert_eq!(err.reason, Reason::InsufficientNodes, "{err}");
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();

    let err = client.create_topic(topic("bad name", 1)).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidTopicName);
    let err = client.create_topic(topic("t", 0)).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidArgument);
    let mut req = topic("t", 1);
    req.replication_factor = 3;
    let err = impatient.create_topic(req).await.unwrap_err();
    assert_eq!(err.reason, Reason::InsufficientNodes, "{err}");
    let mut req = topic("t", 1);
    req.configs.insert("cleanup.policy".into(), "shred".into());
    let err = client.create_topic(req).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidConfig);
    assert!(err.message.contains("cleanup.policy"));
    let err = client.delete_topic("missing").await.unwrap_err();
    assert_eq!(err.reason, Reason::UnknownTopic);
    let err = client.heartbeat(hb(99)).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidArgument);

    // The server keeps serving.
    client.create_topic(topic("t", 1)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn writes_through_a_follower_get_leader_hint_and_client_follows_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let controllers = cluster(&dirs).await;
    let all: Vec<&Controller> = controllers.iter().collect();
    let leader_id = leader_of(&client(&all)).await;
    let leader = controllers.iter().find(|c| c.id == leader_id).unwrap();
    let follower = controllers.iter().find(|c| c.id != leader_id).unwrap();

    // Raw gRPC to the follower: UNAVAILABLE / NOT_CONTROLLER_LEADER + hint.
    let mut raw = ControllerServiceClient::connect(format!("http://{}", follower.address))
        .await
        .unwrap();
    let status = raw.create_topic(topic("t", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let err = Error::from_status(&status);
    assert_eq!(err.reason, Reason::NotControllerLeader);
    assert_eq!(err.leader_hint.as_deref(), Some(leader.address.as_str()));

    // A client that only knows the follower follows the hint.
    let via_follower = client(&[follower]);
    via_follower
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    let created = via_follower.create_topic(topic("t", 2)).await.unwrap();
    assert_eq!(created.partitions.len(), 2);

    // Every controller serves reads from its applied state.
    for c in &controllers {
        let c_client = client(&[c]);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let md = c_client.get_metadata().await.unwrap();
            if md.topics.iter().any(|t| t.name == "t") {
                assert_eq!(md.controller_leader_id, leader_id);
                assert_eq!(md.controller_leader_address, leader.address);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller {} lags",
                c.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for c in controllers {
        c.shutdown().await;
    }
}

#[tokio::test]
async fn new_leader_is_elected_after_leader_shutdown_and_accepts_writes() {
    let dirs = dirs(3);
    let (controllers, client) = three_with_a_storage_node(&dirs).await;
    client.create_topic(topic("before", 1)).await.unwrap();
    let old_leader = leader_of(&client).await;
    let mut watch = Box::pin(client.watch_metadata());
    let first = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap();

    let (gone, rest): (Vec<Controller>, Vec<Controller>) =
        controllers.into_iter().partition(|c| c.id == old_leader);
    for c in gone {
        c.shutdown().await;
    }

    // The client still lists the dead leader; it retries on the others.
    client.create_topic(topic("after", 1)).await.unwrap();
    let md = client.get_metadata().await.unwrap();
    assert_ne!(md.controller_leader_id, old_leader);
    assert_ne!(md.controller_leader_id, 0);
    for c in &rest {
        let md = self::client(&[c]).get_metadata().await.unwrap();
        let mut names: Vec<_> = md.topics.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if names != ["after", "before"] {
            // A follower may lag by a heartbeat.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let md = self::client(&[c]).get_metadata().await.unwrap();
            assert_eq!(md.topics.len(), 2, "controller {}", c.id);
        }
    }
    client.delete_topic("before").await.unwrap();

    // The watch survives the failover (it may have been on the old leader)
    // and its versions only grow.
    let mut last = first.version;
    loop {
        let md = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap();
        assert!(md.version > last);
        last = md.version;
        let names: Vec<_> = md.topics.keys().map(String::as_str).collect();
        if names == ["after"] {
            assert_ne!(md.controller_leader_id, old_leader);
            break;
        }
    }
    for c in rest {
        c.shutdown().await;
    }
}

#[tokio::test]
async fn watch_metadata_delivers_updates_in_version_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    let mut watch = Box::pin(client.watch_metadata());
    let first = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.topics.is_empty());
    assert_eq!(first.controller_leader_id, 1);

    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    client.create_topic(topic("watched", 4)).await.unwrap();
    let mut last = first.version;
    loop {
        let md = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap();
        assert!(md.version > last, "versions only increase");
        last = md.version;
        if let Some(t) = md.topic("watched") {
            assert_eq!(t.partitions.len(), 4);
            assert!(md.nodes.iter().all(|n| n.alive));
            break;
        }
    }
    c.shutdown().await;
}

#[tokio::test]
async fn lapsed_storage_node_lease_is_reported_dead_until_heartbeats_resume() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 300).await;
    let client = client(&[&c]);
    assert_eq!(
        client
            .register_node(reg(5, "127.0.0.1:9005"))
            .await
            .unwrap()
            .lease_ms,
        300
    );
    client.create_topic(topic("t", 1)).await.unwrap();
    let mut watch = Box::pin(client.watch_metadata());
    let alive_of = |md: &streambus_cluster::ClusterView| md.node(5).map(|n| n.alive);

    // No heartbeats: the lease lapses and the node is reported dead, still
    // leading its partition (it has no other replica).
    loop {
        let md = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap();
        if alive_of(&md) == Some(false) {
            let p = &md.topics["t"].partitions[0];
            assert_eq!((p.leader, p.leader_epoch), (5, 0));
            break;
        }
    }
    // Heartbeats resume: alive again.
    client.heartbeat(hb(5)).await.unwrap();
    loop {
        let md = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap();
        if alive_of(&md) == Some(true) {
            break;
        }
    }
    c.shutdown().await;
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.address))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "streambus.internal.v1.ControllerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"streambus.internal.v1.ControllerService"),
        "{names:?}"
    );
    assert!(names.contains(&"streambus.v1.AdminService"), "{names:?}");
    c.shutdown().await;
}

#[tokio::test]
async fn invalid_segment_bytes_is_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    let mut req = topic("bad", 1);
    req.configs.insert("segment.bytes".into(), "20".into());
    let err = client.create_topic(req).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidConfig, "{err}");
    assert!(err.message.contains("segment.bytes"), "{}", err.message);
    assert!(err.message.contains("61 to 2147483647"), "{}", err.message);
    // Nothing was created, and the next create works.
    assert!(client.get_metadata().await.unwrap().topics.is_empty());
    client.create_topic(topic("good", 1)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn a_second_live_node_with_the_same_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    let first = client
        .register_node(reg(4, "127.0.0.1:9004"))
        .await
        .unwrap();
    assert_eq!(first.cluster_id.len(), 32);

    // Same id, another data directory, while the first is alive.
    let mut twin = reg(4, "127.0.0.1:9104");
    twin.incarnation = 2;
    twin.directory_id = "another-dir".into();
    let err = client.register_node(twin).await.unwrap_err();
    assert_eq!(err.reason, Reason::NodeIdConflict, "{err}");
    assert!(err.message.contains("127.0.0.1:9004"), "{}", err.message);
    // The original keeps its address.
    let md = client.get_metadata().await.unwrap();
    assert_eq!(md.nodes[0].address, "127.0.0.1:9004");

    // A restart of the original (same directory, new incarnation) is fine,
    // and supersedes the old incarnation's heartbeats.
    let mut restart = reg(4, "127.0.0.1:9004");
    restart.incarnation = 3;
    client.register_node(restart).await.unwrap();
    // The old incarnation is told to register again (where
    // `check_registration` decides), not stopped by a possibly stale view.
    let err = client.heartbeat(hb(4)).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidArgument, "{err}");
    assert!(err.message.contains("register again"), "{}", err.message);
    let mut beat = hb(4);
    beat.incarnation = 3;
    client.heartbeat(beat).await.unwrap();

    // A data directory stamped by another cluster is refused.
    let mut foreign = reg(5, "127.0.0.1:9005");
    foreign.cluster_id = "0123456789abcdef0123456789abcdef".into();
    let err = client.register_node(foreign).await.unwrap_err();
    assert_eq!(err.reason, Reason::ClusterIdMismatch, "{err}");
    let mut own = reg(5, "127.0.0.1:9005");
    own.cluster_id = first.cluster_id.clone();
    client.register_node(own).await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn offline_replicas_reported_by_heartbeat_appear_in_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    let t = client.create_topic(topic("t", 2)).await.unwrap();
    let mut beat = hb(1);
    beat.offline_replicas = vec![OfflineReplica {
        topic: "t".into(),
        topic_id: t.topic_id.clone(),
        partition: 1,
        reason: "cannot open log".into(),
    }];
    client.heartbeat(beat).await.unwrap();
    let md = client.get_metadata().await.unwrap();
    let ps = &md.topics[0].partitions;
    assert!(ps[0].offline_replicas.is_empty());
    assert_eq!(ps[1].offline_replicas, vec![1]);
    // Back online: the next heartbeat without it clears it.
    client.heartbeat(hb(1)).await.unwrap();
    let md = client.get_metadata().await.unwrap();
    assert!(md.topics[0].partitions[1].offline_replicas.is_empty());
    c.shutdown().await;
}

#[tokio::test]
async fn a_metadata_probe_at_the_current_version_carries_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    client.create_topic(topic("probed", 2)).await.unwrap();
    let full = client.get_metadata().await.unwrap();
    assert_eq!(full.topics.len(), 1);
    assert!(!full.unchanged);
    assert_eq!(
        client.get_metadata_if_changed(full.version).await.unwrap(),
        None
    );
    let stale = client
        .get_metadata_if_changed(full.version - 1)
        .await
        .unwrap()
        .expect("a newer version comes whole");
    assert_eq!(stale, full);
    c.shutdown().await;
}

/// A watcher that accepts partition deltas gets, for a change to one
/// partition, that partition alone (`partial`); one that does not gets the
/// topic whole.
#[tokio::test]
async fn metadata_watchers_that_accept_partition_deltas_get_only_changed_partitions() {
    use streambus_proto::internal::{AlterPartitionRequest, WatchMetadataRequest};

    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    for id in 1..=2 {
        client
            .register_node(reg(id, &format!("127.0.0.1:900{id}")))
            .await
            .unwrap();
    }
    let mut wide = topic("wide", 6);
    wide.replication_factor = 2;
    let wide = client.create_topic(wide).await.unwrap();
    client.create_topic(topic("still", 2)).await.unwrap();

    let raw = ControllerServiceClient::connect(format!("http://{}", c.address))
        .await
        .unwrap();
    let watch = |accept_partition_deltas| {
        let mut raw = raw.clone();
        async move {
            raw.watch_metadata(WatchMetadataRequest {
                min_version: 0,
                accept_deltas: true,
                accept_partition_deltas,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let mut partial = watch(true).await;
    let mut whole = watch(false).await;
    let mut views = Box::pin(client.watch_metadata());
    let first_view = tokio::time::timeout(WAIT, views.next())
        .await
        .unwrap()
        .unwrap();
    let first = partial.message().await.unwrap().unwrap();
    assert!(!first.delta, "a stream starts with a whole snapshot");
    assert!(first.topics.iter().all(|t| !t.partial));
    assert_eq!(whole.message().await.unwrap().unwrap().topics, first.topics);

    // The leader of partition 3 drops its follower from the ISR.
    let p = wide.partitions[3].clone();
    assert_eq!(p.isr.len(), 2);
    let changed = client
        .alter_partition(AlterPartitionRequest {
            node_id: p.leader,
            incarnation: 1,
            topic: "wide".into(),
            topic_id: wide.topic_id.clone(),
            partition: 3,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![p.leader],
        })
        .await
        .unwrap();
    assert_eq!(changed.isr, [p.leader]);
    let end = client.get_metadata().await.unwrap();

    // Merged into the first snapshot, the partial deltas give the current
    // metadata; they carry nothing but partition 3.
    let mut merged = first.clone();
    while merged.version < end.version {
        let d = tokio::time::timeout(WAIT, partial.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(d.delta);
        for t in d.topics {
            assert_eq!(t.name, "wide");
            assert!(t.partial, "{t:?}");
            assert_eq!(t.topic_id, wide.topic_id);
            assert_eq!(t.replication_factor, 2);
            assert_eq!(t.configs, wide.configs);
            let numbers: Vec<u32> = t.partitions.iter().map(|p| p.partition).collect();
            assert_eq!(numbers, [3]);
            let into = merged.topics.iter_mut().find(|m| m.name == t.name).unwrap();
            into.partitions[3] = t.partitions[0].clone();
        }
        merged.version = d.version;
    }
    assert_eq!(merged.topics, end.topics);
    let merged_wide = merged.topics.iter().find(|t| t.name == "wide").unwrap();
    assert_eq!(merged_wide.partitions[3], changed);

    // The client's watch (which asks for partition deltas) merges them into
    // a view equal to the current metadata, sharing what did not change.
    let mut view = first_view.clone();
    while view.version < end.version {
        view = tokio::time::timeout(WAIT, views.next())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(view.to_wire(), end);
    let (before, after) = (&first_view.topics["wide"], &view.topics["wide"]);
    for i in [0, 1, 2, 4, 5] {
        assert!(std::sync::Arc::ptr_eq(
            &before.partitions[i],
            &after.partitions[i]
        ));
    }
    assert_eq!(*after.partitions[3], changed);
    assert!(std::sync::Arc::ptr_eq(
        &first_view.topics["still"],
        &view.topics["still"]
    ));

    // The stream that does not accept partition deltas gets the topic whole.
    let mut version = first.version;
    while version < end.version {
        let d = tokio::time::timeout(WAIT, whole.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(d.delta);
        for t in &d.topics {
            assert!(!t.partial);
            assert_eq!(t.partitions.len(), 6);
        }
        version = d.version;
    }
    c.shutdown().await;
}

#[tokio::test]
async fn metadata_watchers_get_deltas_that_merge_into_the_current_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let c = single(dir.path(), 60_000).await;
    let client = client(&[&c]);
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    client.create_topic(topic("grows", 2)).await.unwrap();
    client.create_topic(topic("goes", 2)).await.unwrap();
    client.create_topic(topic("stays", 3)).await.unwrap();

    let mut raw = ControllerServiceClient::connect(format!("http://{}", c.address))
        .await
        .unwrap();
    let mut deltas = raw
        .watch_metadata(streambus_proto::internal::WatchMetadataRequest {
            min_version: 0,
            accept_deltas: true,
            accept_partition_deltas: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = deltas.message().await.unwrap().unwrap();
    assert!(!first.delta, "a stream starts with a whole snapshot");
    assert_eq!(first.topics.len(), 3);
    let merged = client.watch_metadata();
    futures::pin_mut!(merged);
    let start = merged.next().await.unwrap();

    client.create_partitions("grows", 5).await.unwrap();
    client.delete_topic("goes").await.unwrap();
    let end = client.get_metadata().await.unwrap();

    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut version = first.version;
    while version < end.version {
        let d = tokio::time::timeout(WAIT, deltas.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(d.delta);
        assert_eq!(d.nodes.len(), 1, "nodes are whole");
        changed.extend(d.topics.into_iter().map(|t| t.name));
        removed.extend(d.removed_topics);
        version = d.version;
    }
    assert!(
        changed.iter().all(|t| t == "grows"),
        "only the changed topic: {changed:?}"
    );
    assert_eq!(removed, ["goes"]);

    // The client merges them into what a whole snapshot holds.
    let mut last = start;
    while last.version < end.version {
        last = tokio::time::timeout(WAIT, merged.next())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(last.to_wire(), end);
    c.shutdown().await;
}
