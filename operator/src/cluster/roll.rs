//! The changes that need StreamBus's consent, decided as pure functions of
//! what Kubernetes and StreamBus report, and unit-tested step by step:
//!
//! - **rolling restarts**: the StatefulSets use `OnDelete`, and the
//!   operator deletes one outdated pod at a time: controllers first (the
//!   Raft leader last), each only while every controller is a reachable
//!   voter agreeing on one leader; then storage nodes (highest ordinal
//!   first), each only while StreamBus reports no under-replicated and no
//!   offline partition. A restarted pod must have been ready for a settle
//!   period before the next one goes.
//! - **scaling storage nodes in**: the highest node is decommissioned
//!   (its replicas move off) and the StatefulSet shrinks only once it hosts
//!   no replica; one node at a time. **Scaling out** again recommissions a
//!   returning node id that was decommissioned.
//!
//! Storage node and controller ids are the pod's StatefulSet ordinal + 1.

use std::time::Duration;

use streambus_client::v1;

/// One pod of a StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub ordinal: i32,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
    /// Ready, and for how long.
    pub ready_for: Option<Duration>,
    /// Being deleted.
    pub terminating: bool,
}

/// A StatefulSet and its pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.updateRevision`: the revision of the current template.
    pub update_revision: Option<String>,
    pub pods: Vec<Pod>,
}

impl Set {
    /// Whether a pod runs an older template than the current one.
    pub fn has_outdated(&self) -> bool {
        self.outdated().next().is_some()
    }

    fn outdated(&self) -> impl Iterator<Item = &Pod> {
        self.pods
            .iter()
            .filter(move |p| p.revision.is_none() || p.revision != self.update_revision)
    }

    /// Why the set is not settled (every pod present, ready long enough
    /// and not being deleted), or `None`.
    fn unsettled(&self, what: &str, settle: Duration) -> Option<String> {
        if let Some(p) = self.pods.iter().find(|p| p.terminating) {
            return Some(format!("{what} pod {} is terminating", p.name));
        }
        for ordinal in 0..self.replicas {
            match self.pods.iter().find(|p| p.ordinal == ordinal) {
                None => {
                    return Some(format!(
                        "{what} pod with ordinal {ordinal} does not exist yet"
                    ));
                }
                Some(p) => match p.ready_for {
                    None => return Some(format!("{what} pod {} is not ready", p.name)),
                    Some(d) if d < settle => {
                        return Some(format!(
                            "{what} pod {} has been ready for {}s of {}s",
                            p.name,
                            d.as_secs(),
                            settle.as_secs()
                        ));
                    }
                    Some(_) => {}
                },
            }
        }
        None
    }
}

/// What StreamBus reports about itself (`AdminService.DescribeCluster`).
pub type Health = v1::DescribeClusterResponse;

/// The next thing to do for a rolling restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every pod runs the current template.
    Done,
    /// Nothing may be deleted now.
    Wait {
        reason: &'static str,
        message: String,
    },
    /// Delete this pod (its StatefulSet recreates it from the current
    /// template).
    Delete { pod: String, message: String },
}

fn wait(reason: &'static str, message: String) -> Step {
    Step::Wait { reason, message }
}

fn id(ordinal: i32) -> u64 {
    u64::try_from(ordinal).unwrap_or(0) + 1
}

/// Why the controllers cannot lose a member now, or `None`: every pod's
/// controller answers, is a voter, and all agree on one leader that says
/// it leads.
fn controllers_unsafe(set: &Set, health: &Health) -> Option<String> {
    let mut leader = None;
    for ordinal in 0..set.replicas {
        let node = id(ordinal);
        let Some(c) = health.controllers.iter().find(|c| c.node_id == node) else {
            return Some(format!(
                "controller {node} is not a member of the Raft group"
            ));
        };
        if !c.reachable {
            return Some(format!("controller {node} does not answer: {}", c.error));
        }
        if !c.voter {
            return Some(format!("controller {node} is not a voter yet"));
        }
        if c.leader_id == 0 {
            return Some(format!("controller {node} knows no leader"));
        }
        match leader {
            None => leader = Some(c.leader_id),
            Some(l) if l != c.leader_id => {
                return Some(format!(
                    "controllers disagree on the leader ({l} and {})",
                    c.leader_id
                ));
            }
            Some(_) => {}
        }
    }
    let leader = leader?;
    match health.controllers.iter().find(|c| c.node_id == leader) {
        Some(c) if c.state == "leader" => None,
        _ => Some(format!("controller {leader} does not report itself leader")),
    }
}

