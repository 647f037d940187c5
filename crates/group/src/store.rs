//! The records that persist groups in the groups topic, a compacted
//! topic: a group's record (key: the group) holds its members, epochs and
//! assignments; an offset record (key: group, topic, partition) one
//! committed offset. A record without a value (a tombstone) deletes its
//! key. The latest record of each key is the state, so compaction keeps
//! exactly what a coordinator needs to load.
//!
//! Keys are binary and length-prefixed (any group or topic name is
//! unambiguous); values are JSON. Both layouts, and the group-to-partition
//! mapping ([`partition_for`]), are persisted and must never change
//! incompatibly.

use std::collections::HashMap;

use crate::{Committed, Group, Limits, Tp};

const GROUP: u8 = 1;
const OFFSET: u8 = 2;

/// One record of the groups topic.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Group {
        group: String,
        /// `None`: the group was deleted.
        value: Option<Box<GroupValue>>,
    },
    Offset {
        group: String,
        tp: Tp,
        /// `None`: the offset was deleted.
        value: Option<Committed>,
    },
}

/// What a group record holds: the group without its offsets.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupValue(pub String);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("groups topic record with a bad key: {0}")]
    BadKey(String),
    #[error("groups topic record with a bad value for {key}: {error}")]
    BadValue { key: String, error: String },
}

/// The groups topic's partition that holds `group`: FNV-1a over its
/// bytes, modulo the partition count.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (b.get(..n)?, b.get(n..)?);
    *b = rest;
    Some(head)
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?))
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let n = take_u32(b)? as usize;
    String::from_utf8(take(b, n)?.to_vec()).ok()
}

/// A group record's key.
pub fn group_key(group: &str) -> Vec<u8> {
    let mut k = vec![GROUP];
    put_str(&mut k, group);
    k
}

/// An offset record's key.
pub fn offset_key(group: &str, tp: &Tp) -> Vec<u8> {
    let mut k = vec![OFFSET];
    put_str(&mut k, group);
    put_str(&mut k, &tp.topic);
    k.extend_from_slice(&tp.partition.to_be_bytes());
    k
}

impl Record {
    /// The record for a group as it is now.
    pub fn group(g: &Group) -> Record {
        Record::Group {
            group: g.id.clone(),
            value: Some(Box::new(GroupValue(
                serde_json::to_string(g).expect("a group serializes"),
            ))),
        }
    }

    /// Key and value (`None`: a tombstone).
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Record::Group { group, value } => (
                group_key(group),
                value.as_ref().map(|v| v.0.clone().into_bytes()),
            ),
            Record::Offset { group, tp, value } => (
                offset_key(group, tp),
                value
                    .as_ref()
                    .map(|c| serde_json::to_vec(c).expect("an offset serializes")),
            ),
        }
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, StoreError> {
        let bad_key = || StoreError::BadKey(format!("{key:?}"));
        let mut b = key;
        let kind = take(&mut b, 1).ok_or_else(bad_key)?[0];
        let group = take_str(&mut b).ok_or_else(bad_key)?;
        let record = match kind {
            GROUP => {
                let value = value
                    .map(|v| {
                        std::str::from_utf8(v)
                            .map(|s| Box::new(GroupValue(s.to_string())))
                            .map_err(|e| StoreError::BadValue {
                                key: format!("group {group}"),
                                error: e.to_string(),
                            })
                    })
                    .transpose()?;
                Record::Group { group, value }
            }
            OFFSET => {
                let topic = take_str(&mut b).ok_or_else(bad_key)?;
                let partition = take_u32(&mut b).ok_or_else(bad_key)?;
                let tp = Tp { topic, partition };
                let value = value
                    .map(|v| {
                        serde_json::from_slice(v).map_err(|e| StoreError::BadValue {
                            key: format!("offset of {group} at {tp}"),
                            error: e.to_string(),
                        })
                    })
                    .transpose()?;
                Record::Offset { group, tp, value }
            }
            _ => return Err(bad_key()),
        };
        if !b.is_empty() {
            return Err(bad_key());
        }
        Ok(record)
    }
}

/// The groups of one partition of the groups topic, as its records leave
/// them: what a coordinator loads when it starts leading the partition.
#[derive(Default)]
pub struct Loader {
    groups: HashMap<String, Group>,
}

