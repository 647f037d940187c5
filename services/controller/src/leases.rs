//! Storage-node leases, tracked by the controller leader in memory (not in
//! the Raft log). A background task on the leader proposes
//! `SetNodeAlive { alive: false }` when a lease lapses and
//! `SetNodeAlive { alive: true }` when heartbeats resume.
//!
//! The same task has the first leader of a new cluster propose its random
//! cluster id (`InitCluster`).
//!
//! A newly elected leader grants every node that is alive in the metadata a
//! fresh lease, so a leader change never expires healthy nodes; a node that
//! is dead comes back only after heartbeating to the current leader. So does
//! a leader that heard from no quorum for a while (it refuses heartbeats
//! meanwhile, see `leadership.rs`) once it hears from one again; until then
//! it decides nothing. Leadership is judged per term: a controller that
//! lost the leadership and won it back between two rounds starts over too
//! (heartbeats went to another leader in between).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::grpc::Proposer;
use crate::metadata::Command;

/// Last heartbeat per storage node, as seen by this controller.
#[derive(Debug)]
pub struct Leases {
    lease: Duration,
    last_seen: Mutex<HashMap<u64, Instant>>,
    /// When this controller, as leader, granted every live node a fresh
    /// lease; `None` while not leading (or not yet).
    took_over: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Leases {
    /// Leases of length `lease`.
    pub fn new(lease: Duration) -> Leases {
        Leases {
            lease,
            last_seen: Mutex::new(HashMap::new()),
            took_over: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `node_id` may hold a valid lease: it heartbeated here within
    /// the lease, or this controller took over leadership less than a lease
    /// ago (or not yet), when the heartbeats a node sent to the previous
    /// leader are unknown here and its lease may still run.
    pub fn is_fresh(&self, node_id: u64) -> bool {
        let taking_over = self
            .took_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() <= self.lease);
        taking_over
            || self
                .seen()
                .get(&node_id)
                .is_some_and(|t| t.elapsed() <= self.lease)
    }

    /// Records a heartbeat (or registration) from `node_id`.
    pub fn heartbeat(&self, node_id: u64) {
        self.heartbeat_at(node_id, Instant::now());
    }

    fn heartbeat_at(&self, node_id: u64, at: Instant) {
        self.seen().insert(node_id, at);
        self.wake.notify_one();
    }

    /// What to propose now, given which nodes the metadata says are alive.
    /// Returns `(node_id, alive)` pairs.
    fn decide(&self, nodes: &[(u64, bool)], now: Instant) -> Vec<(u64, bool)> {
        let seen = self.seen();
        nodes
            .iter()
            .filter_map(|&(id, alive)| {
                let fresh = seen
                    .get(&id)
                    .is_some_and(|t| now.saturating_duration_since(*t) <= self.lease);
                (fresh != alive).then_some((id, fresh))
            })
            .collect()
    }

    /// Grants a fresh lease to every node alive in the metadata. Heartbeats
    /// already recorded are kept: one that arrived while `nodes` was being
    /// read (a node registering as this controller takes over) must not be
    /// forgotten, or the node would be expired and revived for nothing.
    fn reset(&self, nodes: &[(u64, bool)], now: Instant) {
        *self.took_over.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        let mut seen = self.seen();
        for &(id, alive) in nodes {
            if alive {
                seen.insert(id, now);
            }
        }
    }

    /// Runs until `cancel`: on the leader, expires and revives nodes.
    pub async fn run(self: Arc<Self>, proposer: Proposer, cancel: CancellationToken) {
        let tick = (self.lease / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
        // The term this controller has been the current leader of since the
        // last reset.
        let mut led_term: Option<u64> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
                () = self.wake.notified() => {}
            }
            let term = proposer.raft().metrics().borrow().current_term;
            if proposer.ensure_leader().is_err() {
                led_term = None;
                *self.took_over.lock().unwrap_or_else(|p| p.into_inner()) = None;
                continue;
            }
            let metadata = proposer.metadata();
            if metadata.cluster_id.is_empty() {
                // The first leader of a new cluster names it, once: applying
                // keeps the first id that commits.
                let cluster_id = crate::metadata::random_id();
                match proposer.propose(Command::InitCluster { cluster_id }).await {
                    Ok(_) => {
                        tracing::info!(cluster_id = %proposer.metadata().cluster_id, "cluster id initialized")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot initialize the cluster id"),
                }
                // Lease decisions go on either way (on the metadata read above).
            }
            let nodes: Vec<(u64, bool)> = metadata
                .nodes
                .values()
                .map(|n| (n.node_id, n.alive))
                .collect();
            let now = Instant::now();
            if led_term != Some(term) {
                self.reset(&nodes, now);
                led_term = Some(term);
            }
            for (node_id, alive) in self.decide(&nodes, now) {
                if cancel.is_cancelled() {
                    return;
                }
                match proposer
                    .propose(Command::SetNodeAlive { node_id, alive })
                    .await
                {
                    Ok(_) => tracing::info!(node_id, alive, "storage node liveness changed"),
                    Err(e) => {
                        tracing::warn!(node_id, alive, error = %e, "cannot record storage node liveness")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapsed_lease_expires_and_fresh_heartbeat_revives() {
        let leases = Leases::new(Duration::from_millis(100));
        let t0 = Instant::now();
        leases.reset(&[(1, true), (2, false)], t0);
        // Within the lease: nothing to do; a dead node without heartbeat stays dead.
        assert!(
            leases
                .decide(&[(1, true), (2, false)], t0 + Duration::from_millis(50))
                .is_empty()
        );
        // Lapsed.
        assert_eq!(
            leases.decide(&[(1, true), (2, false)], t0 + Duration::from_millis(150)),
            vec![(1, false)]
        );
        // Node 2 heartbeats: revive it.
        leases.heartbeat_at(2, t0 + Duration::from_millis(140));
        assert_eq!(
            leases.decide(&[(1, false), (2, false)], t0 + Duration::from_millis(150)),
            vec![(2, true)]
        );
    }

    #[test]
    fn a_heartbeat_recorded_before_taking_over_is_kept() {
        let leases = Leases::new(Duration::from_millis(100));
        let t0 = Instant::now();
        // Node 3 registered while the new leader read a snapshot without it.
        leases.heartbeat_at(3, t0);
        leases.reset(&[(1, true)], t0);
        assert!(leases.is_fresh(3));
        assert!(
            leases
                .decide(&[(1, true), (3, true)], t0 + Duration::from_millis(50))
                .is_empty()
        );
    }

    #[test]
    fn every_lease_may_still_run_until_one_lease_after_taking_over() {
        let leases = Leases::new(Duration::from_millis(50));
        // Not yet taken over: a node unseen here may hold a lease.
        assert!(leases.is_fresh(9));
        leases.reset(&[], Instant::now());
        assert!(leases.is_fresh(9));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!leases.is_fresh(9));
        leases.heartbeat(9);
        assert!(leases.is_fresh(9));
    }

    #[test]
    fn new_leader_grants_alive_nodes_a_fresh_lease() {
        let leases = Leases::new(Duration::from_millis(100));
        let t0 = Instant::now();
        leases.reset(&[(1, true)], t0);
        assert!(
            leases
                .decide(&[(1, true)], t0 + Duration::from_millis(99))
                .is_empty()
        );
    }
}
