//! The consumer's per-record cost on the client, without the network.
//!
//! `cargo bench -p streambus-client --features bench-internals --bench consumer`
//!
//! Each iteration decodes one response of 1,000 records of 1 KiB with one
//! header each (4 stored batches of 250) and reads every record's value
//! and header: `owned` takes each record as a `ConsumedRecord`, as the
//! record stream yields them; `borrowed` reads `RecordRef`s from
//! `ConsumedBatch::records`, as `Subscription::next_batch` lends them.
//! `decode_shared_records` is the record crate's owned decoder alone, for
//! comparison.
//! Throughput is in records.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use streambus_client::bench_internals::decode_batches;
use streambus_record::{
    BatchBuilder, BatchIter, Compression, Header, Record, decode_shared_records, set_base_offset,
};

const RECORDS: usize = 1_000;
const PER_BATCH: usize = 250;

fn response() -> Bytes {
    let value = Bytes::from(vec![b'x'; 1024]);
    let mut out = Vec::new();
    for b in 0..RECORDS / PER_BATCH {
        let mut builder = BatchBuilder::new(Compression::None);
        for i in 0..PER_BATCH {
            builder.push(&Record {
                key: None,
                value: Some(value.clone()),
                headers: vec![Header {
                    key: "trace".into(),
                    value: Some(Bytes::from(format!("{b}-{i}"))),
                }],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            });
        }
        let mut bytes = builder.build().to_vec();
        set_base_offset(&mut bytes, (b * PER_BATCH) as i64);
        out.extend_from_slice(&bytes);
    }
    Bytes::from(out)
}

fn consumer(c: &mut Criterion) {
    let mut group = c.benchmark_group("consumer_decode");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let encoded = response();
    group.bench_function("owned", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for batch in decode_batches(0, &encoded).expect("valid") {
                for r in batch {
                    bytes += r.value.as_ref().map_or(0, Bytes::len);
                    bytes += r.headers.len();
                    black_box(&r);
                }
            }
            black_box(bytes)
        })
    });
    group.bench_function("decode_shared_records", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for batch in BatchIter::new(&encoded) {
                let (_, batch) = batch.expect("valid");
                for r in decode_shared_records(&encoded.slice_ref(batch)).expect("valid") {
                    bytes += r.value.as_ref().map_or(0, Bytes::len);
                    bytes += r.headers.len();
                    black_box(&r);
                }
            }
            black_box(bytes)
        })
    });
    group.bench_function("borrowed", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for batch in decode_batches(0, &encoded).expect("valid") {
                for r in batch.records() {
                    bytes += r.value.map_or(0, <[u8]>::len);
                    bytes += r.headers().len();
                    black_box(&r);
                }
            }
            black_box(bytes)
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    consumer(&mut c);
    c.final_summary();
}
