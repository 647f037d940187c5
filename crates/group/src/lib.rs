//! Consumer groups without I/O.
//!
//! A group's coordinator (the storage node leading the group's partition
//! of the internal groups topic) feeds a [`Group`] the heartbeats of its
//! members, the passing of time and the topics' partition counts, and gets
//! back each member's assignment. The protocol follows Kafka's KIP-848:
//! the coordinator computes the target assignment (`assign`), and moves
//! each member towards it incrementally: a partition that moves is first
//! revoked from its owner, which acknowledges by reporting it no longer
//! owns it, and only then handed to its new owner, so no partition ever has
//! two owners. Member epochs fence zombies: a member that was removed (its
//! session ran out) or that answers with an epoch it no longer has can
//! neither heartbeat nor commit.
//!
//! [`store`] turns a group's changes into the records the coordinator
//! writes to the groups topic, and those records back into groups when a
//! new coordinator loads the partition.

pub mod assign;
mod group;
pub mod store;
pub mod wire;

pub use assign::Assignor;
pub use group::{
    Committed, Group, GroupError, GroupState, Heartbeat, HeartbeatResponse, Limits, Member,
    MemberState, Subscription, TopicPattern, Topics,
};

use serde::{Deserialize, Serialize};

/// The internal, compacted topic holding groups and committed offsets.
pub const TOPIC: &str = "__groups";

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tp {
    pub topic: String,
    pub partition: u32,
}

impl Tp {
    pub fn new(topic: impl Into<String>, partition: u32) -> Tp {
        Tp {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for Tp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}
