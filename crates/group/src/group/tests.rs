//! The group state machine, event by event.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

/// A group, the topics, the clock, and what each member last heard.
struct Sim {
    group: Group,
    topics: BTreeMap<String, u32>,
    limits: Limits,
    now: u64,
    /// member -> (epoch, owned) as the member knows it.
    known: HashMap<String, (i64, BTreeSet<Tp>)>,
}

fn topics(spec: &[(&str, u32)]) -> BTreeMap<String, u32> {
    spec.iter().map(|(t, c)| (t.to_string(), *c)).collect()
}

fn sub(t: &[&str]) -> Subscription {
    Subscription::Topics(t.iter().map(|s| s.to_string()).collect())
}

fn tps(t: &str, ps: impl IntoIterator<Item = u32>) -> BTreeSet<Tp> {
    ps.into_iter().map(|p| Tp::new(t, p)).collect()
}

impl Sim {
    fn new(spec: &[(&str, u32)]) -> Sim {
        Sim {
            group: Group::new("g", 0),
            topics: topics(spec),
            limits: Limits {
                session_timeout_ms: 10_000,
                heartbeat_interval_ms: 1_000,
                default_rebalance_timeout_ms: 30_000,
                max_members: 10,
            },
            now: 0,
            known: HashMap::new(),
        }
    }

    fn send(&mut self, hb: Heartbeat) -> Result<HeartbeatResponse, GroupError> {
        let r = self
            .group
            .heartbeat(hb, self.now, &self.topics, &self.limits);
        self.check_single_owner();
        r
    }

    fn join_with(&mut self, id: &str, s: Subscription) -> HeartbeatResponse {
        let r = self
            .send(Heartbeat {
                member_id: id.into(),
                member_epoch: 0,
                subscription: Some(s),
                ..Heartbeat::default()
            })
            .unwrap();
        self.learn(&r);
        r
    }

    fn join(&mut self, id: &str, t: &[&str]) -> HeartbeatResponse {
        self.join_with(id, sub(t))
    }

    /// A heartbeat from a member that does as it is told: it reports what
    /// it owns, having released anything it was asked to revoke.
    fn beat(&mut self, id: &str) -> Result<HeartbeatResponse, GroupError> {
        let (epoch, owned) = self.known[id].clone();
        let r = self.send(Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            owned: Some(owned),
            ..Heartbeat::default()
        })?;
        self.learn(&r);
        Ok(r)
    }

    fn learn(&mut self, r: &HeartbeatResponse) {
        self.known.insert(
            r.member_id.clone(),
            (r.member_epoch as i64, r.assigned.clone()),
        );
    }

    /// Every member heartbeats until nothing changes.
    fn settle(&mut self) {
        // What the group holds and what each member knows.
        let state = |s: &Sim| {
            let known: BTreeMap<_, _> = s.known.iter().collect();
            format!("{:?} {known:?}", s.snapshot())
        };
        for _ in 0..20 {
            let before = state(self);
            for id in self.group.members.keys().cloned().collect::<Vec<_>>() {
                self.beat(&id).unwrap();
            }
            if state(self) == before {
                return;
            }
        }
        panic!("never settled: {:?}", self.snapshot());
    }

    fn snapshot(&self) -> BTreeMap<String, (u64, BTreeSet<Tp>, BTreeSet<Tp>)> {
        self.group
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    (m.epoch, m.assigned.clone(), m.revoking.clone()),
                )
            })
            .collect()
    }

    fn assigned(&self, id: &str) -> &BTreeSet<Tp> {
        &self.group.members[id].assigned
    }

    fn check_single_owner(&self) {
        let mut seen: HashMap<&Tp, &str> = HashMap::new();
        for m in self.group.members.values() {
            for tp in m.assigned.iter().chain(&m.revoking) {
                if let Some(other) = seen.insert(tp, &m.id) {
                    panic!("{tp} owned by {other} and {}", m.id);
                }
            }
        }
    }
}