impl Loader {
    /// Applies the next record, in log order.
    pub fn apply(&mut self, record: Record) -> Result<(), StoreError> {
        match record {
            Record::Group { group, value: None } => {
                self.groups.remove(&group);
            }
            Record::Group {
                group,
                value: Some(v),
            } => {
                let mut g: Group =
                    serde_json::from_str(&v.0).map_err(|e| StoreError::BadValue {
                        key: format!("group {group}"),
                        error: e.to_string(),
                    })?;
                if let Some(old) = self.groups.remove(&group) {
                    g.offsets = old.offsets;
                }
                self.groups.insert(group, g);
            }
            Record::Offset { group, tp, value } => match value {
                Some(c) => {
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| {
                            let mut g = Group::new(group, 0);
                            g.empty_since_ms = None;
                            g
                        })
                        .offsets
                        .insert(tp, c);
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&tp);
                    }
                }
            },
        }
        Ok(())
    }

    /// The groups loaded, their members' sessions starting at `now_ms`;
    /// a group known only from its offsets is empty since `now_ms`.
    pub fn finish(self, now_ms: u64, limits: &Limits) -> HashMap<String, Group> {
        self.groups
            .into_iter()
            .map(|(id, mut g)| {
                if g.members.is_empty() && g.empty_since_ms.is_none() {
                    g.empty_since_ms = Some(now_ms);
                }
                (id, g.restored(now_ms, limits))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Heartbeat, Subscription};

    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            metadata: String::new(),
            commit_ms: 5,
        }
    }

    #[test]
    fn records_round_trip_through_key_and_value() {
        let mut g = Group::new("g\u{0}odd name", 0);
        let topics: BTreeMap<String, u32> = [("t".to_string(), 2)].into();
        g.heartbeat(
            Heartbeat {
                member_id: "m".into(),
                member_epoch: 0,
                subscription: Some(Subscription::Topics(["t".to_string()].into())),
                ..Heartbeat::default()
            },
            0,
            &topics,
            &Limits::default(),
        )
        .unwrap();
        let records = [
            Record::group(&g),
            Record::Group {
                group: "g".into(),
                value: None,
            },
            Record::Offset {
                group: "g".into(),
                tp: Tp::new("a/b", 7),
                value: Some(Committed {
                    offset: 9,
                    metadata: "meta \"q\"".into(),
                    commit_ms: 1,
                }),
            },
            Record::Offset {
                group: "".into(),
                tp: Tp::new("", 0),
                value: None,
            },
        ];
        for r in records {
            let (k, v) = r.encode();
            assert_eq!(Record::decode(&k, v.as_deref()).unwrap(), r);
        }
    }

    #[test]
    fn bad_keys_and_values_are_errors() {
        assert!(Record::decode(&[], None).is_err());
        assert!(Record::decode(&[9, 0, 0, 0, 0], None).is_err());
        let mut k = offset_key("g", &Tp::new("t", 1));
        k.push(0);
        assert!(matches!(
            Record::decode(&k, None),
            Err(StoreError::BadKey(_))
        ));
        let k = offset_key("g", &Tp::new("t", 1));
        assert!(matches!(
            Record::decode(&k, Some(b"{")),
            Err(StoreError::BadValue { .. })
        ));
        let mut l = Loader::default();
        assert!(
            l.apply(Record::Group {
                group: "g".into(),
                value: Some(Box::new(GroupValue("[]".into())))
            })
            .is_err()
        );
    }

    #[test]
    fn loading_keeps_the_latest_record_of_each_key() {
        let limits = Limits::default();
        let mut l = Loader::default();
        let mut g = Group::new("g", 0);
        g.epoch = 3;
        let off = |group: &str, p, value| Record::Offset {
            group: group.into(),
            tp: Tp::new("t", p),
            value,
        };
        for r in [
            off("g", 0, Some(c(1))),
            Record::group(&g),
            off("g", 0, Some(c(2))),
            off("g", 1, Some(c(3))),
            off("g", 1, None),
            off("h", 0, Some(c(4))),
            off("dead", 0, Some(c(4))),
            Record::Group {
                group: "dead".into(),
                value: None,
            },
        ] {
            l.apply(r).unwrap();
        }
        let groups = l.finish(100, &limits);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups["g"].epoch, 3);
        assert_eq!(groups["g"].offsets.len(), 1);
        assert_eq!(groups["g"].offsets[&Tp::new("t", 0)].offset, 2);
        assert_eq!(groups["h"].offsets[&Tp::new("t", 0)].offset, 4);
        assert_eq!(groups["h"].empty_since_ms, Some(100));
    }

    #[test]
    fn groups_map_to_partitions_stably() {
        // Persisted: these values must never change.
        assert_eq!(partition_for("", 50), 0x811c_9dc5 % 50);
        assert_eq!(partition_for("orders", 1), 0);
        let a = partition_for("payments-consumer", 16);
        assert_eq!(a, partition_for("payments-consumer", 16));
        assert!(a < 16);
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_for(&format!("g{i}"), 16))
            .collect();
        assert_eq!(spread.len(), 16);
    }
}
