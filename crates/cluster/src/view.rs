//! The cluster metadata as the controllers' clients hold it: a snapshot
//! whose topics and partitions are shared, so that keeping it current
//! with 100,000 partitions costs what changed, not what exists.
//!
//! A [`ClusterView`] is cheap to clone (a few reference counts). Applying a
//! controller message ([`ClusterView::apply`]) builds the next view:
//!
//! - a delta (`ClusterMetadata.delta`) copies the topic map (pointers) and
//!   replaces only the topics it names; a partial topic
//!   (`TopicMetadata.partial`) copies its partition list (pointers) and
//!   replaces only the partitions it lists;
//! - a whole snapshot (a new watch stream, a `GetMetadata` answer) is
//!   compared with the view before it, and every topic or partition equal
//!   to the one held keeps the one held.
//!
//! Either way, a topic or partition that did not change is the same `Arc`
//! in both views, so a receiver finds what changed with
//! [`Arc::ptr_eq`] instead of comparing everything
//! ([`ClusterView::changes_since`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use streambus_acl::Acls;
use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
use streambus_proto::v1::{ClientQuota, PartitionDescription};

/// A snapshot of the cluster metadata with shared topics and partitions.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The metadata version (the controller's last applied log index).
    pub version: u64,
    /// Storage nodes, in the controller's order.
    pub nodes: Arc<Vec<StorageNodeInfo>>,
    /// Topics by name.
    pub topics: Arc<BTreeMap<String, Arc<TopicView>>>,
    /// Controller Raft leader id, when known.
    pub controller_leader_id: u64,
    /// Controller Raft leader address, when known.
    pub controller_leader_address: String,
    /// The cluster id; empty until the cluster is initialized.
    pub cluster_id: String,
    /// The cluster's ACLs. Kept (the same `Arc`) while they do not change.
    pub acls: Arc<Acls>,
    /// Quotas by principal (`User:*`: the default). Kept while unchanged.
    pub quotas: Arc<BTreeMap<String, ClientQuota>>,
}

/// One topic of a [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    /// Name.
    pub name: String,
    /// Unique id; a re-created topic gets a new one.
    pub topic_id: String,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Effective configuration.
    pub configs: HashMap<String, String>,
    /// Partitions in partition order (`partitions[i].partition == i`).
    pub partitions: Vec<Arc<PartitionDescription>>,
}

/// A message that does not fit the view it was applied to: the stream it
/// came on is not to be trusted further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistent(pub String);

impl std::fmt::Display for Inconsistent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What changed between two views, by name: see
/// [`ClusterView::changes_since`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Topics whose every partition is to be looked at again: added,
    /// deleted, re-created, or with changed configuration or replication
    /// factor.
    pub whole_topics: Vec<String>,
    /// Partitions added or changed in topics otherwise the same.
    pub partitions: Vec<(String, u32)>,
}

impl Changes {
    /// Whether nothing changed in topics or partitions.
    pub fn is_empty(&self) -> bool {
        self.whole_topics.is_empty() && self.partitions.is_empty()
    }
}

impl TopicView {
    /// The partition numbered `partition`.
    pub fn partition(&self, partition: u32) -> Option<&PartitionDescription> {
        self.partitions
            .get(partition as usize)
            .map(|p| &**p)
            .filter(|p| p.partition == partition)
    }

    /// The topic's wire form.
    pub fn to_wire(&self) -> TopicMetadata {
        TopicMetadata {
            name: self.name.clone(),
            topic_id: self.topic_id.clone(),
            replication_factor: self.replication_factor,
            configs: self.configs.clone(),
            partitions: self.partitions.iter().map(|p| (**p).clone()).collect(),
            partial: false,
        }
    }

    /// Whether everything but the partitions equals `t`'s.
    fn same_header(&self, t: &TopicMetadata) -> bool {
        self.name == t.name
            && self.topic_id == t.topic_id
            && self.replication_factor == t.replication_factor
            && self.configs == t.configs
    }