#[test]
fn the_first_member_gets_every_partition_at_epoch_one() {
    let mut s = Sim::new(&[("t", 4)]);
    let r = s.join("a", &["t"]);
    assert_eq!(r.member_epoch, 1);
    assert_eq!(r.assigned, tps("t", 0..4));
    assert!(r.revoking.is_empty());
    assert_eq!(r.heartbeat_interval_ms, 1_000);
    assert_eq!(s.group.state(), GroupState::Stable);
    assert!(s.group.take_dirty());
    assert!(!s.group.take_dirty());
}

#[test]
fn a_joining_member_gets_partitions_only_once_their_owner_released_them() {
    let mut s = Sim::new(&[("t", 4)]);
    s.join("a", &["t"]);
    // b joins: its target is half, but a still owns everything.
    let b = s.join("b", &["t"]);
    assert_eq!(b.member_epoch, 2);
    assert!(b.assigned.is_empty());
    assert_eq!(s.group.member_state("b"), Some(MemberState::Assigning));
    assert_eq!(s.group.state(), GroupState::Reconciling);

    // a learns it must release two; it keeps its epoch until it has.
    let (epoch_a, _) = s.known["a"].clone();
    let r = s
        .send(Heartbeat {
            member_id: "a".into(),
            member_epoch: epoch_a,
            owned: Some(tps("t", 0..4)),
            ..Heartbeat::default()
        })
        .unwrap();
    assert_eq!(r.member_epoch, 1);
    assert_eq!(r.assigned.len(), 2);
    assert_eq!(r.revoking.len(), 2);
    assert_eq!(s.group.member_state("a"), Some(MemberState::Revoking));
    let revoking = r.revoking.clone();
    s.learn(&r);

    // Still owned by a: b gets nothing yet.
    assert!(s.beat("b").unwrap().assigned.is_empty());

    // a reports it no longer owns them: epoch 2.
    let r = s.beat("a").unwrap();
    assert_eq!(r.member_epoch, 2);
    assert!(r.revoking.is_empty());
    // Now b gets them.
    let r = s.beat("b").unwrap();
    assert_eq!(r.assigned, revoking);
    assert_eq!(s.group.state(), GroupState::Stable);
}

#[test]
fn a_member_that_leaves_hands_its_partitions_over_at_once() {
    let mut s = Sim::new(&[("t", 6)]);
    s.join("a", &["t"]);
    s.join("b", &["t"]);
    s.settle();
    let epoch = s.group.epoch;
    let r = s
        .send(Heartbeat {
            member_id: "b".into(),
            member_epoch: -1,
            ..Heartbeat::default()
        })
        .unwrap();
    assert_eq!(r.member_epoch, 0);
    assert!(!s.group.members.contains_key("b"));
    assert_eq!(s.group.epoch, epoch + 1);
    assert_eq!(s.beat("a").unwrap().assigned, tps("t", 0..6));
    // Leaving twice is harmless.
    assert!(
        s.send(Heartbeat {
            member_id: "b".into(),
            member_epoch: -1,
            ..Heartbeat::default()
        })
        .is_ok()
    );
}

#[test]
fn a_silent_member_is_removed_when_its_session_runs_out_and_is_then_fenced() {
    let mut s = Sim::new(&[("t", 4)]);
    s.join("a", &["t"]);
    s.join("b", &["t"]);
    s.settle();
    let b_had = s.assigned("b").clone();
    let b_epoch = s.known["b"].0;
    assert_eq!(s.group.next_deadline_ms(), Some(10_000));

    // a keeps beating; b goes quiet.
    s.now = 9_000;
    s.beat("a").unwrap();
    assert!(s.group.tick(9_999).is_empty());
    s.now = 10_000;
    assert_eq!(s.group.tick(s.now), ["b"]);
    assert_eq!(s.beat("a").unwrap().assigned, tps("t", 0..4));

    // b comes back: it is no longer a member, and cannot commit.
    assert_eq!(
        s.beat("b").unwrap_err(),
        GroupError::UnknownMember("b".into())
    );
    let tp = b_had.first().unwrap();
    assert_eq!(
        s.group.check_commit("b", b_epoch, [tp]),
        Err(GroupError::UnknownMember("b".into()))
    );
    // It rejoins, owning nothing at first.
    let r = s.join("b", &["t"]);
    assert!(r.assigned.is_empty());
    s.settle();
    assert_eq!(s.assigned("a").len(), 2);
    assert_eq!(s.assigned("b").len(), 2);
}

