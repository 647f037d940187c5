//! The leader's view of one replicated partition, as a pure state machine:
//! events in (a follower fetched, the local log advanced, metadata changed,
//! time passed), decisions out (the high watermark, ISR changes to
//! propose). No I/O and no clock: the shell in `replication.rs` feeds it
//! and carries its actions out, and the tests below drive it event by
//! event.
//!
//! The rules (Kafka's, KIP-497's "maximal ISR" included):
//! - A follower's replicated offset is the fetch offset of its latest
//!   fetch: asking for offset `n` says it holds everything below `n`.
//! - The high watermark is the smallest replicated offset over the
//!   *maximal* ISR (the committed set plus members of a proposed change
//!   that are not yet committed), the leader's own included, and never
//!   goes back while this leadership lasts. Counting the larger set while
//!   a change is in flight means a shrink takes effect for the high
//!   watermark only once the controller committed it, and an expansion at
//!   once, so the high watermark is never ahead of what the committed ISR
//!   holds.
//! - A follower is caught up at time `t` when it fetched from at least the
//!   leader's log end offset as it was at `t`; it leaves the ISR when it
//!   was last caught up longer than the lag time ago, and joins when it
//!   holds at least the high watermark and at least the start of the
//!   current leader epoch.
//! - One ISR change is in flight at a time.

use std::collections::BTreeMap;

/// What the leader knows about one follower.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Follower {
    /// Offset it holds everything below; -1 until it fetched in this
    /// leadership.
    end: i64,
    /// When it was last caught up (ms).
    caught_up_ms: u64,
    /// When it last fetched (ms).
    fetch_ms: u64,
    /// The leader's end offset when it answered that fetch.
    leader_end_at_fetch: i64,
}

/// An ISR change the shell should send to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposeIsr {
    /// The new set, in replica order.
    pub isr: Vec<u64>,
    /// The leader epoch it is based on.
    pub leader_epoch: u64,
    /// The partition epoch it is based on.
    pub partition_epoch: u64,
}

/// The partition as the controller last published it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionView {
    /// Leader node id.
    pub leader: u64,
    /// Leader epoch.
    pub leader_epoch: u64,
    /// Partition epoch.
    pub partition_epoch: u64,
    /// Assigned replicas.
    pub replicas: Vec<u64>,
    /// Committed in-sync replicas.
    pub isr: Vec<u64>,
}

/// The leader's replication state for one partition and one leader epoch.
#[derive(Debug, Clone)]
pub struct LeaderState {
    node_id: u64,
    view: PartitionView,
    followers: BTreeMap<u64, Follower>,
    /// What the leader itself holds (log end, or the durable offset when
    /// acknowledgments wait for fsync).
    local_end: i64,
    /// Where this leader epoch starts in the log.
    epoch_start: i64,
    hw: i64,
    lag_max_ms: u64,
    /// The change in flight and when it was sent.
    pending: Option<(ProposeIsr, u64)>,
    /// How long an unanswered change blocks the next one (ms).
    retry_ms: u64,
}

