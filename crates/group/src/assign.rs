//! Assignors: who should own which partition, as a pure function of the
//! members' subscriptions, the partition counts and (for `sticky`) the
//! assignment before.
//!
//! - `range`: per topic, the subscribers in member-id order get contiguous
//!   ranges of partitions (the first `count % subscribers` one more), so
//!   the same partition numbers of co-partitioned topics land on the same
//!   member. Kafka's `RangeAssignor`.
//! - `roundrobin`: every partition, in (topic, partition) order, goes to
//!   the next member in member-id order that subscribes to its topic.
//!   Kafka's `RoundRobinAssignor`.
//! - `sticky` (the default): balanced (no member subscribed to a topic has
//!   two more partitions than another that could take one of them), and
//!   every partition stays with the member that owned it unless balance
//!   needs it to move, so a rebalance moves as few partitions as it can.
//!   Kafka's `uniform` server-side assignor and `cooperative-sticky`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::Tp;

/// How partitions are spread over a group's members.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Assignor {
    Range,
    #[serde(rename = "roundrobin")]
    RoundRobin,
    #[default]
    Sticky,
}

impl Assignor {
    pub const ALL: [Assignor; 3] = [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky];

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::Sticky => "sticky",
        }
    }

    pub fn parse(s: &str) -> Option<Assignor> {
        Assignor::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The target assignment: an entry for every member (empty when it
    /// gets nothing). Partitions of topics no member subscribes to, and
    /// topics that do not exist, are not assigned.
    pub fn assign(
        self,
        members: &BTreeMap<String, BTreeSet<String>>,
        partitions: &BTreeMap<String, u32>,
        previous: &BTreeMap<String, BTreeSet<Tp>>,
    ) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut out: BTreeMap<String, BTreeSet<Tp>> = members
            .keys()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        match self {
            Assignor::Range => range(members, partitions, &mut out),
            Assignor::RoundRobin => round_robin(members, partitions, &mut out),
            Assignor::Sticky => sticky(members, partitions, previous, &mut out),
        }
        out
    }
}

/// Each topic's subscribers, in member-id order.
fn subscribers<'a>(
    members: &'a BTreeMap<String, BTreeSet<String>>,
    partitions: &'a BTreeMap<String, u32>,
) -> impl Iterator<Item = (&'a String, u32, Vec<&'a String>)> + 'a {
    partitions.iter().filter_map(|(topic, &count)| {
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        (!subs.is_empty()).then_some((topic, count, subs))
    })
}