#[test]
fn a_heartbeat_or_commit_at_an_old_epoch_is_fenced() {
    let mut s = Sim::new(&[("t", 4)]);
    s.join("a", &["t"]);
    s.join("b", &["t"]);
    s.settle();
    s.join("c", &["t"]);
    s.settle();
    let epoch = s.known["a"].0;
    assert_eq!(epoch, 3);
    let owned = s.assigned("a").clone();
    let stale = s.send(Heartbeat {
        member_id: "a".into(),
        member_epoch: epoch - 2,
        owned: Some(owned.clone()),
        ..Heartbeat::default()
    });
    assert!(
        matches!(stale, Err(GroupError::FencedEpoch { sent, current, .. }) if sent == epoch - 2 && current as i64 == epoch)
    );
    assert!(matches!(
        s.group.check_commit("a", epoch - 2, &owned),
        Err(GroupError::FencedEpoch { .. })
    ));
    assert!(matches!(
        s.group.check_commit("a", epoch + 1, &owned),
        Err(GroupError::FencedEpoch { .. })
    ));
    // The epoch before: an answer moving it on may have been lost.
    assert_eq!(s.group.check_commit("a", epoch - 1, &owned), Ok(()));
    assert_eq!(s.group.check_commit("a", epoch, &owned), Ok(()));
}

#[test]
fn a_member_whose_response_was_lost_may_heartbeat_with_its_previous_epoch() {
    let mut s = Sim::new(&[("t", 4)]);
    s.join("a", &["t"]);
    let (epoch, owned) = s.known["a"].clone();
    // b joins; a's reply moving it to the new epoch is lost.
    s.join("b", &["t"]);
    s.beat("a").unwrap(); // asked to revoke (epoch unchanged)
    let r = s.beat("a").unwrap(); // released: epoch bumped
    assert!(r.member_epoch as i64 > epoch);
    // a resends with the epoch before, owning only what it owns.
    let kept = s.assigned("a").clone();
    let again = s
        .send(Heartbeat {
            member_id: "a".into(),
            member_epoch: epoch,
            owned: Some(kept),
            ..Heartbeat::default()
        })
        .unwrap();
    assert_eq!(again.member_epoch, r.member_epoch);
    // Claiming a partition it no longer owns is fenced.
    let fenced = s.send(Heartbeat {
        member_id: "a".into(),
        member_epoch: epoch,
        owned: Some(owned),
        ..Heartbeat::default()
    });
    assert!(matches!(fenced, Err(GroupError::FencedEpoch { .. })));
}

#[test]
fn a_member_that_never_releases_is_removed_after_its_rebalance_timeout() {
    let mut s = Sim::new(&[("t", 4)]);
    s.limits.session_timeout_ms = 1_000_000;
    s.join("a", &["t"]);
    s.join_with("b", sub(&["t"]));
    // a is asked to revoke, and keeps reporting it owns them.
    let (epoch, _) = s.known["a"].clone();
    let hold = |s: &mut Sim| {
        s.send(Heartbeat {
            member_id: "a".into(),
            member_epoch: epoch,
            owned: Some(tps("t", 0..4)),
            ..Heartbeat::default()
        })
        .unwrap()
    };
    assert_eq!(hold(&mut s).revoking.len(), 2);
    s.now = 29_999;
    hold(&mut s);
    assert!(s.group.tick(s.now).is_empty());
    s.now = 30_000;
    assert_eq!(s.group.tick(s.now), ["a"]);
    assert_eq!(s.beat("b").unwrap().assigned, tps("t", 0..4));
}

