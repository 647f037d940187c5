//! Changing the controllers' Raft group at runtime (`AddController`,
//! `RemoveController`), with controllers started in-process on pre-bound
//! `127.0.0.1:0` listeners.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use streambus_proto::internal::WatchMetadataRequest;
use streambus_proto::internal::controller_service_client::ControllerServiceClient;
use streambus_proto::v1::{AddControllerRequest, ControllerMember, ControllerStatus};
use streambus_proto::{Error, Reason};

/// `(id, voter)` of each member, in id order.
fn roles(members: &[ControllerMember]) -> Vec<(u64, bool)> {
    let mut r: Vec<(u64, bool)> = members.iter().map(|m| (m.node_id, m.voter)).collect();
    r.sort_unstable();
    r
}

async fn describe(c: &Controller) -> ControllerStatus {
    only(c).describe_controller().await.unwrap()
}

/// Waits until `c` has applied a topic named `name`.
async fn wait_for_topic(c: &Controller, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(md) = only(c).get_metadata().await
            && md.topics.iter().any(|t| t.name == name)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "controller {} never applied topic {name}",
            c.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_controller_joins_as_a_learner_catches_up_and_votes() {
    let dirs = dirs(3);
    let (mut controllers, client) = three_with_a_storage_node(&dirs).await;
    client.create_topic(topic("before", 2)).await.unwrap();

    // Waiting to join: no group of its own, and no metadata served.
    let dir = tempfile::tempdir().unwrap();
    let mut fourth = joiner(4, dir.path()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let waiting = loop {
        if let Ok(s) = only(&fourth).describe_controller().await {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "joiner never up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((waiting.node_id, waiting.last_log_index), (4, 0));
    assert!(waiting.members.is_empty(), "{waiting:?}");
    let err = only(&fourth).get_metadata().await.unwrap_err();
    assert_eq!(err.reason, Reason::Unavailable, "{err}");
    assert!(err.message.contains("not a member"), "{}", err.message);
    assert!(!*fourth.ready.borrow());

    let leader_id = leader_of(&client).await;
    let leader = controllers.iter().find(|c| c.id == leader_id).unwrap();
    let log_before = describe(leader).await.last_log_index;
    let members = client.add_controller(4, &fourth.address).await.unwrap();
    assert_eq!(
        roles(&members),
        [(1, true), (2, true), (3, true), (4, true)]
    );
    // It was promoted only once it had the leader's log.
    let joined = describe(&fourth).await;
    assert!(
        joined.last_log_index > log_before,
        "{} <= {log_before}",
        joined.last_log_index
    );
    // Ready means caught up: what was written before it joined is there.
    fourth.wait_ready().await;
    let md = only(&fourth).get_metadata().await.unwrap();
    assert!(md.topics.iter().any(|t| t.name == "before"), "{md:?}");
    assert_eq!(md.nodes.len(), 1);
    let own = describe(&fourth).await;
    assert!(own.voter, "{own:?}");
    assert_eq!(own.state, "follower");
    assert_eq!(roles(&own.members), roles(&members));
    // Every member sees four voters.
    for c in &controllers {
        assert_eq!(roles(&describe(c).await.members), roles(&members));
    }
    // Adding it again changes nothing.
    let again = client.add_controller(4, &fourth.address).await.unwrap();
    assert_eq!(roles(&again), roles(&members));

    // It counts for the quorum: with one of the first three stopped, the
    // leader needs its acknowledgement (3 of 4) to commit.
    let leader = leader_of(&client).await;
    let stopped = controllers.iter().position(|c| c.id != leader).unwrap();
    controllers.remove(stopped).shutdown().await;
    let mut live: Vec<&Controller> = controllers.iter().collect();
    live.push(&fourth);
    let live_client = self::client(&live);
    live_client.create_topic(topic("after", 1)).await.unwrap();
    wait_for_topic(&fourth, "after").await;

    shutdown_all(controllers.into_iter().chain([fourth])).await;
}

/// Forwards the first connection to `target` and drops every later one: the
/// leader's check of a new controller gets through, its Raft traffic does
/// not.
async fn first_connection_only(target: String) -> String {
    let l = listener().await;
    let address = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut inbound, _)) = l.accept().await {
            if !std::mem::take(&mut first) {
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn a_learner_that_cannot_catch_up_times_out_and_stays_a_learner() {
    let dirs = dirs(3);
    let (controllers, client) = three_with_a_storage_node(&dirs).await;
    let dir = tempfile::tempdir().unwrap();
    let fourth = joiner(4, dir.path()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while only(&fourth).describe_controller().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "joiner never up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let through = first_connection_only(fourth.address.clone()).await;

    // It answers as controller 4, but the leader cannot replicate to it.
    let err = client.add_controller(4, &through).await.unwrap_err();
    assert_eq!(err.reason, Reason::Timeout, "{err}");
    assert!(
        err.message
            .contains("is a learner but did not catch up within 30 s"),
        "{}",
        err.message
    );
    // A learner: it does not count for the quorum, and the group works.
    let leader_id = leader_of(&client).await;
    let leader = controllers.iter().find(|c| c.id == leader_id).unwrap();
    assert_eq!(
        roles(&describe(leader).await.members),
        [(1, true), (2, true), (3, true), (4, false)]
    );
    // (The storage node's lease lapsed meanwhile: it registers again.)
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    client
        .create_topic(topic("with-a-learner", 1))
        .await
        .unwrap();
    // Removing a learner needs no quorum check.
    let members = client.remove_controller(4).await.unwrap();
    assert_eq!(roles(&members), [(1, true), (2, true), (3, true)]);
    client.create_topic(topic("after", 1)).await.unwrap();
    shutdown_all(controllers.into_iter().chain([fourth])).await;
}

#[tokio::test]
async fn removing_voters_and_the_leader_keeps_the_group_writable() {
    let dirs = dirs(3);
    let (controllers, client) = three_with_a_storage_node(&dirs).await;
    client.create_topic(topic("before", 1)).await.unwrap();

    // The leader removes itself: it steps down once the change is
    // committed, and the two others elect a leader among themselves.
    let old_leader = leader_of(&client).await;
    let members = client.remove_controller(old_leader).await.unwrap();
    let (removed, rest): (Vec<Controller>, Vec<Controller>) =
        controllers.into_iter().partition(|c| c.id == old_leader);
    let mut removed = removed.into_iter().next().unwrap();
    let rest_ids: Vec<(u64, bool)> = rest.iter().map(|c| (c.id, true)).collect();
    assert_eq!(roles(&members), rest_ids);
    let rest_refs: Vec<&Controller> = rest.iter().collect();
    let rest_client = self::client(&rest_refs);
    rest_client.create_topic(topic("after", 1)).await.unwrap();
    let new_leader = leader_of(&rest_client).await;
    assert_ne!(new_leader, old_leader);
    for c in &rest {
        wait_for_topic(c, "after").await;
        assert_eq!(roles(&describe(c).await.members), rest_ids);
    }
    // The removed controller serves no metadata (it no longer gets any)
    // and is not ready; a client that lists it moves on to the others.
    let err = only(&removed).get_metadata().await.unwrap_err();
    assert_eq!(err.reason, Reason::Unavailable, "{err}");
    tokio::time::timeout(WAIT, removed.ready.wait_for(|r| !*r))
        .await
        .unwrap()
        .unwrap();
    assert!(!describe(&removed).await.voter);
    let md = client.get_metadata().await.unwrap();
    assert_eq!(md.controller_leader_id, new_leader);
    client.create_topic(topic("via-old-list", 1)).await.unwrap();
    removed.shutdown().await;

    // A follower is removed while a watch is open on it: the watch ends,
    // so watchers reconnect to a member.
    let follower = rest.iter().find(|c| c.id != new_leader).unwrap();
    let mut raw = ControllerServiceClient::connect(format!("http://{}", follower.address))
        .await
        .unwrap();
    let mut watch = raw
        .watch_metadata(WatchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    let members = rest_client.remove_controller(follower.id).await.unwrap();
    assert_eq!(roles(&members), [(new_leader, true)]);
    let ended = loop {
        match tokio::time::timeout(WAIT, watch.next()).await.unwrap() {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break Error::from_status(&status),
            None => panic!("watch ended without an error"),
        }
    };
    assert_eq!(ended.reason, Reason::Unavailable, "{ended}");

    // The removed follower keeps running (until its operator stops it)
    // without disturbing the leader through election timeouts.
    let last = rest.iter().find(|c| c.id == new_leader).unwrap();
    let term = describe(last).await.term;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = describe(last).await;
    assert_eq!((later.state.as_str(), later.term), ("leader", term));

    // One voter left: it cannot be removed, and it keeps working alone.
    let err = only(last).remove_controller(new_leader).await.unwrap_err();
    assert_eq!(err.reason, Reason::InvalidArgument, "{err}");
    assert!(err.message.contains("last voter"), "{}", err.message);
    only(last).create_topic(topic("alone", 1)).await.unwrap();
    shutdown_all(rest).await;
}

#[tokio::test]
async fn a_removal_that_would_lose_the_quorum_is_refused() {
    let dirs = dirs(3);
    let (controllers, client) = three_with_a_storage_node(&dirs).await;
    let leader = leader_of(&client).await;
    let mut followers = controllers.iter().map(|c| c.id).filter(|id| *id != leader);
    let (down_id, other) = (followers.next().unwrap(), followers.next().unwrap());
    let (down, up): (Vec<Controller>, Vec<Controller>) =
        controllers.into_iter().partition(|c| c.id == down_id);
    shutdown_all(down).await;

    // Leader and `other` up: removing `other` would leave the leader and the
    // stopped controller, a group without a reachable quorum.
    let err = client.remove_controller(other).await.unwrap_err();
    assert_eq!(err.reason, Reason::Unavailable, "{err}");
    assert!(err.message.contains("quorum"), "{}", err.message);
    client.create_topic(topic("still", 1)).await.unwrap();

    // Removing the stopped one is fine, and the group keeps working.
    let members = client.remove_controller(down_id).await.unwrap();
    let mut want = vec![(leader, true), (other, true)];
    want.sort_unstable();
    assert_eq!(roles(&members), want);
    client.create_topic(topic("after", 1)).await.unwrap();
    shutdown_all(up).await;
}

#[tokio::test]
async fn bad_membership_requests_get_clear_errors_and_change_nothing() {
    let dirs = dirs(3);
    let (controllers, client) = three_with_a_storage_node(&dirs).await;
    let leader_id = leader_of(&client).await;
    let leader = controllers.iter().find(|c| c.id == leader_id).unwrap();
    let before = roles(&describe(leader).await.members);
    let expect = |r: Result<Vec<ControllerMember>, Error>, reason: Reason, text: &str| {
        let err = r.unwrap_err();
        assert_eq!(err.reason, reason, "{err}");
        assert!(
            err.message.contains(text),
            "{text:?} not in {}",
            err.message
        );
    };

    // Unknown and invalid ids.
    expect(
        client.remove_controller(9).await,
        Reason::InvalidArgument,
        "controller 9 is not a member",
    );
    expect(
        client.remove_controller(0).await,
        Reason::InvalidArgument,
        "0",
    );
    expect(
        client.add_controller(0, "127.0.0.1:1").await,
        Reason::InvalidArgument,
        "0",
    );
    // Malformed addresses.
    for bad in ["not-an-address", "127.0.0.1:0", "http://127.0.0.1:1", ""] {
        expect(
            client.add_controller(4, bad).await,
            Reason::InvalidArgument,
            "HOST:PORT",
        );
    }
    // Nobody listens there.
    let closed = listener().await.local_addr().unwrap().to_string();
    expect(
        client.add_controller(4, &closed).await,
        Reason::Unavailable,
        "no controller answers",
    );
    // Duplicate id, and another member's address.
    let other = controllers.iter().find(|c| c.id != 1).unwrap();
    expect(
        client.add_controller(1, &closed).await,
        Reason::InvalidArgument,
        "controller 1 is already a member",
    );
    expect(
        client.add_controller(5, &other.address).await,
        Reason::InvalidArgument,
        &format!("address of controller {}", other.id),
    );
    // The controller there has another id.
    let dir = tempfile::tempdir().unwrap();
    let fourth = joiner(4, dir.path()).await;
    expect(
        client.add_controller(5, &fourth.address).await,
        Reason::InvalidArgument,
        "is controller 4, not 5",
    );
    // A controller that initialized a group of its own cannot join.
    let dir = tempfile::tempdir().unwrap();
    let mut stray = start(config(7, dir.path(), Vec::new()), listener().await);
    stray.wait_ready().await;
    expect(
        client.add_controller(7, &stray.address).await,
        Reason::InvalidArgument,
        "already has Raft state",
    );
    stray.shutdown().await;
    // A follower redirects to the leader.
    let follower = controllers.iter().find(|c| c.id != leader_id).unwrap();
    let mut raw = ControllerServiceClient::connect(format!("http://{}", follower.address))
        .await
        .unwrap();
    let status = raw
        .add_controller(AddControllerRequest {
            node_id: 4,
            address: fourth.address.clone(),
        })
        .await
        .unwrap_err();
    let err = Error::from_status(&status);
    assert_eq!(err.reason, Reason::NotControllerLeader, "{err}");
    assert_eq!(err.leader_hint.as_deref(), Some(leader.address.as_str()));

    // Nothing changed, and the group keeps working: writes, and a correct
    // membership change.
    for c in &controllers {
        assert_eq!(roles(&describe(c).await.members), before);
    }
    client.create_topic(topic("after", 1)).await.unwrap();
    let members = client.add_controller(4, &fourth.address).await.unwrap();
    assert_eq!(
        roles(&members),
        [(1, true), (2, true), (3, true), (4, true)]
    );
    shutdown_all(controllers.into_iter().chain([fourth])).await;
}
