//! Whether this controller may act as the Raft leader, and whether it is
//! in contact with the rest of the group.
//!
//! openraft 0.9 never steps a leader down on its own: a leader cut off from
//! the other controllers stays in the leader state, in its old term, until
//! it hears of a newer one, while the others elect a new leader. So the
//! leader state alone is not enough:
//!
//! - A leader that has not heard from a quorum for longer than
//!   [`Leadership::stale_after`] refuses writes with `NOT_CONTROLLER_LEADER`
//!   and no hint, so clients try the other controllers instead of waiting
//!   for a proposal that cannot commit.
//! - A storage-node heartbeat is accepted only once the leader shows a
//!   quorum acknowledgment of a Raft message it sent at most
//!   [`Leadership::renew_within`] before the heartbeat arrived
//!   ([`Leadership::renews`]). The node counts its lease from when it sent
//!   the heartbeat, less a tenth of the lease. Any later leader is elected
//!   only after a voter of that quorum stopped hearing from this one for an
//!   election timeout (at least `election_timeout_min_ms`), and counts
//!   every lease from its own election. So the node's lease ends before
//!   any later leader may declare it dead, as long as `renew_within` is
//!   below a tenth of the lease plus `election_timeout_min_ms`; it is half
//!   of that. An isolated leader therefore stops renewing leases at once,
//!   and the nodes move to the new leader before it can move their
//!   partitions.
//! - A controller is *in contact* while it leads and has heard from a
//!   quorum within `stale_after`, or follows a leader it knows, and stops
//!   being in contact after [`Leadership::grace`] without either. A
//!   controller out of contact may serve ever older metadata: it ends its
//!   metadata watches and refuses new ones (`UNAVAILABLE`), so storage
//!   nodes and gateways watch another controller, and it is not ready.

use std::time::Duration;

use openraft::{BasicNode, RaftMetrics, ServerState};

/// The timing rules above, derived from the controller configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leadership {
    /// A leader whose last quorum acknowledgment is older no longer acts
    /// as the leader (`election_timeout_max_ms`).
    pub(crate) stale_after: Duration,
    /// How recent a quorum acknowledgment must be to renew a storage-node
    /// lease.
    pub(crate) renew_within: Duration,
    /// How long a heartbeat waits for such an acknowledgment before it is
    /// refused.
    pub(crate) confirm_wait: Duration,
    /// How long a controller may be out of contact before it hands its
    /// watchers over.
    pub(crate) grace: Duration,
}

impl Leadership {
    /// The rules for a storage-node lease of `lease` and Raft election
    /// timeouts between `election_min` and `election_max`.
    pub(crate) fn new(lease: Duration, election_min: Duration, election_max: Duration) -> Self {
        Leadership {
            stale_after: election_max,
            renew_within: (lease / 10 + election_min) / 2,
            confirm_wait: election_max,
            grace: election_max,
        }
    }

    /// How long ago a quorum acknowledged this leader, as of the metrics
    /// (published by openraft at least every 1.5 heartbeat intervals);
    /// `None` when not the leader, or no quorum acknowledged it yet.
    fn quorum_ack_age(m: &RaftMetrics<u64, BasicNode>) -> Option<Duration> {
        m.millis_since_quorum_ack.map(Duration::from_millis)
    }

    /// Whether `m` is the metrics of leader `node_id`.
    pub(crate) fn is_leader(m: &RaftMetrics<u64, BasicNode>, node_id: u64) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(node_id)
    }

    /// Whether leader `m` has heard from a quorum recently enough to act
    /// as the leader. A leader no quorum acknowledged yet (just elected)
    /// may: its first entries commit or time out.
    pub(crate) fn is_current(&self, m: &RaftMetrics<u64, BasicNode>) -> bool {
        Self::quorum_ack_age(m).is_none_or(|age| age <= self.stale_after)
    }

    /// Whether leader `m`, published after a heartbeat arrived, shows a
    /// quorum acknowledgment recent enough to renew the node's lease.
    pub(crate) fn renews(&self, m: &RaftMetrics<u64, BasicNode>) -> bool {
        Self::quorum_ack_age(m).is_some_and(|age| age <= self.renew_within)
    }

    /// Whether controller `node_id` is in contact with its group now: a
    /// current leader, or a follower (or learner) that knows a leader.
    pub(crate) fn in_contact(&self, m: &RaftMetrics<u64, BasicNode>, node_id: u64) -> bool {
        if Self::is_leader(m, node_id) {
            self.is_current(m)
        } else {
            m.current_leader.is_some_and(|l| l != node_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_renewed_lease_ends_before_a_later_leader_may_expire_it() {
        for (lease, min, max) in [(6000, 500, 1000), (1500, 300, 600), (1000, 150, 300)] {
            let l = Leadership::new(ms(lease), ms(min), ms(max));
            // A heartbeat sent at 0 and received at r >= 0 is accepted on a
            // quorum acknowledgment of a message sent at a >= r - renew.
            // The node trusts its lease until 0.9 lease; a later leader
            // is elected after a + min and expires nodes one lease later.
            let node_lease_end = ms(lease) - ms(lease) / 10;
            let r = Duration::ZERO;
            let earliest_expiry = (r + ms(min) + ms(lease)).saturating_sub(l.renew_within);
            assert!(node_lease_end < earliest_expiry, "{l:?}");
            // With room to spare for scheduling delays.
            assert!(earliest_expiry - node_lease_end >= l.renew_within, "{l:?}");
            // A healthy leader renews: right after each heartbeat round
            // (heartbeats are more frequent than the election timeout)
            // its last acknowledgment is one round trip old.
            assert!(l.renew_within >= ms(min) / 2);
            assert!(l.confirm_wait >= ms(min));
        }
    }

    fn metrics(
        state: ServerState,
        leader: Option<u64>,
        ack_ms: Option<u64>,
    ) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.current_leader = leader;
        m.millis_since_quorum_ack = ack_ms;
        m
    }

    #[test]
    fn a_leader_without_a_recent_quorum_is_neither_current_nor_in_contact() {
        let l = Leadership::new(ms(1500), ms(300), ms(600));
        let fresh = metrics(ServerState::Leader, Some(1), Some(40));
        assert!(Leadership::is_leader(&fresh, 1));
        assert!(l.is_current(&fresh) && l.renews(&fresh) && l.in_contact(&fresh, 1));
        // Acknowledged a while ago: still the leader, no lease renewal.
        let slow = metrics(ServerState::Leader, Some(1), Some(400));
        assert!(l.is_current(&slow) && !l.renews(&slow));
        // Cut off for longer than the election timeout.
        let cut = metrics(ServerState::Leader, Some(1), Some(900));
        assert!(!l.is_current(&cut) && !l.renews(&cut) && !l.in_contact(&cut, 1));
        // Just elected, nothing acknowledged yet: may act, renews nothing.
        let new = metrics(ServerState::Leader, Some(1), None);
        assert!(l.is_current(&new) && !l.renews(&new));
    }

    #[test]
    fn a_follower_is_in_contact_while_it_knows_a_leader() {
        let l = Leadership::new(ms(1500), ms(300), ms(600));
        assert!(l.in_contact(&metrics(ServerState::Follower, Some(2), None), 1));
        assert!(!l.in_contact(&metrics(ServerState::Candidate, None, None), 1));
        assert!(!l.in_contact(&metrics(ServerState::Follower, None, None), 1));
        assert!(l.in_contact(&metrics(ServerState::Learner, Some(2), None), 1));
    }
}