#[test]
fn added_partitions_are_assigned_without_moving_owned_ones() {
    let mut s = Sim::new(&[("t", 4)]);
    s.join("a", &["t"]);
    s.join("b", &["t"]);
    s.settle();
    let (a, b) = (s.assigned("a").clone(), s.assigned("b").clone());
    s.topics.insert("t".into(), 6);
    assert!(s.group.on_metadata(&s.topics));
    s.settle();
    assert!(a.is_subset(s.assigned("a")));
    assert!(b.is_subset(s.assigned("b")));
    assert_eq!(s.assigned("a").len() + s.assigned("b").len(), 6);
    // Nothing changed: no new epoch.
    assert!(!s.group.on_metadata(&s.topics));
}

#[test]
fn a_subscription_change_reassigns() {
    let mut s = Sim::new(&[("x", 2), ("y", 2)]);
    s.join("a", &["x"]);
    s.join("b", &["x"]);
    s.settle();
    let epoch = s.group.epoch;
    let (e, owned) = s.known["a"].clone();
    s.send(Heartbeat {
        member_id: "a".into(),
        member_epoch: e,
        subscription: Some(sub(&["x", "y"])),
        owned: Some(owned),
        ..Heartbeat::default()
    })
    .unwrap();
    assert_eq!(s.group.epoch, epoch + 1);
    s.settle();
    let all: BTreeSet<Tp> = s.assigned("a").union(s.assigned("b")).cloned().collect();
    assert_eq!(all.len(), 4);
    assert!(s.assigned("b").iter().all(|tp| tp.topic == "x"));
}

#[test]
fn a_pattern_subscription_follows_topics_as_they_come_and_go() {
    let mut s = Sim::new(&[
        ("orders-eu", 2),
        ("orders-us", 1),
        ("payments", 3),
        ("__groups", 8),
    ]);
    s.join_with("a", Subscription::Pattern("orders-.*".into()));
    assert_eq!(
        s.assigned("a")
            .iter()
            .map(|tp| tp.topic.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["orders-eu", "orders-us"])
    );
    s.topics.insert("orders-ap".into(), 1);
    // A whole-name match: not a prefix of another name.
    s.topics.insert("xorders-1".into(), 1);
    assert!(s.group.on_metadata(&s.topics));
    s.settle();
    assert_eq!(s.assigned("a").len(), 4);
    s.topics.remove("orders-eu");
    assert!(s.group.on_metadata(&s.topics));
    s.settle();
    assert_eq!(s.assigned("a").len(), 2);

    let bad = s.send(Heartbeat {
        member_id: "b".into(),
        member_epoch: 0,
        subscription: Some(Subscription::Pattern("orders-(".into())),
        ..Heartbeat::default()
    });
    assert!(matches!(bad, Err(GroupError::Invalid(m)) if m.contains("bad subscription pattern")));
    assert!(!s.group.members.contains_key("b"));
}

/// A pattern a gateway resolved under ACLs: exactly the topics it sent,
/// possibly none, and no topic the coordinator finds later.
#[test]
fn a_resolved_pattern_names_only_the_topics_the_gateway_sent() {
    let mut s = Sim::new(&[("orders-eu", 2), ("orders-us", 1)]);
    let resolved = |topics: &[&str]| Subscription::Resolved {
        pattern: "orders-.*".into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
    };
    // Nothing readable yet: a member all the same, with nothing.
    s.join_with("a", resolved(&[]));
    assert!(s.assigned("a").is_empty());
    assert_eq!(
        s.group.members["a"].subscription.pattern(),
        Some("orders-.*")
    );
    s.topics.insert("orders-ap".into(), 1);
    s.group.on_metadata(&s.topics);
    s.settle();
    assert!(s.assigned("a").is_empty(), "the coordinator added a topic");
    // The gateway sends what the member may read.
    let epoch = s.group.members["a"].epoch;
    s.send(Heartbeat {
        member_id: "a".into(),
        member_epoch: i64::try_from(epoch).unwrap(),
        subscription: Some(resolved(&["orders-eu"])),
        ..Heartbeat::default()
    })
    .unwrap();
    s.settle();
    assert_eq!(s.assigned("a"), &tps("orders-eu", 0..2));
    // A bad pattern is refused even resolved.
    let bad = s.send(Heartbeat {
        member_id: "b".into(),
        member_epoch: 0,
        subscription: Some(Subscription::Resolved {
            pattern: "orders-(".into(),
            topics: BTreeSet::new(),
        }),
        ..Heartbeat::default()
    });
    assert!(matches!(bad, Err(GroupError::Invalid(m)) if m.contains("bad subscription pattern")));
}

