//! One partition replica hosted on this node: its log, its role (leader or
//! follower) and its high watermark.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use streambus_cluster::topic_config::{FsyncSetting, TopicConfig};
use streambus_log::Log;
use tokio::sync::watch;

pub use crate::isr::PartitionView;
use crate::isr::{LeaderState, ProposeIsr};

/// Identifies a partition: topic name and partition number.
pub type PartitionKey = (String, u32);

/// What this node does for a partition.
#[derive(Debug)]
enum Role {
    /// It leads: appends, tracks its followers, decides the high watermark.
    Leader(LeaderState),
    /// It follows (or no leader is known).
    Follower,
}

/// A partition replica.
pub struct Replica {
    /// This node.
    pub node_id: u64,
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The topic incarnation this replica belongs to.
    pub topic_id: String,
    /// The partition's directory.
    pub dir: PathBuf,
    /// The log.
    pub log: Arc<Log>,
    /// Topic settings: those of the open, changed in place by
    /// [`Replica::update_config`].
    config: std::sync::RwLock<TopicConfig>,
    /// How long an in-sync follower may stay behind before the leader
    /// removes it from the ISR.
    lag_max_ms: u64,
    state: Mutex<(PartitionView, Role)>,
    /// High watermark: records below it are visible to consumers.
    hw: watch::Sender<i64>,
    /// The log end offset, for replica fetches waiting for new data.
    end: watch::Sender<i64>,
    /// Set when the replica is being closed (its partition moved away or
    /// its topic was deleted): a fetch loop still running must not write
    /// to the log any more.
    retired: std::sync::atomic::AtomicBool,
    /// Retention, compaction or a roll is running on this replica.
    pub(crate) maintenance_running: std::sync::atomic::AtomicBool,
    /// With tracing on, as leader: the `traceparent` of the append span of
    /// recent traced batches, by base offset, handed to followers with the
    /// batches (at most [`TRACED_BATCHES`]).
    traces: Mutex<std::collections::BTreeMap<i64, String>>,
}

/// Traced batches a leader remembers for its followers.
const TRACED_BATCHES: usize = 256;