    /// `t` whole, sharing every partition equal to one of `before` (the
    /// topic held so far under the same name).
    fn from_wire(
        t: TopicMetadata,
        before: Option<&Arc<TopicView>>,
    ) -> Result<Arc<TopicView>, Inconsistent> {
        if let Some(b) = before
            && b.same_header(&t)
            && b.partitions.len() == t.partitions.len()
            && b.partitions
                .iter()
                .zip(&t.partitions)
                .all(|(a, p)| **a == *p)
        {
            return Ok(b.clone());
        }
        let reuse = before.filter(|b| b.topic_id == t.topic_id);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for (i, p) in t.partitions.into_iter().enumerate() {
            if p.partition as usize != i {
                return Err(Inconsistent(format!(
                    "topic {:?} lists partition {} at position {i}",
                    t.name, p.partition
                )));
            }
            match reuse
                .and_then(|b| b.partitions.get(i))
                .filter(|a| ***a == p)
            {
                Some(a) => partitions.push(a.clone()),
                None => partitions.push(Arc::new(p)),
            }
        }
        Ok(Arc::new(TopicView {
            name: t.name,
            topic_id: t.topic_id,
            replication_factor: t.replication_factor,
            configs: t.configs,
            partitions,
        }))
    }

    /// `t` (partial) applied to `before`.
    fn merged(before: &TopicView, t: TopicMetadata) -> Result<Arc<TopicView>, Inconsistent> {
        if before.topic_id != t.topic_id {
            return Err(Inconsistent(format!(
                "a partial update of topic {:?} names another topic id",
                t.name
            )));
        }
        let mut next = TopicView {
            name: t.name,
            topic_id: t.topic_id,
            replication_factor: t.replication_factor,
            configs: t.configs,
            partitions: before.partitions.clone(),
        };
        for p in t.partitions {
            let i = p.partition as usize;
            if i < next.partitions.len() {
                next.partitions[i] = Arc::new(p);
            } else if i == next.partitions.len() {
                next.partitions.push(Arc::new(p));
            } else {
                return Err(Inconsistent(format!(
                    "a partial update of topic {:?} skips to partition {i} past its {} partitions",
                    next.name,
                    next.partitions.len()
                )));
            }
        }
        Ok(Arc::new(next))
    }
}