#[test]
fn bad_heartbeats_are_refused_and_change_nothing() {
    let mut s = Sim::new(&[("t", 1)]);
    s.join("a", &["t"]);
    s.group.take_dirty();
    let cases = [
        Heartbeat {
            member_id: String::new(),
            member_epoch: 0,
            subscription: Some(sub(&["t"])),
            ..Heartbeat::default()
        },
        Heartbeat {
            member_id: "b".into(),
            member_epoch: 0,
            ..Heartbeat::default()
        },
        Heartbeat {
            member_id: "b".into(),
            member_epoch: 0,
            subscription: Some(Subscription::Topics(BTreeSet::new())),
            ..Heartbeat::default()
        },
        Heartbeat {
            member_id: "a".into(),
            member_epoch: -2,
            ..Heartbeat::default()
        },
    ];
    for hb in cases {
        assert!(matches!(s.send(hb), Err(GroupError::Invalid(_))));
    }
    assert!(!s.group.take_dirty());
    assert_eq!(s.group.members.len(), 1);
}

#[test]
fn a_full_group_refuses_new_members_but_not_a_rejoin() {
    let mut s = Sim::new(&[("t", 1)]);
    s.limits.max_members = 2;
    s.join("a", &["t"]);
    s.join("b", &["t"]);
    let r = s.send(Heartbeat {
        member_id: "c".into(),
        member_epoch: 0,
        subscription: Some(sub(&["t"])),
        ..Heartbeat::default()
    });
    assert_eq!(
        r.unwrap_err(),
        GroupError::Full {
            group: "g".into(),
            max: 2
        }
    );
    s.join("b", &["t"]);
}

#[test]
fn commits_are_checked_against_membership_epoch_and_ownership() {
    let mut s = Sim::new(&[("t", 4)]);
    // No members: a tool may set offsets.
    assert_eq!(s.group.check_commit("", -1, &tps("t", 0..4)), Ok(()));
    s.join("a", &["t"]);
    assert_eq!(
        s.group.check_commit("", -1, &tps("t", 0..1)),
        Err(GroupError::NotEmpty {
            group: "g".into(),
            members: 1
        })
    );
    s.join("b", &["t"]);
    s.beat("a").unwrap(); // a must revoke two
    let epoch = s.known["a"].0;
    let revoking = s.group.members["a"].revoking.clone();
    // A partition being revoked may still be committed: that is how its
    // owner hands over its progress.
    assert_eq!(s.group.check_commit("a", epoch, &revoking), Ok(()));
    let b_epoch = s.known["b"].0;
    let not_b = revoking.first().unwrap().clone();
    assert_eq!(
        s.group.check_commit("b", b_epoch, [&not_b]),
        Err(GroupError::NotAssigned {
            member: "b".into(),
            tp: not_b.clone()
        })
    );
    s.group.commit([(
        not_b.clone(),
        Committed {
            offset: 42,
            metadata: "m".into(),
            commit_ms: 7,
        },
    )]);
    assert_eq!(s.group.offsets[&not_b].offset, 42);
}