/// Why a storage node cannot go down now, or `None`: every registered
/// node of the set is alive, and no partition is under-replicated or
/// offline.
fn storage_unsafe(set: &Set, health: &Health) -> Option<String> {
    if !health.offline.is_empty() {
        return Some(format!("{} partitions are offline", health.offline.len()));
    }
    if !health.under_replicated.is_empty() {
        let first = &health.under_replicated[0];
        return Some(format!(
            "{} partitions are under-replicated (first: {}/{})",
            health.under_replicated.len(),
            first.topic,
            first.partition.as_ref().map_or(0, |p| p.partition)
        ));
    }
    for ordinal in 0..set.replicas {
        let node = id(ordinal);
        if let Some(n) = health.storage_nodes.iter().find(|n| n.node_id == node)
            && !n.alive
        {
            return Some(format!("storage node {node} is not alive"));
        }
    }
    None
}

/// The next step of a rolling restart of `controllers` then
/// `storage_nodes`. `health` is StreamBus's answer or why there is none.
pub fn next_step(
    controllers: &Set,
    storage_nodes: &Set,
    health: Result<&Health, &str>,
    settle: Duration,
) -> Step {
    let controllers_outdated: Vec<&Pod> = controllers.outdated().collect();
    let storage_outdated: Vec<&Pod> = storage_nodes.outdated().collect();
    if controllers_outdated.is_empty() && storage_outdated.is_empty() {
        return Step::Done;
    }
    // One pod of the cluster's stateful roles down at a time.
    for (set, what) in [(controllers, "controller"), (storage_nodes, "storage node")] {
        if let Some(why) = set.unsettled(what, settle) {
            return wait("WaitingForPods", why);
        }
    }
    let health = match health {
        Ok(h) => h,
        Err(e) => {
            return wait(
                "ClusterUnreachable",
                format!("cannot ask StreamBus whether a pod may restart: {e}"),
            );
        }
    };
    if !controllers_outdated.is_empty() {
        if let Some(why) = controllers_unsafe(controllers, health) {
            return wait("WaitingForQuorum", why);
        }
        let leader = health
            .controllers
            .iter()
            .find(|c| c.state == "leader")
            .map(|c| c.node_id);
        // Followers first, highest ordinal first; the leader last.
        let pod = controllers_outdated
            .iter()
            .max_by_key(|p| (Some(id(p.ordinal)) != leader, p.ordinal))
            .expect("not empty");
        return Step::Delete {
            pod: pod.name.clone(),
            message: format!(
                "restarting controller {} ({} of {} still to restart)",
                pod.name,
                controllers_outdated.len(),
                controllers.replicas
            ),
        };
    }
    if let Some(why) = storage_unsafe(storage_nodes, health) {
        return wait("WaitingForReplicas", why);
    }
    let pod = storage_outdated
        .iter()
        .max_by_key(|p| p.ordinal)
        .expect("not empty");
    Step::Delete {
        pod: pod.name.clone(),
        message: format!(
            "restarting storage node {} ({} of {} still to restart)",
            pod.name,
            storage_outdated.len(),
            storage_nodes.replicas
        ),
    }
}

/// What to ask StreamBus before resizing the storage nodes' StatefulSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCall {
    Decommission(u64),
    Recommission(u64),
}

/// The storage nodes' StatefulSet size to apply now, and what to do first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub replicas: i32,
    pub call: Option<NodeCall>,
    /// Why the spec's count is not applied yet (shown in the status).
    pub waiting: Option<String>,
}