impl ClusterView {
    /// The view a whole snapshot describes, sharing nothing.
    pub fn from_wire(md: ClusterMetadata) -> Result<ClusterView, Inconsistent> {
        ClusterView::default().apply(md)
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicView>> {
        self.topics.get(name)
    }

    /// A storage node by id.
    pub fn node(&self, node_id: u64) -> Option<&StorageNodeInfo> {
        self.nodes.iter().find(|n| n.node_id == node_id)
    }

    /// The view after `md`: a delta applies to this view; a whole snapshot
    /// replaces it, sharing what it has equal with it. A message that
    /// cannot follow this view (a partial topic that is not held, a
    /// partition list with a gap) is an error and changes nothing.
    pub fn apply(&self, md: ClusterMetadata) -> Result<ClusterView, Inconsistent> {
        let mut topics: BTreeMap<String, Arc<TopicView>>;
        if md.delta {
            topics = (*self.topics).clone();
            for name in &md.removed_topics {
                topics.remove(name);
            }
            for t in md.topics {
                let next = match (t.partial, topics.get(&t.name)) {
                    (true, Some(before)) => TopicView::merged(before, t)?,
                    (true, None) => {
                        return Err(Inconsistent(format!(
                            "a partial update of topic {:?}, which is not held",
                            t.name
                        )));
                    }
                    (false, before) => TopicView::from_wire(t, before)?,
                };
                topics.insert(next.name.clone(), next);
            }
        } else {
            topics = BTreeMap::new();
            for t in md.topics {
                if t.partial {
                    return Err(Inconsistent(format!(
                        "a whole snapshot with a partial topic {:?}",
                        t.name
                    )));
                }
                let before = self.topics.get(&t.name);
                let next = TopicView::from_wire(t, before)?;
                topics.insert(next.name.clone(), next);
            }
        }
        let nodes = if *self.nodes == md.nodes {
            self.nodes.clone()
        } else {
            Arc::new(md.nodes)
        };
        let acls = if md.acls_unchanged {
            if !md.delta {
                return Err(Inconsistent(
                    "a whole snapshot says its ACLs are unchanged".into(),
                ));
            }
            self.acls.clone()
        } else {
            let mut acls = Acls::default();
            for b in &md.acls {
                // An ACL this version cannot read (a newer controller's)
                // is not skipped: it may be a deny.
                let acl = crate::acl_wire::from_wire(b)
                    .map_err(|e| Inconsistent(format!("an ACL that cannot be read: {e}")))?;
                acls.add(acl).ok();
            }
            if acls == *self.acls {
                self.acls.clone()
            } else {
                Arc::new(acls)
            }
        };
        let quotas = if md.quotas_unchanged {
            if !md.delta {
                return Err(Inconsistent(
                    "a whole snapshot says its quotas are unchanged".into(),
                ));
            }
            self.quotas.clone()
        } else {
            let quotas: BTreeMap<String, ClientQuota> = md
                .quotas
                .into_iter()
                .map(|q| (q.principal.clone(), q))
                .collect();
            if quotas == *self.quotas {
                self.quotas.clone()
            } else {
                Arc::new(quotas)
            }
        };
        Ok(ClusterView {
            quotas,
            version: md.version,
            nodes,
            topics: Arc::new(topics),
            controller_leader_id: md.controller_leader_id,
            controller_leader_address: md.controller_leader_address,
            cluster_id: md.cluster_id,
            acls,
        })
    }

    /// What changed in topics and partitions since `before`: topics and
    /// partitions shared with `before` are skipped without comparing them,
    /// so the cost follows the change, not the partition count.
    pub fn changes_since(&self, before: &ClusterView) -> Changes {
        let mut changes = Changes::default();
        if Arc::ptr_eq(&self.topics, &before.topics) {
            return changes;
        }
        for name in before.topics.keys() {
            if !self.topics.contains_key(name) {
                changes.whole_topics.push(name.clone());
            }
        }
        for (name, t) in self.topics.iter() {
            let Some(b) = before.topics.get(name) else {
                changes.whole_topics.push(name.clone());
                continue;
            };
            if Arc::ptr_eq(t, b) {
                continue;
            }
            let same = t.topic_id == b.topic_id
                && t.replication_factor == b.replication_factor
                && t.configs == b.configs
                && t.partitions.len() >= b.partitions.len();
            if !same {
                changes.whole_topics.push(name.clone());
                continue;
            }
            for (i, p) in t.partitions.iter().enumerate() {
                if b.partitions.get(i).is_none_or(|bp| !Arc::ptr_eq(p, bp)) {
                    changes.partitions.push((name.clone(), i as u32));
                }
            }
        }
        changes.whole_topics.sort();
        changes
    }

    /// The wire form of the whole view.
    pub fn to_wire(&self) -> ClusterMetadata {
        ClusterMetadata {
            version: self.version,
            nodes: (*self.nodes).clone(),
            topics: self.topics.values().map(|t| t.to_wire()).collect(),
            controller_leader_id: self.controller_leader_id,
            controller_leader_address: self.controller_leader_address.clone(),
            cluster_id: self.cluster_id.clone(),
            acls: self.acls.iter().map(crate::acl_wire::to_wire).collect(),
            quotas: self.quotas.values().cloned().collect(),
            ..ClusterMetadata::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: u32, leader: u64) -> PartitionDescription {
        PartitionDescription {
            partition,
            leader,
            leader_epoch: 1,
            replicas: vec![leader],
            isr: vec![leader],
            ..Default::default()
        }
    }

    fn topic(name: &str, partitions: u32) -> TopicMetadata {
        TopicMetadata {
            name: name.to_string(),
            topic_id: format!("id-{name}"),
            replication_factor: 1,
            configs: Default::default(),
            partitions: (0..partitions).map(|p| partition(p, 1)).collect(),
            partial: false,
        }
    }

    fn whole(version: u64, topics: Vec<TopicMetadata>) -> ClusterMetadata {
        ClusterMetadata {
            version,
            topics,
            ..Default::default()
        }
    }

    fn delta(version: u64, topics: Vec<TopicMetadata>, removed: &[&str]) -> ClusterMetadata {
        ClusterMetadata {
            version,
            topics,
            removed_topics: removed.iter().map(|s| s.to_string()).collect(),
            delta: true,
            ..Default::default()
        }
    }

    fn names(v: &ClusterView) -> Vec<(&str, usize)> {
        v.topics
            .values()
            .map(|t| (t.name.as_str(), t.partitions.len()))
            .collect()
    }

    #[test]
    fn acls_are_kept_while_unchanged_and_an_unreadable_one_is_inconsistent() {
        use streambus_proto::v1::{
            AclBinding, AclOperation, AclPatternType, AclPermission, AclResourceType,
        };
        let deny = AclBinding {
            principal: "User:eve".into(),
            resource_type: AclResourceType::Topic as i32,
            pattern_type: AclPatternType::Literal as i32,
            resource_name: "*".into(),
            operation: AclOperation::All as i32,
            permission: AclPermission::Deny as i32,
        };
        let mut md = whole(1, vec![]);
        md.acls = vec![deny.clone()];
        let v1 = ClusterView::from_wire(md).unwrap();
        assert_eq!(v1.acls.len(), 1);
        assert_eq!(v1.to_wire().acls, vec![deny.clone()]);

        let mut unchanged = delta(2, vec![topic("a", 1)], &[]);
        unchanged.acls_unchanged = true;
        let v2 = v1.apply(unchanged.clone()).unwrap();
        assert!(Arc::ptr_eq(&v1.acls, &v2.acls));
        // The same ACLs in a whole snapshot: still the same `Arc`.
        let mut again = whole(3, vec![]);
        again.acls = vec![deny.clone()];
        assert!(Arc::ptr_eq(&v2.apply(again).unwrap().acls, &v1.acls));
        // No ACLs in a delta that does not say unchanged: none left.
        assert!(v2.apply(delta(4, vec![], &[])).unwrap().acls.is_empty());

        // A whole snapshot cannot refer to ACLs before it.
        let mut bad = whole(5, vec![]);
        bad.acls_unchanged = true;
        assert!(v2.apply(bad).is_err());
        // A deny this version cannot read is not skipped.
        let mut unknown = whole(5, vec![]);
        unknown.acls = vec![AclBinding {
            operation: 42,
            ..deny
        }];
        let e = v2.apply(unknown).unwrap_err();
        assert!(e.0.contains("unknown ACL operation 42"), "{e}");
    }

    #[test]
    fn a_delta_replaces_named_topics_and_shares_the_rest() {
        let v1 =
            ClusterView::from_wire(whole(3, vec![topic("a", 1), topic("c", 1), topic("e", 1)]))
                .unwrap();
        let mut md = delta(5, vec![topic("b", 2), topic("c", 4)], &["e"]);
        md.cluster_id = "cl".into();
        let v2 = v1.apply(md).unwrap();
        assert_eq!(names(&v2), [("a", 1), ("b", 2), ("c", 4)]);
        assert_eq!((v2.version, v2.cluster_id.as_str()), (5, "cl"));
        assert!(Arc::ptr_eq(&v1.topics["a"], &v2.topics["a"]));
        // The first partition of "c" is equal to the one held: shared.
        assert!(Arc::ptr_eq(
            &v1.topics["c"].partitions[0],
            &v2.topics["c"].partitions[0]
        ));
        assert_eq!(
            v2.changes_since(&v1),
            Changes {
                whole_topics: vec!["b".into(), "e".into()],
                partitions: vec![("c".into(), 1), ("c".into(), 2), ("c".into(), 3)],
            }
        );
        // The view before is untouched.
        assert_eq!(names(&v1), [("a", 1), ("c", 1), ("e", 1)]);
    }

    #[test]
    fn a_partial_topic_replaces_only_its_listed_partitions() {
        let v1 = ClusterView::from_wire(whole(3, vec![topic("t", 10_000), topic("u", 5)])).unwrap();
        let mut t = topic("t", 0);
        t.partial = true;
        t.partitions = vec![partition(7, 2), partition(10_000, 1)];
        let v2 = v1.apply(delta(4, vec![t], &[])).unwrap();
        let (a, b) = (&v1.topics["t"], &v2.topics["t"]);
        assert_eq!(b.partitions.len(), 10_001);
        assert_eq!(b.partition(7).unwrap().leader, 2);
        let shared = a
            .partitions
            .iter()
            .zip(&b.partitions)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, 9_999);
        assert!(Arc::ptr_eq(&v1.topics["u"], &v2.topics["u"]));
        assert_eq!(
            v2.changes_since(&v1),
            Changes {
                whole_topics: vec![],
                partitions: vec![("t".into(), 7), ("t".into(), 10_000)],
            }
        );
        assert!(v2.changes_since(&v2.clone()).is_empty());
    }

    #[test]
    fn a_whole_snapshot_shares_what_it_has_equal_with_the_view_before() {
        let v1 = ClusterView::from_wire(whole(3, vec![topic("a", 3), topic("b", 3)])).unwrap();
        let mut b = topic("b", 3);
        b.partitions[1].leader_epoch = 2;
        let mut c = topic("a", 3);
        c.name = "c".into();
        let v2 = v1.apply(whole(9, vec![topic("a", 3), b, c])).unwrap();
        assert!(Arc::ptr_eq(&v1.topics["a"], &v2.topics["a"]));
        assert!(Arc::ptr_eq(
            &v1.topics["b"].partitions[0],
            &v2.topics["b"].partitions[0]
        ));
        assert!(!Arc::ptr_eq(
            &v1.topics["b"].partitions[1],
            &v2.topics["b"].partitions[1]
        ));
        assert_eq!(
            v2.changes_since(&v1),
            Changes {
                whole_topics: vec!["c".into()],
                partitions: vec![("b".into(), 1)],
            }
        );
        // A topic re-created under the same name is looked at whole.
        let mut recreated = topic("a", 3);
        recreated.topic_id = "id-a2".into();
        let v3 = v2.apply(delta(10, vec![recreated], &[])).unwrap();
        assert_eq!(v3.changes_since(&v2).whole_topics, ["a"]);
        assert_eq!(v3.to_wire().topics.len(), 3);
    }

    #[test]
    fn messages_that_cannot_follow_the_view_are_refused() {
        let v1 = ClusterView::from_wire(whole(3, vec![topic("t", 2)])).unwrap();
        let partial = |name: &str, id: &str, p: u32| {
            let mut t = topic(name, 0);
            t.topic_id = id.into();
            t.partial = true;
            t.partitions = vec![partition(p, 1)];
            t
        };
        assert!(
            v1.apply(delta(4, vec![partial("x", "id-x", 0)], &[]))
                .is_err()
        );
        assert!(
            v1.apply(delta(4, vec![partial("t", "other", 0)], &[]))
                .is_err()
        );
        assert!(
            v1.apply(delta(4, vec![partial("t", "id-t", 3)], &[]))
                .is_err()
        );
        assert!(v1.apply(whole(4, vec![partial("t", "id-t", 0)])).is_err());
        let mut gap = topic("g", 2);
        gap.partitions[1].partition = 5;
        assert!(v1.apply(whole(4, vec![gap])).is_err());
        assert!(
            v1.apply(delta(4, vec![partial("t", "id-t", 2)], &[]))
                .is_ok()
        );
    }
}
