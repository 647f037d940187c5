//! One consumer group: its members, their epochs and assignments, the
//! target assignment they move towards, and its committed offsets.
//!
//! Every method is a pure function of the group, its arguments and the
//! time passed in (milliseconds, from any monotonic origin the caller
//! keeps). A change that must be persisted marks the group dirty
//! ([`Group::take_dirty`]); committed offsets are persisted by the caller
//! record by record ([`crate::store`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{Assignor, Tp};

/// What the group needs to know about the cluster's topics.
pub trait Topics {
    /// The partition count of an existing topic.
    fn partitions(&self, topic: &str) -> Option<u32>;
    /// Every topic's name, for pattern subscriptions.
    fn names(&self) -> Vec<&str>;
}

impl Topics for BTreeMap<String, u32> {
    fn partitions(&self, topic: &str) -> Option<u32> {
        self.get(topic).copied()
    }

    fn names(&self) -> Vec<&str> {
        self.keys().map(String::as_str).collect()
    }
}

/// Settings the coordinator applies to every group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A member that sends no heartbeat for this long is removed.
    pub session_timeout_ms: u64,
    /// How often members are asked to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long a member may take to release partitions it is asked to
    /// revoke, unless it says otherwise when it joins.
    pub default_rebalance_timeout_ms: u64,
    /// Members per group.
    pub max_members: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 1_000,
            default_rebalance_timeout_ms: 60_000,
            max_members: 1_000,
        }
    }
}

/// The topics a member wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    /// These topics (those that exist).
    Topics(BTreeSet<String>),
    /// Every topic whose whole name matches this regular expression,
    /// except internal ones (names starting with `__`).
    Pattern(String),
    /// A pattern a gateway enforcing ACLs resolved against the topics the
    /// member's principal may read: these topics (those that exist),
    /// possibly none; the gateway sends them again when they change, and
    /// the coordinator never adds others. The pattern is kept for
    /// `DescribeGroup`.
    Resolved {
        pattern: String,
        topics: BTreeSet<String>,
    },
}

/// A pattern subscription's regular expression, matched against whole
/// topic names; internal topics (names starting with `__`) never match.
#[derive(Clone, Debug)]
pub struct TopicPattern(Regex);

impl TopicPattern {
    /// Compiles `pattern`, or says why it is not a regular expression.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        Regex::new(&format!("^(?:{pattern})$"))
            .map(TopicPattern)
            .map_err(|e| format!("bad subscription pattern {pattern:?}: {e}"))
    }

    /// Whether topic `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        !name.starts_with("__") && self.0.is_match(name)
    }
}

impl Subscription {
    fn compile(&self) -> Result<Option<TopicPattern>, GroupError> {
        match self {
            Subscription::Topics(t) if t.is_empty() => Err(GroupError::Invalid(
                "a subscription names at least one topic".into(),
            )),
            Subscription::Topics(_) => Ok(None),
            Subscription::Pattern(p) => TopicPattern::parse(p)
                .map(Some)
                .map_err(GroupError::Invalid),
            Subscription::Resolved { pattern, .. } => TopicPattern::parse(pattern)
                .map(|_| None)
                .map_err(GroupError::Invalid),
        }
    }

    /// The existing topics this subscription names.
    fn resolve(&self, pattern: Option<&TopicPattern>, topics: &dyn Topics) -> BTreeSet<String> {
        match (self, pattern) {
            (Subscription::Topics(t) | Subscription::Resolved { topics: t, .. }, _) => t
                .iter()
                .filter(|t| topics.partitions(t).is_some())
                .cloned()
                .collect(),
            (Subscription::Pattern(_), Some(re)) => topics
                .names()
                .into_iter()
                .filter(|t| re.matches(t))
                .map(str::to_string)
                .collect(),
            (Subscription::Pattern(_), None) => BTreeSet::new(),
        }
    }

    /// The pattern this subscription was made from, if any.
    pub fn pattern(&self) -> Option<&str> {
        match self {
            Subscription::Topics(_) => None,
            Subscription::Pattern(p) | Subscription::Resolved { pattern: p, .. } => Some(p),
        }
    }
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    /// When it was committed (Unix milliseconds, from the caller).
    pub commit_ms: u64,
}

