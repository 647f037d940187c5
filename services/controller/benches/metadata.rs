//! Controller metadata benchmark: the cost of one partition change on a
//! cluster of 10 topics x 10,000 partitions (replication factor 3 over 3
//! storage nodes).
//!
//! `cargo bench -p streambus-controller --bench metadata` measures, per
//! iteration:
//! - `clone_snapshot`: cloning the metadata as the state machine publishes
//!   it after every applied entry;
//! - `alter_isr` / `leader_change`: applying one `AlterIsr` /
//!   `ChangePartitions` entry to a copy that shares everything with a
//!   published snapshot (so whatever the change copies is paid for);
//! - `watch_delta`: the watch message for the `AlterIsr` change (computed
//!   against the snapshot before it) and its protobuf encoding, for a
//!   watcher that accepts partition deltas; `watch_delta_whole_topics` for
//!   one that takes changed topics whole.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use prost::Message;
use streambus_cluster::topic_config::TopicConfig;
use streambus_controller::metadata::{Command, CommandResponse, Dirty, Metadata, PartitionChange};

const TOPICS: usize = 10;
const PARTITIONS: u32 = 10_000;
const NODES: u64 = 3;
const RF: u32 = 3;
/// The topic and partition the changes touch.
const TOPIC: &str = "topic-5";
const PARTITION: u32 = 4_321;

fn apply(m: &mut Metadata, command: &Command) -> CommandResponse {
    let index = m.version + 1;
    m.apply(index, command, &mut Dirty::default())
}

/// The published metadata: `NODES` registered nodes, `TOPICS` topics of
/// `PARTITIONS` partitions each.
fn cluster() -> Arc<Metadata> {
    let mut m = Metadata::default();
    for node_id in 1..=NODES {
        let r = apply(
            &mut m,
            &Command::RegisterNode {
                node_id,
                address: format!("10.0.0.{node_id}:7500"),
                incarnation: node_id,
                directory_id: format!("dir-{node_id}"),
                rack: String::new(),
                max_partitions: 0,
            },
        );
        assert_eq!(r, CommandResponse::Ok);
    }
    for t in 0..TOPICS {
        let r = apply(
            &mut m,
            &Command::CreateTopic {
                name: format!("topic-{t}"),
                partitions: PARTITIONS,
                replication_factor: RF,
                configs: TopicConfig::default().to_btree_map(),
                topic_id: Some(format!("{t:032x}")),
            },
        );
        assert!(matches!(r, CommandResponse::Topic(_)), "{r:?}");
    }
    Arc::new(m)
}

/// The leader of `TOPIC`/`PARTITION` drops its last follower from the ISR.
fn alter_isr(m: &Metadata) -> Command {
    let t = &m.topics[TOPIC];
    let p = &t.partitions[PARTITION as usize];
    Command::AlterIsr {
        topic: TOPIC.to_string(),
        topic_id: t.topic_id.clone(),
        partition: PARTITION,
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr: p.isr[..p.isr.len() - 1].to_vec(),
    }
}

/// Leadership of `TOPIC`/`PARTITION` moves to its second replica.
fn leader_change(m: &Metadata) -> Command {
    let t = &m.topics[TOPIC];
    let p = &t.partitions[PARTITION as usize];
    Command::ChangePartitions {
        changes: vec![PartitionChange {
            topic: TOPIC.to_string(),
            topic_id: t.topic_id.clone(),
            partition: PARTITION,
            partition_epoch: p.partition_epoch,
            leader: p.replicas[1],
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
        }],
    }
}

fn benches(c: &mut Criterion) {
    let published = cluster();
    let mut g = c.benchmark_group("metadata_10x10000");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    g.bench_function("clone_snapshot", |b| {
        b.iter(|| Arc::new(Metadata::clone(black_box(&published))));
    });

    for (name, command) in [
        ("alter_isr", alter_isr(&published)),
        ("leader_change", leader_change(&published)),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || Metadata::clone(&published),
                |mut m| {
                    let r = apply(&mut m, black_box(&command));
                    assert!(!matches!(r, CommandResponse::Rejected { .. }), "{r:?}");
                    m
                },
                BatchSize::SmallInput,
            );
        });
    }

    let mut after = Metadata::clone(&published);
    apply(&mut after, &alter_isr(&published));
    for (name, partition_deltas) in [("watch_delta", true), ("watch_delta_whole_topics", false)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let delta = black_box(&after).to_cluster_metadata_delta(
                    &published,
                    1,
                    "c1:7400",
                    partition_deltas,
                );
                delta.encode_to_vec()
            });
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
