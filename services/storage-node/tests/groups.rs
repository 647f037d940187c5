//! Group coordination on the storage nodes: the node leading a group's
//! `__groups` partition coordinates it, writes every change to that
//! partition (replicated, factor 3 here) before answering, and a new
//! leader of the partition carries on from what was written.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, WAIT};
use streambus_group::store::partition_for;
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::v1::{
    CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, FetchOffsetsRequest,
    GroupHeartbeatRequest, GroupHeartbeatResponse, OffsetCommit, TopicPartitions,
};
use streambus_proto::{Error, Reason};
use tonic::transport::Channel;

const GROUPS: &str = streambus_group::TOPIC;

async fn cluster_with_groups(nodes: u64, groups_partitions: u32) -> Cluster {
    let cluster = Cluster::start(nodes).await;
    cluster
        .create_topic(
            GROUPS,
            groups_partitions,
            nodes.min(3) as u32,
            &[
                ("cleanup.policy", "compact"),
                ("min.insync.replicas", if nodes >= 3 { "2" } else { "1" }),
            ],
        )
        .await;
    cluster
}

/// The node coordinating `group`.
async fn coordinator(cluster: &Cluster, group: &str) -> StorageServiceClient<Channel> {
    let md = cluster.metadata().await;
    let count = md
        .topics
        .iter()
        .find(|t| t.name == GROUPS)
        .unwrap()
        .partitions
        .len() as u32;
    cluster
        .leader(GROUPS, partition_for(group, count))
        .await
        .unwrap()
        .0
}

fn join(group: &str, member: &str, topics: &[&str]) -> GroupHeartbeatRequest {
    GroupHeartbeatRequest {
        group: group.into(),
        member_id: member.into(),
        member_epoch: 0,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        ..GroupHeartbeatRequest::default()
    }
}

/// A heartbeat reporting `owned` (releasing whatever it leaves out).
fn beat(
    group: &str,
    r: &GroupHeartbeatResponse,
    owned: &[TopicPartitions],
) -> GroupHeartbeatRequest {
    GroupHeartbeatRequest {
        group: group.into(),
        member_id: r.member_id.clone(),
        member_epoch: r.member_epoch,
        owned: owned.to_vec(),
        report_owned: true,
        ..GroupHeartbeatRequest::default()
    }
}

fn partitions(list: &[TopicPartitions]) -> BTreeSet<(String, u32)> {
    list.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

fn commit(
    group: &str,
    r: &GroupHeartbeatResponse,
    topic: &str,
    p: u32,
    offset: i64,
) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group: group.into(),
        member_id: r.member_id.clone(),
        member_epoch: r.member_epoch,
        offsets: vec![OffsetCommit {
            topic: topic.into(),
            partition: p,
            offset,
            metadata: format!("at {offset}"),
        }],
    }
}