impl LeaderState {
    /// Starts a leadership. `hw` is the high watermark this replica knew
    /// (as a follower, or from the previous epoch); `local_end` what its
    /// log holds, which is also where the new epoch starts.
    pub fn new(
        node_id: u64,
        view: PartitionView,
        local_end: i64,
        hw: i64,
        lag_max_ms: u64,
        now_ms: u64,
    ) -> LeaderState {
        let followers = view
            .replicas
            .iter()
            .filter(|&&r| r != node_id)
            .map(|&r| {
                (
                    r,
                    Follower {
                        end: -1,
                        // A grace period of one lag time to fetch once.
                        caught_up_ms: now_ms,
                        fetch_ms: now_ms,
                        leader_end_at_fetch: local_end,
                    },
                )
            })
            .collect();
        let mut s = LeaderState {
            node_id,
            view,
            followers,
            local_end,
            epoch_start: local_end,
            hw: hw.min(local_end),
            lag_max_ms,
            pending: None,
            retry_ms: 2_000,
        };
        s.recompute();
        s
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> i64 {
        self.hw
    }

    /// The committed in-sync replicas (what `min.insync.replicas` counts).
    pub fn isr(&self) -> &[u64] {
        &self.view.isr
    }

    /// The leadership this state is for.
    pub fn view(&self) -> &PartitionView {
        &self.view
    }

    /// Whether an ISR change is in flight.
    pub fn pending(&self) -> Option<&ProposeIsr> {
        self.pending.as_ref().map(|(p, _)| p)
    }

    /// The replicated offset of a follower (-1 = not fetched yet).
    pub fn follower_end(&self, node: u64) -> Option<i64> {
        self.followers.get(&node).map(|f| f.end)
    }

    fn maximal_isr(&self) -> Vec<u64> {
        let mut set = self.view.isr.clone();
        if let Some((p, _)) = &self.pending {
            for r in &p.isr {
                if !set.contains(r) {
                    set.push(*r);
                }
            }
        }
        set
    }

    /// Recomputes the high watermark; returns whether it moved.
    fn recompute(&mut self) -> bool {
        let mut hw = self.local_end;
        for r in self.maximal_isr() {
            if r == self.node_id {
                continue;
            }
            // A member this leader has no state for (not a replica any
            // more) cannot hold anything back.
            if let Some(f) = self.followers.get(&r) {
                hw = hw.min(f.end);
            }
        }
        if hw > self.hw {
            self.hw = hw;
            true
        } else {
            false
        }
    }

    /// The local log advanced to `end`. Returns whether the high
    /// watermark moved.
    pub fn local_end(&mut self, end: i64) -> bool {
        self.local_end = self.local_end.max(end);
        self.recompute()
    }

    /// Follower `node` fetched from `fetch_offset` (so it holds everything
    /// below). Returns whether the high watermark moved; `None` when the
    /// node is not a follower of this partition.
    pub fn fetched(&mut self, node: u64, fetch_offset: i64, now_ms: u64) -> Option<bool> {
        let local_end = self.local_end;
        let f = self.followers.get_mut(&node)?;
        if fetch_offset >= local_end {
            f.caught_up_ms = now_ms;
        } else if fetch_offset >= f.leader_end_at_fetch {
            // It holds what the leader had when it answered the previous
            // fetch: caught up as of then.
            f.caught_up_ms = f.caught_up_ms.max(f.fetch_ms);
        }
        f.end = fetch_offset;
        f.fetch_ms = now_ms;
        f.leader_end_at_fetch = local_end;
        Some(self.recompute())
    }

    /// Newer metadata for the same leadership (the same leader epoch): a
    /// committed ISR change, or new replicas. Returns whether the high
    /// watermark moved.
    pub fn metadata(&mut self, view: PartitionView, now_ms: u64) -> bool {
        debug_assert_eq!(view.leader_epoch, self.view.leader_epoch);
        if view.partition_epoch != self.view.partition_epoch {
            // Whatever was in flight was decided (committed or superseded).
            self.pending = None;
        }
        for &r in &view.replicas {
            if r != self.node_id {
                self.followers.entry(r).or_insert(Follower {
                    end: -1,
                    caught_up_ms: now_ms,
                    fetch_ms: now_ms,
                    leader_end_at_fetch: self.local_end,
                });
            }
        }
        self.followers.retain(|r, _| view.replicas.contains(r));
        self.view = view;
        self.recompute()
    }

    /// The controller refused or did not answer the change in flight: the
    /// next tick may propose again.
    pub fn proposal_failed(&mut self) {
        self.pending = None;
    }

    /// Decides whether the ISR should change now. At most one change is in
    /// flight; an unanswered one is given up after a while.
    pub fn tick(&mut self, now_ms: u64) -> Option<ProposeIsr> {
        if let Some((_, sent)) = &self.pending {
            if now_ms.saturating_sub(*sent) < self.retry_ms {
                return None;
            }
            self.pending = None;
        }
        let mut isr: Vec<u64> = Vec::new();
        for &r in &self.view.replicas {
            let keep = if r == self.node_id {
                true
            } else if let Some(f) = self.followers.get(&r) {
                if self.view.isr.contains(&r) {
                    now_ms.saturating_sub(f.caught_up_ms) <= self.lag_max_ms
                } else {
                    f.end >= self.hw && f.end >= self.epoch_start && f.end >= 0
                }
            } else {
                false
            };
            if keep {
                isr.push(r);
            }
        }
        let mut current = self.view.isr.clone();
        current.sort_unstable();
        let mut proposed = isr.clone();
        proposed.sort_unstable();
        if proposed == current {
            return None;
        }
        let p = ProposeIsr {
            isr,
            leader_epoch: self.view.leader_epoch,
            partition_epoch: self.view.partition_epoch,
        };
        self.pending = Some((p.clone(), now_ms));
        // An expansion counts at once.
        self.recompute();
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: u64 = 1_000;

    fn view(isr: &[u64]) -> PartitionView {
        PartitionView {
            leader: 1,
            leader_epoch: 3,
            partition_epoch: 10,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
        }
    }

    fn leader(isr: &[u64], end: i64) -> LeaderState {
        LeaderState::new(1, view(isr), end, 0, LAG, 0)
    }

    #[test]
    fn high_watermark_is_the_smallest_replicated_offset_over_the_isr() {
        let mut s = leader(&[1, 2, 3], 0);
        assert_eq!(s.high_watermark(), 0);
        assert!(!s.local_end(10));
        // Followers have not fetched yet: nothing is committed.
        assert_eq!(s.high_watermark(), 0);
        assert_eq!(s.fetched(2, 10, 5), Some(false));
        assert_eq!(s.high_watermark(), 0);
        assert_eq!(s.fetched(3, 4, 5), Some(true));
        assert_eq!(s.high_watermark(), 4);
        assert_eq!(s.fetched(3, 10, 6), Some(true));
        assert_eq!(s.high_watermark(), 10);
        // The leader's own log bounds it too.
        assert!(!s.fetched(2, 10, 7).unwrap());
        assert_eq!(s.fetched(9, 10, 7), None, "not a replica");
    }

    #[test]
    fn the_high_watermark_never_goes_back_within_a_leadership() {
        let mut s = leader(&[1, 2], 10);
        s.fetched(2, 10, 1);
        assert_eq!(s.high_watermark(), 10);
        // A follower that truncated and fetches from lower does not move it back.
        s.fetched(2, 5, 2);
        assert_eq!(s.high_watermark(), 10);
    }

    #[test]
    fn a_sole_replica_commits_what_it_holds() {
        let mut s = LeaderState::new(
            1,
            PartitionView {
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
                replicas: vec![1],
                isr: vec![1],
            },
            0,
            0,
            LAG,
            0,
        );
        assert!(s.local_end(7));
        assert_eq!(s.high_watermark(), 7);
        assert_eq!(s.tick(100_000), None);
    }

    #[test]
    fn a_lagging_follower_is_shrunk_out_only_once_the_controller_commits() {
        let mut s = leader(&[1, 2, 3], 0);
        s.local_end(10);
        s.fetched(2, 10, 100);
        s.fetched(3, 2, 100);
        assert_eq!(s.high_watermark(), 2);
        // Within the lag time: no change.
        assert_eq!(s.tick(LAG), None);
        s.fetched(2, 10, LAG + 50);
        // Follower 3 last caught up at 0 (the grace period): out.
        let p = s.tick(LAG + 100).expect("shrink");
        assert_eq!(p.isr, vec![1, 2]);
        assert_eq!((p.leader_epoch, p.partition_epoch), (3, 10));
        // While the change is in flight, 3 still holds the high watermark.
        assert_eq!(s.high_watermark(), 2);
        assert_eq!(s.tick(LAG + 200), None, "one change at a time");
        // Committed: the high watermark moves on without 3.
        let mut committed = view(&[1, 2]);
        committed.partition_epoch = 11;
        assert!(s.metadata(committed, LAG + 300));
        assert_eq!(s.high_watermark(), 10);
        assert!(s.pending().is_none());
        assert_eq!(s.isr(), &[1, 2]);
    }

    #[test]
    fn a_follower_fetching_steadily_behind_a_busy_leader_stays_in_sync() {
        let mut s = leader(&[1, 2], 0);
        let mut t = 0;
        let mut end = 0;
        for _ in 0..100 {
            // The leader appends 5 between every two fetches; the follower
            // always asks for what the leader had at the previous answer.
            end += 5;
            s.local_end(end);
            t += 100;
            s.fetched(2, end - 5, t);
        }
        assert_eq!(s.tick(t), None);
        assert_eq!(s.high_watermark(), end - 5);
    }

    #[test]
    fn a_caught_up_follower_rejoins_and_counts_at_once() {
        let mut s = leader(&[1, 2], 0);
        s.local_end(20);
        s.fetched(2, 20, 10);
        assert_eq!(s.high_watermark(), 20);
        // 3 is behind the high watermark: not yet.
        s.fetched(3, 15, 20);
        assert_eq!(s.tick(30), None);
        s.fetched(3, 20, 40);
        let p = s.tick(50).expect("expand");
        assert_eq!(p.isr, vec![1, 2, 3]);
        // Counted while in flight: new appends wait for 3 as well.
        s.local_end(25);
        s.fetched(2, 25, 60);
        assert_eq!(s.high_watermark(), 20);
        s.fetched(3, 25, 61);
        assert_eq!(s.high_watermark(), 25);
    }

    #[test]
    fn a_follower_must_reach_the_start_of_the_current_epoch_to_join() {
        // A new leader whose log ends at 50 while the old high watermark
        // was 30: a follower at 40 holds the high watermark but not the
        // whole of what this epoch builds on.
        let mut s = LeaderState::new(1, view(&[1]), 50, 30, LAG, 0);
        s.fetched(2, 40, 10);
        assert_eq!(s.tick(20), None);
        s.fetched(2, 50, 30);
        assert_eq!(s.tick(40).unwrap().isr, vec![1, 2]);
    }

    #[test]
    fn a_refused_or_lost_proposal_is_retried() {
        let mut s = leader(&[1, 2], 10);
        let first = s.tick(LAG + 1).expect("shrink");
        s.proposal_failed();
        assert_eq!(s.tick(LAG + 2), Some(first.clone()));
        // Unanswered for the retry time: proposed again.
        assert_eq!(s.tick(LAG + 3), None);
        assert_eq!(s.tick(LAG + 2 + 2_000), Some(first));
    }

    #[test]
    fn new_replicas_get_a_grace_period_and_removed_ones_are_forgotten() {
        let mut s = leader(&[1, 2, 3], 0);
        let mut v = view(&[1, 2]);
        v.replicas = vec![1, 2, 4];
        v.partition_epoch = 11;
        s.metadata(v, 500);
        assert_eq!(s.follower_end(3), None);
        assert_eq!(s.follower_end(4), Some(-1));
        s.fetched(2, 0, 1_400);
        assert_eq!(s.tick(1_400), None, "4 is not in the ISR and not caught up");
    }
}