/// Where a member is in moving to its target assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// It owns its target assignment at the target epoch.
    Stable,
    /// It was asked to release partitions and has not said it did.
    Revoking,
    /// It waits for partitions other members still release, or for its
    /// next heartbeat to learn its new assignment.
    Assigning,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Stable => "stable",
            MemberState::Revoking => "revoking",
            MemberState::Assigning => "assigning",
        }
    }
}

/// A group's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Some member does not own its target assignment yet.
    Reconciling,
    /// Every member owns its target assignment.
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Its epoch: the group epoch whose target assignment it was last
    /// moved towards. 0 while it joins.
    pub epoch: u64,
    /// The epoch before, still accepted from a member whose last response
    /// was lost (and that owns nothing it should not).
    pub previous_epoch: u64,
    pub client_id: String,
    pub client_host: String,
    pub subscription: Subscription,
    /// The existing topics its subscription names.
    pub topics: BTreeSet<String>,
    /// The assignor it asked for, if any.
    pub assignor: Option<Assignor>,
    pub rebalance_timeout_ms: u64,
    /// The partitions it owns and may consume.
    pub assigned: BTreeSet<Tp>,
    /// Partitions it still owns but was asked to release: it stops
    /// consuming them, commits, and reports that it no longer owns them.
    pub revoking: BTreeSet<Tp>,
    #[serde(skip)]
    pattern: Option<TopicPattern>,
    #[serde(skip)]
    session_deadline_ms: u64,
    #[serde(skip)]
    revoke_deadline_ms: Option<u64>,
}

impl Member {
    fn owns(&self, tp: &Tp) -> bool {
        self.assigned.contains(tp) || self.revoking.contains(tp)
    }
}

/// A member's heartbeat, as KIP-848's `ConsumerGroupHeartbeat`.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    /// Chosen by the member (or its gateway) once: a UUID.
    pub member_id: String,
    /// 0 to join (again: a member that rejoins starts over, owning
    /// nothing), -1 to leave, else the epoch the member has.
    pub member_epoch: i64,
    /// Required to join; `None` keeps the one it has.
    pub subscription: Option<Subscription>,
    pub assignor: Option<Assignor>,
    pub rebalance_timeout_ms: Option<u64>,
    /// The partitions the member owns now; `None` when unchanged. A member
    /// releases partitions it was asked to revoke by leaving them out.
    pub owned: Option<BTreeSet<Tp>>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub member_id: String,
    /// The member's epoch; 0 once it left.
    pub member_epoch: u64,
    pub heartbeat_interval_ms: u64,
    /// The partitions it may consume.
    pub assigned: BTreeSet<Tp>,
    /// The partitions it must release.
    pub revoking: BTreeSet<Tp>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member {0} is not in the group (it left, or its session ran out): it must rejoin")]
    UnknownMember(String),
    #[error(
        "member {member} is fenced: epoch {sent} is not its current epoch {current}; it must rejoin"
    )]
    FencedEpoch {
        member: String,
        sent: i64,
        current: u64,
    },
    #[error("group {group} is full ({max} members)")]
    Full { group: String, max: usize },
    #[error("{tp} is not assigned to member {member}")]
    NotAssigned { member: String, tp: Tp },
    #[error(
        "group {group} has {members} live member(s): offsets can only be set while it has none"
    )]
    NotEmpty { group: String, members: usize },
    #[error("{0}")]
    Invalid(String),
}

/// One consumer group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    /// Bumped by every change to the members, their subscriptions or the
    /// partition counts of their topics.
    pub epoch: u64,
    /// The epoch `target` was computed at.
    pub target_epoch: u64,
    pub members: BTreeMap<String, Member>,
    /// Where each member is headed.
    pub target: BTreeMap<String, BTreeSet<Tp>>,
    /// The partition counts of the topics members subscribe to.
    pub partitions: BTreeMap<String, u32>,
    /// When it last became empty (caller's clock, ms).
    pub empty_since_ms: Option<u64>,
    #[serde(skip)]
    pub offsets: BTreeMap<Tp, Committed>,
    #[serde(skip)]
    dirty: bool,
}