fn range(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, BTreeSet<Tp>>,
) {
    for (topic, count, subs) in subscribers(members, partitions) {
        let n = subs.len() as u32;
        let (base, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subs.into_iter().enumerate() {
            let take = base + u32::from((i as u32) < extra);
            let set = out.get_mut(m).expect("every member has an entry");
            set.extend((next..next + take).map(|p| Tp::new(topic.clone(), p)));
            next += take;
        }
    }
}

fn round_robin(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, BTreeSet<Tp>>,
) {
    let order: Vec<&String> = members.keys().collect();
    if order.is_empty() {
        return;
    }
    let mut cursor = 0;
    for (topic, &count) in partitions {
        if !members.values().any(|t| t.contains(topic)) {
            continue;
        }
        for p in 0..count {
            // The next member in the circle that subscribes to the topic:
            // there is one, so this ends within a turn.
            loop {
                let m = order[cursor % order.len()];
                cursor += 1;
                if members[m].contains(topic) {
                    out.get_mut(m)
                        .expect("every member has an entry")
                        .insert(Tp::new(topic.clone(), p));
                    break;
                }
            }
        }
    }
}

fn sticky(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, BTreeSet<Tp>>,
    out: &mut BTreeMap<String, BTreeSet<Tp>>,
) {
    // Each topic's subscribers.
    let subs: HashMap<&String, Vec<&String>> = subscribers(members, partitions)
        .map(|(t, _, s)| (t, s))
        .collect();
    let eligible = |m: &str, tp: &Tp| members.get(m).is_some_and(|t| t.contains(&tp.topic));
    let exists = |tp: &Tp| partitions.get(&tp.topic).is_some_and(|&c| tp.partition < c);

    // 1. Every partition stays with its previous owner while that member is
    //    still here, still subscribes to its topic and the partition exists.
    let mut placed: HashSet<Tp> = HashSet::new();
    for (m, owned) in previous {
        for tp in owned {
            if eligible(m, tp) && exists(tp) && placed.insert(tp.clone()) {
                out.get_mut(m)
                    .expect("eligible members have an entry")
                    .insert(tp.clone());
            }
        }
    }

    // 2. The others, most constrained first, each to the least loaded
    //    member that may take it (ties in member-id order).
    let mut fresh: Vec<Tp> = subs
        .keys()
        .flat_map(|t| (0..partitions[*t]).map(|p| Tp::new((*t).clone(), p)))
        .filter(|tp| !placed.contains(tp))
        .collect();
    fresh.sort_by(|a, b| {
        subs[&a.topic]
            .len()
            .cmp(&subs[&b.topic].len())
            .then_with(|| a.cmp(b))
    });
    for tp in &fresh {
        let to = subs[&tp.topic]
            .iter()
            .min_by_key(|m| (out[**m].len(), **m))
            .expect("a topic in `subs` has a subscriber");
        out.get_mut(*to).expect("entry").insert(tp.clone());
    }
    let fresh: HashSet<Tp> = fresh.into_iter().collect();

    // 3. Balance: move a partition from a member to one that may take it
    //    and has at least two fewer, until no such move exists. Each move
    //    lowers the sum of squared loads, so this ends. Partitions placed
    //    in step 2 move first: moving them costs no one anything.
    loop {
        let mut donors: Vec<(&String, usize)> = out.iter().map(|(m, s)| (m, s.len())).collect();
        donors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut moved = None;
        'donors: for (donor, load) in donors {
            if load < 2 {
                break;
            }
            let owned = &out[donor];
            let candidates = owned
                .iter()
                .rev()
                .filter(|tp| fresh.contains(*tp))
                .chain(owned.iter().rev().filter(|tp| !fresh.contains(*tp)));
            for tp in candidates {
                let to = subs[&tp.topic]
                    .iter()
                    .filter(|m| **m != donor && out[**m].len() + 2 <= load)
                    .min_by_key(|m| (out[**m].len(), **m));
                if let Some(to) = to {
                    moved = Some((donor.clone(), (*to).clone(), tp.clone()));
                    break 'donors;
                }
            }
        }
        let Some((from, to, tp)) = moved else { break };
        out.get_mut(&from).expect("entry").remove(&tp);
        out.get_mut(&to).expect("entry").insert(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        spec.iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn counts(spec: &[(&str, u32)]) -> BTreeMap<String, u32> {
        spec.iter().map(|(t, c)| (t.to_string(), *c)).collect()
    }

    fn show(a: &BTreeMap<String, BTreeSet<Tp>>) -> BTreeMap<String, Vec<String>> {
        a.iter()
            .map(|(m, s)| (m.clone(), s.iter().map(Tp::to_string).collect()))
            .collect()
    }

    fn loads(a: &BTreeMap<String, BTreeSet<Tp>>) -> Vec<usize> {
        a.values().map(BTreeSet::len).collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic_and_co_partitions() {
        let m = members(&[("a", &["x", "y"]), ("b", &["x", "y"]), ("c", &["x"])]);
        let a = Assignor::Range.assign(&m, &counts(&[("x", 7), ("y", 4)]), &BTreeMap::new());
        let s = show(&a);
        assert_eq!(s["a"], ["x/0", "x/1", "x/2", "y/0", "y/1"]);
        assert_eq!(s["b"], ["x/3", "x/4", "y/2", "y/3"]);
        assert_eq!(s["c"], ["x/5", "x/6"]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn_skipping_non_subscribers() {
        let m = members(&[("a", &["x", "y"]), ("b", &["x"]), ("c", &["x", "y"])]);
        let a = Assignor::RoundRobin.assign(&m, &counts(&[("x", 4), ("y", 3)]), &BTreeMap::new());
        let s = show(&a);
        assert_eq!(s["a"], ["x/0", "x/3", "y/1"]);
        assert_eq!(s["b"], ["x/1"]);
        assert_eq!(s["c"], ["x/2", "y/0", "y/2"]);
    }

    #[test]
    fn every_assignor_covers_each_subscribed_partition_once_and_nothing_else() {
        let m = members(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["z-missing"])]);
        let c = counts(&[("x", 5), ("y", 3), ("unsubscribed", 9)]);
        for assignor in Assignor::ALL {
            let a = assignor.assign(&m, &c, &BTreeMap::new());
            assert_eq!(a.len(), 3, "{assignor:?}: every member has an entry");
            let mut all: Vec<&Tp> = a.values().flatten().collect();
            all.sort();
            let want: Vec<Tp> = (0..5)
                .map(|p| Tp::new("x", p))
                .chain((0..3).map(|p| Tp::new("y", p)))
                .collect();
            assert_eq!(all, want.iter().collect::<Vec<_>>(), "{assignor:?}");
            assert!(a["a"].iter().all(|tp| tp.topic == "x"), "{assignor:?}");
            assert!(a["c"].is_empty(), "{assignor:?}");
        }
    }

    #[test]
    fn sticky_moves_only_what_balance_needs_when_a_member_joins() {
        let before = Assignor::Sticky.assign(
            &members(&[("a", &["t"]), ("b", &["t"])]),
            &counts(&[("t", 12)]),
            &BTreeMap::new(),
        );
        assert_eq!(loads(&before), [6, 6]);
        let after = Assignor::Sticky.assign(
            &members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]),
            &counts(&[("t", 12)]),
            &before,
        );
        assert_eq!(loads(&after), [4, 4, 4]);
        // Two moved from each of a and b, nothing else.
        assert!(after["a"].is_subset(&before["a"]));
        assert!(after["b"].is_subset(&before["b"]));
    }

    #[test]
    fn sticky_hands_a_leaving_members_partitions_to_the_others_and_moves_nothing_else() {
        let m3 = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let before = Assignor::Sticky.assign(&m3, &counts(&[("t", 12)]), &BTreeMap::new());
        let m2 = members(&[("a", &["t"]), ("c", &["t"])]);
        let after = Assignor::Sticky.assign(&m2, &counts(&[("t", 12)]), &before);
        assert_eq!(loads(&after), [6, 6]);
        assert!(before["a"].is_subset(&after["a"]));
        assert!(before["c"].is_subset(&after["c"]));
    }

    #[test]
    fn sticky_places_added_partitions_without_moving_owned_ones() {
        let m = members(&[("a", &["t"]), ("b", &["t"])]);
        let before = Assignor::Sticky.assign(&m, &counts(&[("t", 4)]), &BTreeMap::new());
        let after = Assignor::Sticky.assign(&m, &counts(&[("t", 6)]), &before);
        assert_eq!(loads(&after), [3, 3]);
        assert!(before["a"].is_subset(&after["a"]));
        assert!(before["b"].is_subset(&after["b"]));
    }

    #[test]
    fn sticky_balances_members_with_different_subscriptions() {
        // b alone may take y, so a and c share x around it.
        let m = members(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["x"])]);
        let a = Assignor::Sticky.assign(&m, &counts(&[("x", 6), ("y", 2)]), &BTreeMap::new());
        assert_eq!(a["b"].iter().filter(|tp| tp.topic == "y").count(), 2);
        let l = loads(&a);
        assert!(
            l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
            "{l:?}"
        );
    }

    #[test]
    fn sticky_drops_partitions_of_topics_a_member_no_longer_subscribes_to() {
        let before = Assignor::Sticky.assign(
            &members(&[("a", &["x", "y"]), ("b", &["x"])]),
            &counts(&[("x", 2), ("y", 2)]),
            &BTreeMap::new(),
        );
        let after = Assignor::Sticky.assign(
            &members(&[("a", &["x"]), ("b", &["x"])]),
            &counts(&[("x", 2), ("y", 2)]),
            &before,
        );
        assert!(after.values().flatten().all(|tp| tp.topic == "x"));
        assert_eq!(loads(&after), [1, 1]);
    }

    #[test]
    fn assignor_names_round_trip() {
        for a in Assignor::ALL {
            assert_eq!(Assignor::parse(a.name()), Some(a));
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.name())
            );
        }
        assert_eq!(Assignor::parse("uniform"), None);
    }
}
