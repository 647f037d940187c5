//! Partition sets as the gRPC API carries them: one `TopicPartitions` per
//! topic, in (topic, partition) order.

use std::collections::BTreeSet;

use streambus_proto::v1::TopicPartitions;

use crate::Tp;

pub fn to_wire(set: &BTreeSet<Tp>) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for tp in set {
        match out.last_mut() {
            Some(last) if last.topic == tp.topic => last.partitions.push(tp.partition),
            _ => out.push(TopicPartitions {
                topic: tp.topic.clone(),
                partitions: vec![tp.partition],
            }),
        }
    }
    out
}

pub fn from_wire(list: &[TopicPartitions]) -> BTreeSet<Tp> {
    list.iter()
        .flat_map(|t| t.partitions.iter().map(|&p| Tp::new(t.topic.clone(), p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lists_round_trip_grouped_by_topic() {
        let set: BTreeSet<Tp> = [Tp::new("a", 2), Tp::new("a", 0), Tp::new("b", 1)].into();
        let list = to_wire(&set);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].partitions, [0, 2]);
        assert_eq!(from_wire(&list), set);
    }
}