impl Group {
    pub fn new(id: impl Into<String>, now_ms: u64) -> Group {
        Group {
            id: id.into(),
            empty_since_ms: Some(now_ms),
            ..Group::default()
        }
    }

    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self
            .members
            .keys()
            .all(|m| self.member_state(m) == Some(MemberState::Stable))
        {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    pub fn member_state(&self, id: &str) -> Option<MemberState> {
        let m = self.members.get(id)?;
        Some(if !m.revoking.is_empty() {
            MemberState::Revoking
        } else if m.epoch == self.target_epoch
            && self.target.get(id).is_none_or(|t| *t == m.assigned)
        {
            MemberState::Stable
        } else {
            MemberState::Assigning
        })
    }

    /// The assignor the group uses: the one most members ask for (ties go
    /// to the first in `Assignor::ALL` order), `sticky` when none asks.
    pub fn assignor(&self) -> Assignor {
        let mut votes: BTreeMap<Assignor, usize> = BTreeMap::new();
        for a in self.members.values().filter_map(|m| m.assignor) {
            *votes.entry(a).or_default() += 1;
        }
        let most = votes.values().copied().max().unwrap_or(0);
        Assignor::ALL
            .into_iter()
            .find(|a| most > 0 && votes.get(a) == Some(&most))
            .unwrap_or_default()
    }

    /// True once since the last call when something that is persisted
    /// (members, epochs, assignments, subscriptions) changed.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// A member's heartbeat: joins, leaves, or keeps it in the group, and
    /// moves it towards its target assignment.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        now_ms: u64,
        topics: &dyn Topics,
        limits: &Limits,
    ) -> Result<HeartbeatResponse, GroupError> {
        if hb.member_id.is_empty() {
            return Err(GroupError::Invalid("a heartbeat needs a member id".into()));
        }
        let id = hb.member_id.clone();
        match hb.member_epoch {
            -1 => {
                if self.members.contains_key(&id) {
                    self.remove(&id, now_ms);
                }
                return Ok(HeartbeatResponse {
                    member_id: id,
                    member_epoch: 0,
                    heartbeat_interval_ms: limits.heartbeat_interval_ms,
                    assigned: BTreeSet::new(),
                    revoking: BTreeSet::new(),
                });
            }
            0 => self.join(hb, now_ms, topics, limits)?,
            e if e > 0 => self.keep(hb, now_ms, topics, limits)?,
            e => {
                return Err(GroupError::Invalid(format!(
                    "member epoch {e}: -1 leaves, 0 joins, a positive epoch heartbeats"
                )));
            }
        }
        self.compute_target();
        self.reconcile(&id, now_ms);
        let m = &self.members[&id];
        Ok(HeartbeatResponse {
            member_id: id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: limits.heartbeat_interval_ms,
            assigned: m.assigned.clone(),
            revoking: m.revoking.clone(),
        })
    }

    fn join(
        &mut self,
        hb: Heartbeat,
        now_ms: u64,
        topics: &dyn Topics,
        limits: &Limits,
    ) -> Result<(), GroupError> {
        let subscription = hb
            .subscription
            .ok_or_else(|| GroupError::Invalid("joining needs a subscription".into()))?;
        let pattern = subscription.compile()?;
        if !self.members.contains_key(&hb.member_id) && self.members.len() >= limits.max_members {
            return Err(GroupError::Full {
                group: self.id.clone(),
                max: limits.max_members,
            });
        }
        // A member that rejoins starts over: whatever it owned is free.
        self.members.remove(&hb.member_id);
        let member = Member {
            id: hb.member_id.clone(),
            epoch: 0,
            previous_epoch: 0,
            client_id: hb.client_id,
            client_host: hb.client_host,
            topics: subscription.resolve(pattern.as_ref(), topics),
            subscription,
            assignor: hb.assignor,
            rebalance_timeout_ms: hb
                .rebalance_timeout_ms
                .unwrap_or(limits.default_rebalance_timeout_ms),
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            pattern,
            session_deadline_ms: now_ms + limits.session_timeout_ms,
            revoke_deadline_ms: None,
        };
        self.members.insert(hb.member_id, member);
        self.empty_since_ms = None;
        self.refresh_partitions(topics);
        self.bump();
        Ok(())
    }

