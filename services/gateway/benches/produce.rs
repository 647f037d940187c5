//! The gateway's produce planning, per record, without the network.
//!
//! `cargo bench -p streambus-gateway --bench produce`
//!
//! `records_keyed` / `records_keyless`: 1,000 records of 1 KiB sent one by
//! one (the gRPC path of clients without an SDK) split into batches for a
//! topic of 16 partitions and encoded. `encoded`: the SDK's path, one
//! client-encoded batch of the same 1,000 records checked. Throughput is
//! in records.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use streambus_gateway::produce::{check_encoded, plan_records};
use streambus_proto::v1;
use streambus_record::{BatchBuilder, Compression, Record};

const RECORDS: usize = 1_000;
const PARTITIONS: u32 = 16;
const MAX_BYTES: usize = 8 * 1024 * 1024;
const NOW_MS: i64 = 1_700_000_000_000;

fn records(keyed: bool) -> Vec<v1::Record> {
    let value = Bytes::from(vec![b'x'; 1024]);
    (0..RECORDS)
        .map(|i| v1::Record {
            key: keyed.then(|| Bytes::from(format!("key-{i}"))),
            value: Some(value.clone()),
            timestamp_ms: NOW_MS + i as i64,
            ..Default::default()
        })
        .collect()
}

fn plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("gateway_plan");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, keyed) in [("records_keyed", true), ("records_keyless", false)] {
        let input = records(keyed);
        group.bench_function(name, |b| {
            b.iter_batched(
                || input.clone(),
                |records| {
                    let writes =
                        plan_records("bench", None, PARTITIONS, 3, MAX_BYTES, records, NOW_MS)
                            .expect("valid records");
                    black_box(writes.len())
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    let mut builder = BatchBuilder::new(Compression::None);
    for r in records(false) {
        builder.push(&Record {
            key: r.key,
            value: r.value,
            headers: Vec::new(),
            timestamp_ms: r.timestamp_ms,
        });
    }
    let encoded = builder.finish();
    group.bench_function("encoded", |b| {
        b.iter(|| black_box(check_encoded(0, encoded.clone(), MAX_BYTES).expect("valid batch")))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    plan(&mut c);
    c.final_summary();
}
