//! Kafka's compression codecs compared on the same data: the batch size
//! each gives (compressed / uncompressed), and the throughput of building
//! a batch with it (compressing; uncompressed MiB per second) and of
//! validating one (decompressing and checking every record).
//!
//! `cargo bench -p streambus-record --bench codecs` first prints one line
//! per codec with its figures and its throughput as a ratio against lz4
//! (the codec StreamBus had first), measured in the same run, interleaved
//! in rounds; then runs the criterion groups (skipped if
//! `STREAMBUS_BENCH_RATIO_ONLY` is set).
//!
//! The data: 1 MiB batches of 1 KiB JSON-like event records (field names
//! repeat, ids, numbers and words vary, from a fixed-seed generator), the
//! kind of payload that is compressed in practice; and a batch of random
//! bytes (incompressible) for the worst case.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use streambus_record::{BatchBuilder, Compression, Record, validate_batch};

const BATCH: usize = 1 << 20;
const VALUE: usize = 1024;

/// A small fixed-seed generator (xorshift64*), so every run uses the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: [&str; 16] = [
    "checkout", "search", "login", "logout", "cart", "payment", "refund", "view", "click",
    "scroll", "signup", "share", "rating", "comment", "upload", "error",
];

/// A ~1 KiB JSON event.
fn event(rng: &mut Rng) -> Vec<u8> {
    let mut s = String::with_capacity(VALUE + 64);
    while s.len() < VALUE {
        s.push_str(&format!(
            r#"{{"event":"{}","user":"user-{:06}","session":"{:016x}","amount":{}.{:02},"ok":{}}}"#,
            WORDS[rng.below(16) as usize],
            rng.below(100_000),
            rng.next(),
            rng.below(10_000),
            rng.below(100),
            rng.below(2) == 0,
        ));
    }
    s.truncate(VALUE);
    s.into_bytes()
}

fn records(random: bool) -> Vec<Record> {
    let mut rng = Rng(0x5EED_CAFE_F00D_BEEF);
    (0..BATCH / VALUE)
        .map(|i| Record {
            key: Some(Bytes::from(format!("user-{:06}", rng.below(100_000)))),
            value: Some(Bytes::from(if random {
                (0..VALUE).map(|_| rng.next() as u8).collect()
            } else {
                event(&mut rng)
            })),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn builder(codec: Compression, records: &[Record]) -> BatchBuilder {
    let mut b = BatchBuilder::new(codec);
    for r in records {
        b.push(r);
    }
    b
}

/// Per codec: (batch bytes, build seconds, validate seconds) over `rounds`
/// interleaved rounds of `reps` each.
fn measure(records: &[Record], rounds: usize, reps: usize) -> Vec<(Compression, usize, f64, f64)> {
    let builders: Vec<_> = Compression::ALL
        .iter()
        .map(|&c| (c, builder(c, records)))
        .collect();
    let mut out: Vec<_> = builders
        .iter()
        .map(|(c, b)| (*c, b.build().len(), 0.0, 0.0))
        .collect();
    for _ in 0..rounds {
        for (i, (_, b)) in builders.iter().enumerate() {
            let started = Instant::now();
            let mut batch = Bytes::new();
            for _ in 0..reps {
                batch = black_box(b.build());
            }
            out[i].2 += started.elapsed().as_secs_f64();
            let started = Instant::now();
            for _ in 0..reps {
                black_box(validate_batch(&batch).unwrap());
            }
            out[i].3 += started.elapsed().as_secs_f64();
        }
    }
    out
}

fn report(name: &str, records: &[Record]) {
    let (rounds, reps) = (5, 4);
    let raw = builder(Compression::None, records).estimated_size() as f64;
    let mib = raw * (rounds * reps) as f64 / (1 << 20) as f64;
    let results = measure(records, rounds, reps);
    let lz4 = results
        .iter()
        .find(|r| r.0 == Compression::Lz4)
        .copied()
        .expect("lz4 measured");
    println!(
        "{name}: {:.0} KiB uncompressed batch; throughput in MiB/s of uncompressed records",
        raw / 1024.0
    );
    println!("codec    size_ratio  build_MiB/s  validate_MiB/s  build_vs_lz4  validate_vs_lz4");
    for (codec, size, build, validate) in &results {
        println!(
            "{:<8} {:>10.3} {:>12.0} {:>15.0} {:>13.2} {:>16.2}",
            codec.name(),
            *size as f64 / raw,
            mib / build,
            mib / validate,
            lz4.2 / build,
            lz4.3 / validate,
        );
    }
}

fn criterion_groups(c: &mut Criterion) {
    let records = records(false);
    let mut g = c.benchmark_group("codec_build");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(BATCH as u64));
    for codec in Compression::ALL {
        let b = builder(codec, &records);
        g.bench_with_input(BenchmarkId::from_parameter(codec), &b, |bench, b| {
            bench.iter(|| black_box(b.build()))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("codec_validate");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(BATCH as u64));
    for codec in Compression::ALL {
        let batch = builder(codec, &records).build();
        g.bench_with_input(
            BenchmarkId::from_parameter(codec),
            &batch,
            |bench, batch| bench.iter(|| black_box(validate_batch(batch).unwrap())),
        );
    }
    g.finish();
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        let records = records(false);
        for (codec, size, _, _) in measure(&records[..64], 1, 1) {
            assert!(size > 0, "{codec}");
        }
        return;
    }
    report("json events", &records(false));
    report("random bytes", &records(true));
    if std::env::var_os("STREAMBUS_BENCH_RATIO_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    criterion_groups(&mut c);
    c.final_summary();
}