    fn keep(
        &mut self,
        hb: Heartbeat,
        now_ms: u64,
        topics: &dyn Topics,
        limits: &Limits,
    ) -> Result<(), GroupError> {
        let assignor_before = self.assignor();
        let m = self
            .members
            .get_mut(&hb.member_id)
            .ok_or_else(|| GroupError::UnknownMember(hb.member_id.clone()))?;
        let sent = hb.member_epoch as u64;
        if sent != m.epoch {
            // A member whose last response was lost still has the epoch
            // before; it is accepted if it owns nothing it should not.
            let lost_response = sent == m.previous_epoch
                && hb
                    .owned
                    .as_ref()
                    .is_some_and(|o| o.iter().all(|tp| m.owns(tp)));
            if !lost_response {
                return Err(GroupError::FencedEpoch {
                    member: hb.member_id,
                    sent: hb.member_epoch,
                    current: m.epoch,
                });
            }
        }
        m.session_deadline_ms = now_ms + limits.session_timeout_ms;
        if let Some(owned) = &hb.owned
            && !m.revoking.is_empty()
            && m.revoking.iter().all(|tp| !owned.contains(tp))
        {
            m.revoking.clear();
            m.revoke_deadline_ms = None;
            self.dirty = true;
        }
        if let Some(t) = hb.rebalance_timeout_ms
            && t != m.rebalance_timeout_ms
        {
            m.rebalance_timeout_ms = t;
            self.dirty = true;
        }
        let mut changed = false;
        if let Some(sub) = hb.subscription
            && sub != m.subscription
        {
            let pattern = sub.compile()?;
            let resolved = sub.resolve(pattern.as_ref(), topics);
            changed |= resolved != m.topics;
            m.topics = resolved;
            m.subscription = sub;
            m.pattern = pattern;
            self.dirty = true;
        }
        if hb.assignor.is_some() && hb.assignor != m.assignor {
            m.assignor = hb.assignor;
            self.dirty = true;
            changed |= self.assignor() != assignor_before;
        }
        if changed {
            self.refresh_partitions(topics);
            self.bump();
        }
        Ok(())
    }