#[test]
fn offsets_of_partitions_that_no_longer_exist_are_forgotten() {
    let mut s = Sim::new(&[("x", 2), ("y", 1)]);
    let c = |o| Committed {
        offset: o,
        metadata: String::new(),
        commit_ms: 0,
    };
    s.group.commit([
        (Tp::new("x", 0), c(1)),
        (Tp::new("x", 1), c(2)),
        (Tp::new("y", 0), c(3)),
    ]);
    s.topics.remove("y");
    s.topics.insert("x".into(), 1);
    let gone = s.group.forget_missing(&s.topics);
    assert_eq!(gone, vec![Tp::new("x", 1), Tp::new("y", 0)]);
    assert_eq!(s.group.offsets.len(), 1);
}

#[test]
fn a_restored_group_has_its_members_and_assignments_and_fresh_sessions() {
    let mut s = Sim::new(&[("t", 4)]);
    s.join_with("a", Subscription::Pattern("t".into()));
    s.join("b", &["t"]);
    s.beat("a").unwrap(); // a revoking
    let json = serde_json::to_string(&s.group).unwrap();
    let restored: Group = serde_json::from_str(&json).unwrap();
    s.now = 50_000;
    s.group = restored.restored(s.now, &s.limits);
    assert!(!s.group.take_dirty());
    assert_eq!(s.group.member_state("a"), Some(MemberState::Revoking));
    assert_eq!(s.group.next_deadline_ms(), Some(60_000));
    assert!(s.group.tick(59_999).is_empty());
    // The pattern still works after the restore.
    s.topics.insert("t".into(), 5);
    assert!(s.group.on_metadata(&s.topics));
    s.settle();
    assert_eq!(s.assigned("a").len() + s.assigned("b").len(), 5);
}

#[test]
fn the_assignor_is_the_one_most_members_ask_for() {
    let mut s = Sim::new(&[("t", 6)]);
    assert_eq!(s.group.assignor(), Assignor::Sticky);
    for (id, a) in [
        ("a", Assignor::Range),
        ("b", Assignor::Range),
        ("c", Assignor::RoundRobin),
    ] {
        s.send(Heartbeat {
            member_id: id.into(),
            member_epoch: 0,
            subscription: Some(sub(&["t"])),
            assignor: Some(a),
            ..Heartbeat::default()
        })
        .map(|r| s.learn(&r))
        .unwrap();
    }
    assert_eq!(s.group.assignor(), Assignor::Range);
    s.settle();
    assert_eq!(s.assigned("a"), &tps("t", 0..2));
    assert_eq!(s.assigned("b"), &tps("t", 2..4));
    assert_eq!(s.assigned("c"), &tps("t", 4..6));
}

#[derive(Clone, Debug)]
enum Event {
    Join(u8, Vec<u8>),
    Beat(u8),
    /// A heartbeat that does not release what it was asked to revoke.
    Hold(u8),
    Leave(u8),
    Expire(u8),
    Grow(u8),
    Resubscribe(u8, Vec<u8>),
}

const TOPICS: [&str; 3] = ["t0", "t1", "t2"];

fn event() -> impl Strategy<Value = Event> {
    let member = 0u8..5;
    let subs = proptest::collection::vec(0u8..3, 1..3);
    prop_oneof![
        (member.clone(), subs.clone()).prop_map(|(m, t)| Event::Join(m, t)),
        member.clone().prop_map(Event::Beat),
        member.clone().prop_map(Event::Beat),
        member.clone().prop_map(Event::Hold),
        member.clone().prop_map(Event::Leave),
        member.clone().prop_map(Event::Expire),
        (0u8..3).prop_map(Event::Grow),
        (member, subs).prop_map(|(m, t)| Event::Resubscribe(m, t)),
    ]
}

fn names(t: &[u8]) -> Subscription {
    Subscription::Topics(t.iter().map(|i| TOPICS[*i as usize].to_string()).collect())
}

