//! The producer's per-record cost on the client, without the network.
//!
//! `cargo bench -p streambus-client --features bench-internals --bench producer`
//!
//! Each iteration sends 1,000 records of 1 KiB to a topic of 16
//! partitions through the producer's core (partitioning, the accumulator
//! under the producer's lock, batch sealing, encoding each batch as it is
//! sent, acknowledging it and resolving every record's delivery), keyless
//! and keyed. `encode_only` is the floor: the same records pushed into
//! 256 KiB batches with `BatchBuilder` alone. `keyed_2_threads` sends
//! 1,000 keyed records from each of two threads at once through one core,
//! as two tasks sharing a producer do (thread start included). Throughput
//! is in records.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use streambus_client::bench_internals::ProducerCore;
use streambus_record::{BatchBuilder, Compression, Record};

const RECORDS: usize = 1_000;
const PARTITIONS: u32 = 16;
const MAX_BATCH: usize = 256 * 1024;

fn records(keyed: bool) -> Vec<Record> {
    let value = Bytes::from(vec![b'x'; 1024]);
    (0..RECORDS)
        .map(|i| Record {
            key: keyed.then(|| Bytes::from(format!("key-{i}"))),
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn producer(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer_core");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let keyless = records(false);
    let keyed = records(true);

    group.bench_function("encode_only", |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::with_capacity(Compression::None, MAX_BATCH);
            let mut bytes = 0;
            for r in &keyless {
                builder.push(r);
                if builder.estimated_size() >= MAX_BATCH {
                    let full = std::mem::replace(
                        &mut builder,
                        BatchBuilder::with_capacity(Compression::None, MAX_BATCH),
                    );
                    bytes += full.finish().len();
                }
            }
            bytes += builder.finish().len();
            black_box(bytes)
        })
    });
    for (name, input) in [("keyless", &keyless), ("keyed", &keyed)] {
        let core = ProducerCore::new(MAX_BATCH);
        group.bench_function(name, |b| {
            b.iter(|| {
                let pending = input
                    .iter()
                    .map(|r| core.send("bench", PARTITIONS, r))
                    .collect();
                black_box(core.flush(pending))
            })
        });
    }
    group.throughput(Throughput::Elements(2 * RECORDS as u64));
    let other: Vec<Record> = keyed
        .iter()
        .map(|r| Record {
            key: r.key.as_ref().map(|k| Bytes::from(format!("other-{k:?}"))),
            ..r.clone()
        })
        .collect();
    let core = ProducerCore::new(MAX_BATCH);
    group.bench_function("keyed_2_threads", |b| {
        b.iter(|| {
            let pending: Vec<_> = std::thread::scope(|s| {
                let threads: Vec<_> = [&keyed, &other]
                    .into_iter()
                    .map(|input| {
                        let core = &core;
                        s.spawn(move || {
                            input
                                .iter()
                                .map(|r| core.send("bench", PARTITIONS, r))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .flat_map(|t| t.join().expect("sender thread"))
                    .collect()
            });
            black_box(core.flush(pending))
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    producer(&mut c);
    c.final_summary();
}