    /// Removes members whose session ran out, and members that did not
    /// release revoked partitions within their rebalance timeout. Returns
    /// their ids.
    pub fn tick(&mut self, now_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                now_ms >= m.session_deadline_ms || m.revoke_deadline_ms.is_some_and(|d| now_ms >= d)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            self.remove(id, now_ms);
        }
        gone
    }

    /// When `tick` has something to do next.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.members
            .values()
            .map(|m| {
                m.revoke_deadline_ms
                    .map_or(m.session_deadline_ms, |d| d.min(m.session_deadline_ms))
            })
            .min()
    }

    /// The topics changed: pattern subscriptions are resolved again and
    /// the partition counts refreshed. Returns whether the group's target
    /// assignment changes.
    pub fn on_metadata(&mut self, topics: &dyn Topics) -> bool {
        let mut changed = false;
        for m in self.members.values_mut() {
            let resolved = m.subscription.resolve(m.pattern.as_ref(), topics);
            if resolved != m.topics {
                m.topics = resolved;
                changed = true;
            }
        }
        changed |= self.refresh_partitions(topics);
        if changed {
            self.dirty = true;
            self.bump();
        }
        changed
    }

    /// Brings `partitions` to the counts of the topics members subscribe
    /// to. Returns whether it changed.
    fn refresh_partitions(&mut self, topics: &dyn Topics) -> bool {
        let wanted: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        let now: BTreeMap<String, u32> = wanted
            .into_iter()
            .filter_map(|t| topics.partitions(t).map(|c| (t.clone(), c)))
            .collect();
        if now == self.partitions {
            return false;
        }
        self.partitions = now;
        true
    }

    fn remove(&mut self, id: &str, now_ms: u64) {
        self.members.remove(id);
        self.target.remove(id);
        if self.members.is_empty() {
            self.empty_since_ms = Some(now_ms);
        }
        self.bump();
    }

    fn bump(&mut self) {
        self.epoch += 1;
        self.dirty = true;
        self.compute_target();
    }

    fn compute_target(&mut self) {
        if self.target_epoch == self.epoch {
            return;
        }
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.topics.clone()))
            .collect();
        self.target = self
            .assignor()
            .assign(&subscriptions, &self.partitions, &self.target);
        self.target_epoch = self.epoch;
    }

    /// Moves a member one step towards its target: first it is asked to
    /// release what it should not own; once it has, it gets the target
    /// epoch and every partition of its target no other member owns (the
    /// rest on a later heartbeat, once their owners released them).
    fn reconcile(&mut self, id: &str, now_ms: u64) {
        let Some(m) = self.members.get(id) else {
            return;
        };
        if !m.revoking.is_empty() {
            return;
        }
        let empty = BTreeSet::new();
        let target = self.target.get(id).unwrap_or(&empty);
        let revoke: BTreeSet<Tp> = m.assigned.difference(target).cloned().collect();
        if !revoke.is_empty() {
            let m = self.members.get_mut(id).expect("checked above");
            m.assigned.retain(|tp| !revoke.contains(tp));
            m.revoke_deadline_ms = Some(now_ms + m.rebalance_timeout_ms);
            m.revoking = revoke;
            self.dirty = true;
            return;
        }
        let taken: HashSet<&Tp> = self
            .members
            .values()
            .filter(|o| o.id != id)
            .flat_map(|o| o.assigned.iter().chain(&o.revoking))
            .collect();
        let free: Vec<Tp> = target
            .iter()
            .filter(|tp| !m.assigned.contains(*tp) && !taken.contains(tp))
            .cloned()
            .collect();
        let target_epoch = self.target_epoch;
        let m = self.members.get_mut(id).expect("checked above");
        if !free.is_empty() {
            m.assigned.extend(free);
            self.dirty = true;
        }
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = target_epoch;
            self.dirty = true;
        }
    }

    /// Checks a commit: from a member, at its current epoch (or the one
    /// before), for partitions it owns; or, with no member id, to a group without
    /// members (tools setting offsets). Applying it is `commit`'s job.
    pub fn check_commit<'a>(
        &self,
        member_id: &str,
        member_epoch: i64,
        partitions: impl IntoIterator<Item = &'a Tp>,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err(GroupError::NotEmpty {
                    group: self.id.clone(),
                    members: self.members.len(),
                });
            }
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        // The epoch before is accepted too: a member whose heartbeat answer
        // was lost commits with it (what it commits must still be its own).
        if member_epoch != m.epoch as i64 && member_epoch != m.previous_epoch as i64 {
            return Err(GroupError::FencedEpoch {
                member: member_id.to_string(),
                sent: member_epoch,
                current: m.epoch,
            });
        }
        if let Some(tp) = partitions.into_iter().find(|tp| !m.owns(tp)) {
            return Err(GroupError::NotAssigned {
                member: member_id.to_string(),
                tp: tp.clone(),
            });
        }
        Ok(())
    }

    /// Records committed offsets (checked with `check_commit`).
    pub fn commit(&mut self, offsets: impl IntoIterator<Item = (Tp, Committed)>) {
        self.offsets.extend(offsets);
    }

    /// Forgets the offsets of partitions that no longer exist (a deleted
    /// topic, or partitions past its count). Returns them.
    pub fn forget_missing(&mut self, topics: &dyn Topics) -> Vec<Tp> {
        let gone: Vec<Tp> = self
            .offsets
            .keys()
            .filter(|tp| {
                topics
                    .partitions(&tp.topic)
                    .is_none_or(|c| tp.partition >= c)
            })
            .cloned()
            .collect();
        for tp in &gone {
            self.offsets.remove(tp);
        }
        gone
    }

    /// Restores what a record persisted: members' sessions start now, so
    /// every member has a whole session to find a new coordinator.
    pub fn restored(mut self, now_ms: u64, limits: &Limits) -> Group {
        for m in self.members.values_mut() {
            m.pattern = m.subscription.compile().ok().flatten();
            m.session_deadline_ms = now_ms + limits.session_timeout_ms;
            m.revoke_deadline_ms =
                (!m.revoking.is_empty()).then(|| now_ms + m.rebalance_timeout_ms);
        }
        self.dirty = false;
        self
    }
}

#[cfg(test)]
mod tests;