proptest! {
    /// Whatever happens, no partition ever has two owners; once every
    /// member heartbeats as told, every partition of every subscribed
    /// topic is owned by exactly one live member subscribed to it, and
    /// the sticky assignment is balanced among members with the same
    /// subscription.
    #[test]
    fn once_stable_every_subscribed_partition_has_exactly_one_live_owner(
        events in proptest::collection::vec(event(), 1..60),
        assignor in prop_oneof![Just(Assignor::Sticky), Just(Assignor::Range), Just(Assignor::RoundRobin)],
    ) {
        let mut s = Sim::new(&[("t0", 3), ("t1", 5), ("t2", 1)]);
        s.limits.session_timeout_ms = 1_000_000;
        for e in events {
            s.now += 100;
            let id = |m: u8| format!("m{m}");
            match e {
                Event::Join(m, t) => {
                    let r = s.send(Heartbeat {
                        member_id: id(m),
                        member_epoch: 0,
                        subscription: Some(names(&t)),
                        assignor: Some(assignor),
                        ..Heartbeat::default()
                    }).unwrap();
                    s.learn(&r);
                }
                Event::Beat(m) if s.known.contains_key(&id(m)) => {
                    match s.beat(&id(m)) {
                        Ok(_) => {}
                        Err(GroupError::UnknownMember(_)) => { s.known.remove(&id(m)); }
                        Err(e) => panic!("{e}"),
                    }
                }
                Event::Hold(m) if s.group.members.contains_key(&id(m)) => {
                    let mm = &s.group.members[&id(m)];
                    let owned: BTreeSet<Tp> = mm.assigned.union(&mm.revoking).cloned().collect();
                    let epoch = s.known[&id(m)].0;
                    let r = s.send(Heartbeat {
                        member_id: id(m),
                        member_epoch: epoch,
                        owned: Some(owned),
                        ..Heartbeat::default()
                    }).unwrap();
                    // It learns its epoch, not that it should release.
                    s.known.get_mut(&id(m)).unwrap().0 = r.member_epoch as i64;
                }
                Event::Leave(m) => {
                    s.send(Heartbeat { member_id: id(m), member_epoch: -1, ..Heartbeat::default() }).unwrap();
                    s.known.remove(&id(m));
                }
                Event::Expire(m) => {
                    if let Some(mm) = s.group.members.get_mut(&id(m)) {
                        mm.session_deadline_ms = 0;
                    }
                    s.group.tick(s.now);
                    s.check_single_owner();
                    s.known.retain(|k, _| s.group.members.contains_key(k));
                }
                Event::Grow(t) => {
                    *s.topics.get_mut(TOPICS[t as usize]).unwrap() += 1;
                    s.group.on_metadata(&s.topics);
                }
                Event::Resubscribe(m, t) if s.known.contains_key(&id(m)) => {
                    let (epoch, owned) = s.known[&id(m)].clone();
                    let r = s.send(Heartbeat {
                        member_id: id(m),
                        member_epoch: epoch,
                        subscription: Some(names(&t)),
                        owned: Some(owned),
                        ..Heartbeat::default()
                    }).unwrap();
                    s.learn(&r);
                }
                _ => {}
            }
        }
        s.settle();
        prop_assert!(s.group.members.is_empty() || s.group.state() == GroupState::Stable, "{:?}", s.snapshot());
        let mut owner: HashMap<Tp, String> = HashMap::new();
        for m in s.group.members.values() {
            prop_assert!(m.revoking.is_empty());
            for tp in &m.assigned {
                prop_assert!(m.topics.contains(&tp.topic), "{} owns {tp} outside its subscription", m.id);
                prop_assert!(owner.insert(tp.clone(), m.id.clone()).is_none());
            }
        }
        let subscribed: BTreeSet<&String> = s.group.members.values().flat_map(|m| &m.topics).collect();
        for t in subscribed {
            for p in 0..s.topics[t] {
                prop_assert!(owner.contains_key(&Tp::new(t.clone(), p)), "{t}/{p} has no owner: {:?}", s.snapshot());
            }
        }
        if assignor == Assignor::Sticky {
            let mut by_sub: HashMap<&BTreeSet<String>, Vec<usize>> = HashMap::new();
            for m in s.group.members.values() {
                by_sub.entry(&m.topics).or_default().push(m.assigned.len());
            }
            for loads in by_sub.values() {
                let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "{:?}", s.snapshot());
            }
        }
    }
}