/// Calls `f` on the group's coordinator until it answers with something
/// other than a retriable error (a leadership moving, a shard loading).
macro_rules! call {
    ($cluster:expr, $group:expr, |$c:ident| $body:expr) => {{
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut $c = coordinator(&$cluster, $group).await;
            let r: Result<_, tonic::Status> = $body.await;
            match r {
                Ok(v) => break Ok(v.into_inner()),
                Err(s) => {
                    let e = Error::from_status(&s);
                    if !e.retriable() || tokio::time::Instant::now() > deadline {
                        break Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }};
}

/// A heartbeat sent to the group's coordinator.
async fn heartbeat(
    cluster: &Cluster,
    group: &str,
    req: GroupHeartbeatRequest,
) -> Result<GroupHeartbeatResponse, Error> {
    call!(cluster, group, |c| c.group_heartbeat(req.clone()))
}

/// The member's next heartbeat, owning what it was last told it owns.
async fn again(
    cluster: &Cluster,
    group: &str,
    r: &GroupHeartbeatResponse,
) -> Result<GroupHeartbeatResponse, Error> {
    heartbeat(cluster, group, beat(group, r, &r.assigned)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_share_partitions_and_their_group_survives_a_coordinator_change() {
    let mut cluster = cluster_with_groups(3, 1).await;
    cluster.create_topic("t", 4, 1, &[]).await;

    // a joins alone: every partition, epoch 1.
    let a = heartbeat(&cluster, "g", join("g", "a", &["t"]))
        .await
        .unwrap();
    assert_eq!(a.member_epoch, 1);
    assert_eq!(partitions(&a.assigned).len(), 4);
    assert_eq!(a.heartbeat_interval_ms, 200);

    // b joins; a is asked to release two, commits them, and releases.
    let b = heartbeat(&cluster, "g", join("g", "b", &["t"]))
        .await
        .unwrap();
    assert!(b.assigned.is_empty());
    let a = again(&cluster, "g", &a).await.unwrap();
    let revoking = partitions(&a.revoking);
    assert_eq!(revoking.len(), 2);
    for (t, p) in &revoking {
        call!(cluster, "g", |c| c.commit_offsets(commit(
            "g",
            &a,
            t,
            *p,
            10 + i64::from(*p)
        )))
        .unwrap();
    }
    let a = again(&cluster, "g", &a).await.unwrap();
    assert!(a.revoking.is_empty());
    assert_eq!(a.member_epoch, 2);
    let b = again(&cluster, "g", &b).await.unwrap();
    assert_eq!(partitions(&b.assigned), revoking);
    let (a_owns, b_owns) = (partitions(&a.assigned), partitions(&b.assigned));
    assert!(a_owns.is_disjoint(&b_owns));

    // The node leading the groups partition dies: another replica leads,
    // loads the group from the partition, and carries on.
    let leader = cluster.partition(GROUPS, 0).await.leader;
    cluster.kill_node(leader).await;
    cluster
        .wait_partition(GROUPS, 0, "led elsewhere", |p| {
            p.leader != leader && p.leader != 0
        })
        .await;
    cluster.wait_served(GROUPS, 0).await;

    let offsets = call!(cluster, "g", |c| c.fetch_offsets(FetchOffsetsRequest {
        group: "g".into(),
        partitions: vec![],
    }))
    .unwrap()
    .offsets;
    let got: BTreeSet<(String, u32, i64, String)> = offsets
        .iter()
        .map(|o| (o.topic.clone(), o.partition, o.offset, o.metadata.clone()))
        .collect();
    let want: BTreeSet<(String, u32, i64, String)> = revoking
        .iter()
        .map(|(t, p)| {
            (
                t.clone(),
                *p,
                10 + i64::from(*p),
                format!("at {}", 10 + i64::from(*p)),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Both members keep their epochs and assignments.
    let a2 = again(&cluster, "g", &a).await.unwrap();
    assert_eq!((a2.member_epoch, partitions(&a2.assigned)), (2, a_owns));
    let b2 = again(&cluster, "g", &b).await.unwrap();
    assert_eq!((b2.member_epoch, partitions(&b2.assigned)), (2, b_owns));
    let d = call!(cluster, "g", |c| c
        .describe_group(DescribeGroupRequest { group: "g".into() }))
    .unwrap();
    assert_eq!(d.state, "stable");
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.assignor, "sticky");
    cluster.start_node(leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_member_is_removed_and_then_fenced() {
    let cluster = cluster_with_groups(1, 2).await;
    cluster.create_topic("t", 2, 1, &[]).await;
    let a = heartbeat(&cluster, "g", join("g", "a", &["t"]))
        .await
        .unwrap();
    let b = heartbeat(&cluster, "g", join("g", "b", &["t"]))
        .await
        .unwrap();
    let a = again(&cluster, "g", &a).await.unwrap();
    let a = again(&cluster, "g", &a).await.unwrap();
    let b = again(&cluster, "g", &b).await.unwrap();
    assert_eq!(partitions(&b.assigned).len(), 1);
    let (bt, bp) = partitions(&b.assigned).into_iter().next().unwrap();

    // b goes quiet; a keeps beating and gets b's partition once b's
    // session (2 s) runs out.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut a = a;
    while partitions(&a.assigned).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "b never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        a = again(&cluster, "g", &a).await.unwrap();
    }

    // b comes back: neither its heartbeat nor its commit is accepted.
    let e = again(&cluster, "g", &b).await.unwrap_err();
    assert_eq!(e.reason, Reason::UnknownMember, "{e}");
    let e = call!(cluster, "g", |c| c
        .commit_offsets(commit("g", &b, &bt, bp, 5)))
    .unwrap_err();
    assert_eq!(e.reason, Reason::UnknownMember, "{e}");
    // a commits at a stale epoch: fenced.
    let mut stale = commit("g", &a, &bt, bp, 5);
    stale.member_epoch -= 2;
    let e = call!(cluster, "g", |c| c.commit_offsets(stale.clone())).unwrap_err();
    assert_eq!(e.reason, Reason::FencedMemberEpoch, "{e}");
    call!(cluster, "g", |c| c
        .commit_offsets(commit("g", &a, &bt, bp, 5)))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_group_calls_get_clear_errors_and_the_node_serves_on() {
    let cluster = cluster_with_groups(1, 2).await;
    cluster.create_topic("t", 2, 1, &[]).await;

    let mut both = join("g", "a", &["t"]);
    both.topic_pattern = "t.*".into();
    let mut bad_pattern = join("g", "a", &[]);
    bad_pattern.topic_pattern = "t(".into();
    let mut bad_assignor = join("g", "a", &["t"]);
    bad_assignor.assignor = "uniform".into();
    for (req, reason) in [
        (both, Reason::InvalidArgument),
        (bad_pattern, Reason::InvalidArgument),
        (bad_assignor, Reason::InvalidArgument),
        (join("g", "", &["t"]), Reason::InvalidArgument),
        (join("g", "a", &[]), Reason::InvalidArgument),
        (join("", "a", &["t"]), Reason::InvalidArgument),
        (join("g\n", "a", &["t"]), Reason::InvalidArgument),
    ] {
        let group = req.group.clone();
        let mut c = coordinator(&cluster, if group.is_empty() { "x" } else { &group }).await;
        let e = Error::from_status(&c.group_heartbeat(req).await.unwrap_err());
        assert_eq!(e.reason, reason, "{e}");
    }

    // The node that does not coordinate a group says so.
    let md = cluster.metadata().await;
    assert_eq!(md.nodes.len(), 1);

    // Offsets: negative, unknown topic, unknown partition.
    let a = heartbeat(&cluster, "g", join("g", "a", &["t"]))
        .await
        .unwrap();
    for (topic, p, offset, reason) in [
        ("t", 0, -1, Reason::InvalidArgument),
        ("nope", 0, 1, Reason::UnknownTopic),
        ("t", 9, 1, Reason::UnknownPartition),
    ] {
        let e = call!(cluster, "g", |c| c
            .commit_offsets(commit("g", &a, topic, p, offset)))
        .unwrap_err();
        assert_eq!(e.reason, reason, "{e}");
    }
    // Setting offsets as a tool, or deleting, needs a group without members.
    let mut tool = commit("g", &a, "t", 0, 3);
    tool.member_id.clear();
    tool.member_epoch = -1;
    let e = call!(cluster, "g", |c| c.commit_offsets(tool.clone())).unwrap_err();
    assert_eq!(e.reason, Reason::GroupNotEmpty, "{e}");
    let e = call!(cluster, "g", |c| c
        .delete_group(DeleteGroupRequest { group: "g".into() }))
    .unwrap_err();
    assert_eq!(e.reason, Reason::GroupNotEmpty, "{e}");
    let e = call!(cluster, "nope", |c| c.delete_group(DeleteGroupRequest {
        group: "nope".into()
    }))
    .unwrap_err();
    assert_eq!(e.reason, Reason::UnknownGroup, "{e}");

    // Everything still works.
    let a = again(&cluster, "g", &a).await.unwrap();
    assert_eq!(partitions(&a.assigned).len(), 2);
    call!(cluster, "g", |c| c
        .commit_offsets(commit("g", &a, "t", 1, 7)))
    .unwrap();

    // a leaves; now a tool may set offsets, and the group may be deleted.
    let mut leave = beat("g", &a, &[]);
    leave.member_epoch = -1;
    let left = call!(cluster, "g", |c| c.group_heartbeat(leave.clone())).unwrap();
    assert_eq!(left.member_epoch, 0);
    call!(cluster, "g", |c| c.commit_offsets(tool.clone())).unwrap();
    let listed = call!(cluster, "g", |c| c
        .list_groups(streambus_proto::v1::ListGroupsRequest {}))
    .unwrap();
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].state, "empty");
    call!(cluster, "g", |c| c
        .delete_group(DeleteGroupRequest { group: "g".into() }))
    .unwrap();
    let d = call!(cluster, "g", |c| c
        .describe_group(DescribeGroupRequest { group: "g".into() }))
    .unwrap();
    assert_eq!(d.state, "dead");
    let offsets = call!(cluster, "g", |c| c.fetch_offsets(FetchOffsetsRequest {
        group: "g".into(),
        partitions: vec![]
    }))
    .unwrap();
    assert!(offsets.offsets.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_of_deleted_topics_go_and_empty_groups_expire() {
    let cluster = cluster_with_groups(1, 1).await;
    cluster.create_topic("t", 1, 1, &[]).await;
    cluster.create_topic("u", 1, 1, &[]).await;
    let tool = |topic: &str, offset| CommitOffsetsRequest {
        group: "g".into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![OffsetCommit {
            topic: topic.into(),
            partition: 0,
            offset,
            metadata: String::new(),
        }],
    };
    call!(cluster, "g", |c| c.commit_offsets(tool("t", 1))).unwrap();
    call!(cluster, "g", |c| c.commit_offsets(tool("u", 2))).unwrap();
    cluster.client.delete_topic("u").await.unwrap();
    let fetch = || FetchOffsetsRequest {
        group: "g".into(),
        partitions: vec![],
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let o = call!(cluster, "g", |c| c.fetch_offsets(fetch()))
            .unwrap()
            .offsets;
        if o.len() == 1 {
            assert_eq!(o[0].topic, "t");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "u's offset stays: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The group has no members: it expires after the retention (3 s here).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = call!(cluster, "g", |c| c
            .describe_group(DescribeGroupRequest { group: "g".into() }))
        .unwrap();
        if d.state == "dead" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "g never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        call!(cluster, "g", |c| c.fetch_offsets(fetch()))
            .unwrap()
            .offsets
            .is_empty()
    );
}