/// Plans the storage node count: `spec` wanted, `current` the
/// StatefulSet's size (`None` before it exists).
pub fn plan_scale(spec: i32, current: Option<i32>, health: Result<&Health, &str>) -> Scale {
    let node = |id: u64, h: &Health| h.storage_nodes.iter().find(|n| n.node_id == id).cloned();
    let Some(current) = current.filter(|&c| c > spec) else {
        // Growing or steady: a returning id that was decommissioned takes
        // replicas again.
        let call = health.ok().and_then(|h| {
            (1..=u64::try_from(spec).unwrap_or(0))
                .find(|&id| node(id, h).is_some_and(|n| n.decommissioning))
                .map(NodeCall::Recommission)
        });
        return Scale {
            replicas: spec,
            call,
            waiting: None,
        };
    };
    let top = id(current - 1);
    let hold = |waiting: String, call| Scale {
        replicas: current,
        call,
        waiting: Some(waiting),
    };
    let health = match health {
        Ok(h) => h,
        Err(e) => {
            return hold(
                format!(
                    "scaling storage nodes in to {spec}: cannot ask StreamBus to decommission storage node {top}: {e}"
                ),
                None,
            );
        }
    };
    match node(top, health) {
        // Never registered: it holds nothing.
        None => Scale {
            replicas: current - 1,
            call: None,
            waiting: None,
        },
        Some(n) if n.decommissioning && n.replicas == 0 => Scale {
            replicas: current - 1,
            call: None,
            waiting: None,
        },
        Some(n) if n.decommissioning => hold(
            format!(
                "scaling storage nodes in to {spec}: decommissioning storage node {top}, {} replicas left to move",
                n.replicas
            ),
            None,
        ),
        Some(n) => hold(
            format!(
                "scaling storage nodes in to {spec}: decommissioning storage node {top} ({} replicas to move)",
                n.replicas
            ),
            Some(NodeCall::Decommission(top)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(10);

    fn pod(set: &str, ordinal: i32, revision: &str) -> Pod {
        Pod {
            name: format!("{set}-{ordinal}"),
            ordinal,
            revision: Some(revision.into()),
            ready_for: Some(Duration::from_secs(60)),
            terminating: false,
        }
    }

    fn set(name: &str, revisions: &[&str], current: &str) -> Set {
        Set {
            replicas: revisions.len() as i32,
            update_revision: Some(current.into()),
            pods: revisions
                .iter()
                .enumerate()
                .map(|(i, r)| pod(name, i as i32, r))
                .collect(),
        }
    }

    fn controller(id: u64, leader: u64) -> v1::ControllerStatus {
        v1::ControllerStatus {
            node_id: id,
            reachable: true,
            state: if id == leader { "leader" } else { "follower" }.into(),
            leader_id: leader,
            voter: true,
            ..Default::default()
        }
    }

    fn storage(id: u64, replicas: u32, decommissioning: bool) -> v1::StorageNodeStatus {
        v1::StorageNodeStatus {
            node_id: id,
            alive: true,
            replicas,
            decommissioning,
            ..Default::default()
        }
    }

    fn healthy(leader: u64) -> Health {
        Health {
            controllers: (1..=3).map(|i| controller(i, leader)).collect(),
            storage_nodes: (1..=3).map(|i| storage(i, 4, false)).collect(),
            ..Default::default()
        }
    }

    fn under_replicated() -> v1::PartitionStatus {
        v1::PartitionStatus {
            topic: "t".into(),
            partition: Some(v1::PartitionDescription {
                partition: 2,
                ..Default::default()
            }),
            min_insync_replicas: 1,
        }
    }

    fn deleted(step: &Step) -> &str {
        match step {
            Step::Delete { pod, .. } => pod,
            other => panic!("expected a deletion, got {other:?}"),
        }
    }

    fn waits(step: Step) -> (&'static str, String) {
        match step {
            Step::Wait { reason, message } => (reason, message),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn nothing_outdated_is_done_even_without_streambus() {
        let c = set("c", &["a", "a", "a"], "a");
        let s = set("s", &["a", "a", "a"], "a");
        assert_eq!(next_step(&c, &s, Err("down"), SETTLE), Step::Done);
    }

    /// A whole roll, event by event: controllers first with the leader
    /// last, then storage nodes from the highest ordinal, each deletion
    /// waiting for the previous pod to come back and settle and for
    /// StreamBus to report it safe.
    #[test]
    fn a_roll_restarts_one_pod_at_a_time_in_order_and_only_when_safe() {
        let mut c = set("c", &["a", "a", "a"], "b");
        let mut s = set("s", &["a", "a", "a"], "b");
        let h = healthy(3);
        // Controller 3 (ordinal 2) leads: ordinal 1 goes first.
        assert_eq!(deleted(&next_step(&c, &s, Ok(&h), SETTLE)), "c-1");
        c.pods[1].terminating = true;
        let (reason, msg) = waits(next_step(&c, &s, Ok(&h), SETTLE));
        assert_eq!(reason, "WaitingForPods");
        assert!(msg.contains("c-1 is terminating"), "{msg}");
        // Recreated, not ready yet; then ready but not settled.
        c.pods[1] = Pod {
            ready_for: None,
            ..pod("c", 1, "b")
        };
        assert!(
            waits(next_step(&c, &s, Ok(&h), SETTLE))
                .1
                .contains("not ready")
        );
        c.pods[1].ready_for = Some(Duration::from_secs(3));
        assert!(
            waits(next_step(&c, &s, Ok(&h), SETTLE))
                .1
                .contains("ready for 3s of 10s")
        );
        c.pods[1].ready_for = Some(SETTLE);
        assert_eq!(deleted(&next_step(&c, &s, Ok(&h), SETTLE)), "c-0");
        c.pods[0] = pod("c", 0, "b");
        // The leader last.
        assert_eq!(deleted(&next_step(&c, &s, Ok(&h), SETTLE)), "c-2");
        c.pods[2] = pod("c", 2, "b");
        // Storage nodes, highest ordinal first.
        assert_eq!(deleted(&next_step(&c, &s, Ok(&h), SETTLE)), "s-2");
        s.pods[2] = pod("s", 2, "b");
        // The restarted node is catching up: its partitions are
        // under-replicated, nothing else goes down.
        let mut lagging = healthy(3);
        lagging.under_replicated.push(under_replicated());
        let (reason, msg) = waits(next_step(&c, &s, Ok(&lagging), SETTLE));
        assert_eq!(reason, "WaitingForReplicas");
        assert!(
            msg.contains("1 partitions are under-replicated (first: t/2)"),
            "{msg}"
        );
        assert_eq!(deleted(&next_step(&c, &s, Ok(&h), SETTLE)), "s-1");
        s.pods[1] = pod("s", 1, "b");
        assert_eq!(deleted(&next_step(&c, &s, Ok(&h), SETTLE)), "s-0");
        s.pods[0] = pod("s", 0, "b");
        assert_eq!(next_step(&c, &s, Ok(&h), SETTLE), Step::Done);
    }

    #[test]
    fn without_an_answer_from_streambus_nothing_is_deleted() {
        let c = set("c", &["a", "a", "a"], "a");
        let s = set("s", &["a", "a", "a"], "b");
        let (reason, msg) = waits(next_step(&c, &s, Err("connection refused"), SETTLE));
        assert_eq!(reason, "ClusterUnreachable");
        assert!(msg.contains("connection refused"), "{msg}");
    }

    #[test]
    fn controllers_wait_for_a_healthy_quorum() {
        let c = set("c", &["a", "b", "b"], "b");
        let s = set("s", &["b", "b", "b"], "b");
        let quorum = |mutate: &dyn Fn(&mut Health)| {
            let mut h = healthy(1);
            mutate(&mut h);
            next_step(&c, &s, Ok(&h), SETTLE)
        };
        assert_eq!(deleted(&quorum(&|_| {})), "c-0");
        type Mutation<'a> = &'a dyn Fn(&mut Health);
        let cases: [(Mutation, &str); 5] = [
            (
                &|h| h.controllers.truncate(2),
                "controller 3 is not a member",
            ),
            (
                &|h| {
                    h.controllers[1].reachable = false;
                    h.controllers[1].error = "timeout".into();
                },
                "controller 2 does not answer: timeout",
            ),
            (
                &|h| h.controllers[2].voter = false,
                "controller 3 is not a voter",
            ),
            (
                &|h| h.controllers[2].leader_id = 2,
                "disagree on the leader",
            ),
            (
                &|h| h.controllers[0].state = "candidate".into(),
                "controller 1 does not report itself leader",
            ),
        ];
        for (mutate, expected) in cases {
            let (reason, msg) = waits(quorum(mutate));
            assert_eq!(reason, "WaitingForQuorum");
            assert!(msg.contains(expected), "{msg} / {expected}");
        }
    }

    #[test]
    fn storage_nodes_wait_for_offline_partitions_and_dead_nodes() {
        let c = set("c", &["b", "b", "b"], "b");
        let s = set("s", &["a", "a", "a"], "b");
        let mut h = healthy(1);
        h.offline.push(under_replicated());
        assert!(
            waits(next_step(&c, &s, Ok(&h), SETTLE))
                .1
                .contains("offline")
        );
        let mut h = healthy(1);
        h.storage_nodes[0].alive = false;
        assert!(
            waits(next_step(&c, &s, Ok(&h), SETTLE))
                .1
                .contains("storage node 1 is not alive")
        );
    }

    #[test]
    fn a_missing_pod_holds_the_roll() {
        let c = set("c", &["b", "b", "b"], "b");
        let mut s = set("s", &["a", "a", "a"], "b");
        s.pods.remove(1);
        let (reason, msg) = waits(next_step(&c, &s, Ok(&healthy(1)), SETTLE));
        assert_eq!(reason, "WaitingForPods");
        assert!(msg.contains("ordinal 1 does not exist"), "{msg}");
    }

    /// Scaling 3 -> 1, event by event: node 3 is decommissioned, the set
    /// shrinks once it is empty, then node 2 the same way.
    #[test]
    fn scale_in_decommissions_each_node_before_removing_its_pod() {
        let mut h = healthy(1);
        assert_eq!(
            plan_scale(1, Some(3), Ok(&h)),
            Scale {
                replicas: 3,
                call: Some(NodeCall::Decommission(3)),
                waiting: Some(
                    "scaling storage nodes in to 1: decommissioning storage node 3 (4 replicas to move)"
                        .into()
                ),
            }
        );
        h.storage_nodes[2] = storage(3, 2, true);
        let s = plan_scale(1, Some(3), Ok(&h));
        assert_eq!((s.replicas, s.call), (3, None));
        assert!(s.waiting.unwrap().contains("2 replicas left"));
        h.storage_nodes[2] = storage(3, 0, true);
        assert_eq!(plan_scale(1, Some(3), Ok(&h)).replicas, 2);
        assert_eq!(
            plan_scale(1, Some(2), Ok(&h)).call,
            Some(NodeCall::Decommission(2))
        );
        h.storage_nodes[1] = storage(2, 0, true);
        assert_eq!(
            plan_scale(1, Some(2), Ok(&h)),
            Scale {
                replicas: 1,
                call: None,
                waiting: None
            }
        );
    }

    #[test]
    fn scale_in_without_streambus_holds_and_a_never_registered_node_just_goes() {
        let s = plan_scale(2, Some(3), Err("refused"));
        assert_eq!((s.replicas, s.call), (3, None));
        assert!(s.waiting.unwrap().contains("refused"));
        let mut h = healthy(1);
        h.storage_nodes.truncate(2);
        assert_eq!(plan_scale(2, Some(3), Ok(&h)).replicas, 2);
    }

    #[test]
    fn scaling_out_recommissions_a_returning_node() {
        let mut h = healthy(1);
        h.storage_nodes[2] = storage(3, 0, true);
        // Node 3 stays out while the spec says 2.
        assert_eq!(
            plan_scale(2, Some(2), Ok(&h)),
            Scale {
                replicas: 2,
                call: None,
                waiting: None
            }
        );
        assert_eq!(
            plan_scale(3, Some(2), Ok(&h)),
            Scale {
                replicas: 3,
                call: Some(NodeCall::Recommission(3)),
                waiting: None
            }
        );
        // A scale-in reverted half way ends the decommissioning too.
        h.storage_nodes[2] = storage(3, 2, true);
        assert_eq!(
            plan_scale(3, Some(3), Ok(&h)).call,
            Some(NodeCall::Recommission(3))
        );
        // Unknown health: grow anyway (a returning node holds no data).
        assert_eq!(plan_scale(4, Some(3), Err("x")).replicas, 4);
    }
}