impl Replica {
    /// Wraps an opened log.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: u64,
        key: PartitionKey,
        topic_id: String,
        dir: PathBuf,
        log: Log,
        config: TopicConfig,
        view: PartitionView,
        lag_max_ms: u64,
    ) -> Replica {
        let log = Arc::new(log);
        let start = log.log_start_offset();
        let end = log.end_offset();
        let r = Replica {
            node_id,
            topic: key.0,
            partition: key.1,
            topic_id,
            dir,
            log,
            config: std::sync::RwLock::new(config),
            lag_max_ms,
            state: Mutex::new((PartitionView::default(), Role::Follower)),
            hw: watch::channel(start).0,
            end: watch::channel(end).0,
            retired: std::sync::atomic::AtomicBool::new(false),
            maintenance_running: std::sync::atomic::AtomicBool::new(false),
            traces: Mutex::new(std::collections::BTreeMap::new()),
        };
        r.set_view(view, crate::partitions::now_ms() as u64);
        r
    }

    /// As leader, with tracing on: remembers the `traceparent` of the
    /// append span of the batch at `base_offset` for the followers.
    pub fn note_trace(&self, base_offset: i64, traceparent: String) {
        let mut traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        traces.insert(base_offset, traceparent);
        while traces.len() > TRACED_BATCHES {
            traces.pop_first();
        }
    }

    /// The traced batches with a base offset in `from..to`, for a follower
    /// fetching that range. Those below the high watermark are forgotten
    /// once handed out: every in-sync follower has them.
    pub fn traces_in(&self, from: i64, to: i64) -> Vec<(i64, String)> {
        let mut traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        if traces.is_empty() {
            return Vec::new();
        }
        let found = traces
            .range(from..to)
            .map(|(o, t)| (*o, t.clone()))
            .collect();
        let hw = self.high_watermark();
        while traces.first_key_value().is_some_and(|(o, _)| *o < hw) {
            traces.pop_first();
        }
        found
    }

    fn lock(&self) -> MutexGuard<'_, (PartitionView, Role)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The topic settings in effect.
    pub fn config(&self) -> TopicConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a changed topic configuration to the open replica and its
    /// log. A change of the fsync policy or interval cannot apply to an
    /// open log (the controller refuses it): it is refused here too, and
    /// nothing changes.
    pub fn update_config(&self, config: &TopicConfig) -> Result<(), String> {
        let mut current = self.config.write().unwrap_or_else(|p| p.into_inner());
        if current.fsync_policy != config.fsync_policy
            || current.fsync_interval_ms != config.fsync_interval_ms
        {
            return Err("the fsync policy changed: the log must be reopened".into());
        }
        self.log
            .update_config(config.log_config())
            .map_err(|e| e.to_string())?;
        *current = config.clone();
        Ok(())
    }

    /// Whether acknowledged appends are fsynced before the ack.
    pub fn fsync_always(&self) -> bool {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .fsync_policy
            == FsyncSetting::Always
    }

    /// What this replica holds for the purpose of acknowledgments: under
    /// fsync `always` the durable offset (nothing a crash could take away
    /// counts), otherwise the log end.
    pub fn replicated_end(&self) -> i64 {
        if self.fsync_always() {
            self.log.durable_offset()
        } else {
            self.log.end_offset()
        }
    }

    /// The leader and leader epoch the metadata last named, and whether
    /// this node leads, without copying the view (every replica is asked
    /// on every replication tick).
    pub fn leadership(&self) -> (u64, u64, bool) {
        let st = self.lock();
        (
            st.0.leader,
            st.0.leader_epoch,
            matches!(st.1, Role::Leader(_)),
        )
    }

    /// As leader: the committed ISR size, the replica count and the
    /// topic's `min.insync.replicas`; `None` when following.
    pub fn isr_health(&self) -> Option<(usize, usize, usize)> {
        let (isr, replicas) = {
            let st = self.lock();
            match &st.1 {
                Role::Leader(s) => (s.isr().len(), st.0.replicas.len()),
                Role::Follower => return None,
            }
        };
        let min = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .min_insync_replicas as usize;
        Some((isr, replicas, min))
    }

    /// The partition as the metadata last said.
    pub fn view(&self) -> PartitionView {
        self.lock().0.clone()
    }

    /// The leader epoch and replica count as the metadata last said,
    /// without copying the view (the append path asks on every batch).
    pub fn epoch_and_replicas(&self) -> (u64, usize) {
        let st = self.lock();
        (st.0.leader_epoch, st.0.replicas.len())
    }

    /// Whether this node leads the partition.
    pub fn is_leader(&self) -> bool {
        matches!(self.lock().1, Role::Leader(_))
    }

    /// The committed ISR size as the leader sees it (0 when not leading).
    pub fn isr_len(&self) -> usize {
        match &self.lock().1 {
            Role::Leader(s) => s.isr().len(),
            Role::Follower => 0,
        }
    }

    /// Applies the partition's metadata: becomes leader (a new
    /// [`LeaderState`] for a new epoch), stays leader with a new ISR, or
    /// becomes a follower.
    pub fn set_view(&self, view: PartitionView, now_ms: u64) {
        let mut st = self.lock();
        let mut stepped_down = false;
        if view.leader_epoch < st.0.leader_epoch || view.partition_epoch < st.0.partition_epoch {
            // An answer or metadata that crossed newer metadata: both
            // epochs only go up (every leader change bumps both).
            return;
        }
        let moved = if view.leader == self.node_id {
            match &mut st.1 {
                Role::Leader(s) if s.view().leader_epoch == view.leader_epoch => {
                    s.metadata(view.clone(), now_ms)
                }
                _ => {
                    let hw = (*self.hw.borrow()).max(self.log.log_start_offset());
                    let s = LeaderState::new(
                        self.node_id,
                        view.clone(),
                        self.replicated_end(),
                        hw,
                        self.lag_max_ms,
                        now_ms,
                    );
                    tracing::info!(topic = %self.topic, partition = self.partition,
                        epoch = view.leader_epoch, end = self.log.end_offset(), "leading partition");
                    st.1 = Role::Leader(s);
                    true
                }
            }
        } else {
            let was_leader = matches!(st.1, Role::Leader(_));
            if was_leader {
                tracing::info!(topic = %self.topic, partition = self.partition,
                    epoch = view.leader_epoch, leader = view.leader, "following partition");
            }
            st.1 = Role::Follower;
            stepped_down = was_leader;
            false
        };
        st.0 = view;
        let hw = match &st.1 {
            Role::Leader(s) => Some(s.high_watermark()),
            Role::Follower => None,
        };
        drop(st);
        if moved && let Some(hw) = hw {
            self.publish_hw(hw);
        }
        if stepped_down {
            // Wakes whoever waits on the high watermark as leader (record
            // watches): they find this node no longer leads.
            self.hw.send_modify(|_| {});
        }
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> i64 {
        *self.hw.borrow()
    }

    fn publish_hw(&self, hw: i64) {
        self.hw.send_if_modified(|cur| {
            if *cur != hw {
                *cur = hw;
                true
            } else {
                false
            }
        });
    }

    /// The local log advanced (an append, a replicated append, a truncation
    /// or a sync): tells waiting replica fetches and, as leader,
    /// recomputes the high watermark.
    pub fn advance_high_watermark(&self) {
        let end = self.log.end_offset();
        self.end.send_if_modified(|cur| {
            if *cur != end {
                *cur = end;
                true
            } else {
                false
            }
        });
        let replicated = self.replicated_end();
        let hw = match &mut self.lock().1 {
            Role::Leader(s) => {
                s.local_end(replicated);
                Some(s.high_watermark())
            }
            Role::Follower => None,
        };
        if let Some(hw) = hw {
            self.publish_hw(hw);
        }
    }

    /// As leader: follower `node` fetched from `offset`. Returns false when
    /// this node does not lead or `node` is not a replica.
    pub fn follower_fetched(&self, node: u64, offset: i64, now_ms: u64) -> bool {
        let hw = match &mut self.lock().1 {
            Role::Leader(s) => match s.fetched(node, offset, now_ms) {
                Some(_) => s.high_watermark(),
                None => return false,
            },
            Role::Follower => return false,
        };
        self.publish_hw(hw);
        true
    }

    /// As follower: the leader's high watermark, bounded by what this
    /// replica holds.
    pub fn follow_high_watermark(&self, leader_hw: i64) {
        if self.is_leader() {
            return;
        }
        self.publish_hw(leader_hw.min(self.replicated_end()));
    }

    /// As leader: an ISR change to propose now, if any.
    pub fn tick(&self, now_ms: u64) -> Option<ProposeIsr> {
        match &mut self.lock().1 {
            Role::Leader(s) => s.tick(now_ms),
            Role::Follower => None,
        }
    }

    /// As leader: the proposal in flight was refused or lost.
    pub fn proposal_failed(&self) {
        if let Role::Leader(s) = &mut self.lock().1 {
            s.proposal_failed();
        }
    }

    /// The state lock, if this node still follows at `leader_epoch`: held
    /// across a follower's log change, so a role or epoch change waits.
    fn following(&self, leader_epoch: u64) -> Option<MutexGuard<'_, (PartitionView, Role)>> {
        let st = self.lock();
        (!matches!(st.1, Role::Leader(_))
            && st.0.leader_epoch == leader_epoch
            && !self.retired.load(std::sync::atomic::Ordering::Acquire))
        .then_some(st)
    }

    /// The replica is being closed: waits for a follower log change in
    /// progress, and refuses every later one (a fetch loop not yet stopped
    /// must not write into a directory about to be deleted).
    pub fn retire(&self) {
        let _st = self.lock();
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// As follower of `leader_epoch`: appends whole batches replicated
    /// from the leader. Returns `Ok(false)` without touching the log once
    /// this node's role or the epoch changed (a fetch answered by a former
    /// leader must not land in a new leader's log).
    pub fn append_as_follower(
        &self,
        leader_epoch: u64,
        batches: &[u8],
    ) -> Result<bool, streambus_log::LogError> {
        let Some(_st) = self.following(leader_epoch) else {
            return Ok(false);
        };
        self.log.append_replicated(batches)?;
        Ok(true)
    }

    /// As follower of `leader_epoch`: cuts a divergent tail off. Same
    /// guard as [`Replica::append_as_follower`].
    pub fn truncate_as_follower(
        &self,
        leader_epoch: u64,
        offset: i64,
    ) -> Result<bool, streambus_log::LogError> {
        let Some(_st) = self.following(leader_epoch) else {
            return Ok(false);
        };
        if offset < self.log.end_offset() {
            tracing::info!(topic = %self.topic, partition = self.partition,
                from = self.log.end_offset(), to = offset, "truncating a divergent tail");
            self.log.truncate_to(offset)?;
        }
        Ok(true)
    }

    /// As follower of `leader_epoch`: empties the log and starts it at the
    /// leader's log start `offset` (this log ends below it: the leader no
    /// longer has the records in between). Same guard as
    /// [`Replica::append_as_follower`].
    pub fn reset_as_follower(
        &self,
        leader_epoch: u64,
        offset: i64,
    ) -> Result<bool, streambus_log::LogError> {
        let Some(_st) = self.following(leader_epoch) else {
            return Ok(false);
        };
        if offset > self.log.end_offset() {
            tracing::info!(topic = %self.topic, partition = self.partition,
                end = self.log.end_offset(), leader_log_start = offset,
                "the leader's log starts past this replica's end; starting over there");
            self.log.reset_to(offset)?;
        }
        Ok(true)
    }

    /// Subscribes to high watermark changes.
    pub fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.hw.subscribe()
    }

    /// Subscribes to log end offset changes.
    pub fn watch_end(&self) -> watch::Receiver<i64> {
        self.end.subscribe()
    }
}
