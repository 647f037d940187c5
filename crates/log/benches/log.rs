//! Storage engine benchmark: log appends with `FsyncPolicy::Always` against
//! raw `write + fdatasync` of the same sizes, and sequential reads of a
//! sealed segment against raw `pread`s of the same file, on the same disk.
//!
//! `cargo bench -p streambus-log --bench log` first prints `ratio` lines
//! (log throughput / raw throughput, measured interleaved in blocks so both
//! sides see the same disk conditions), then runs the criterion groups
//! (skipped if `STREAMBUS_BENCH_RATIO_ONLY` is set). The scratch directory is
//! `$STREAMBUS_BENCH_DIR`, else `$CARGO_TARGET_DIR/bench-tmp`, else
//! `target/bench-tmp` (the same filesystem as the build).

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use streambus_log::{FsyncPolicy, Log, LogConfig};
use streambus_record::{BatchBuilder, Compression, Record};

const RECORD: usize = 1024;
const SIZES: [(usize, &str); 3] = [
    (16 << 10, "16KiB"),
    (256 << 10, "256KiB"),
    (1 << 20, "1MiB"),
];
const READ_CHUNK: usize = 1 << 20;
const SEGMENT: u64 = 256 << 20;

fn bench_root() -> PathBuf {
    let root = std::env::var_os("STREAMBUS_BENCH_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("bench-tmp"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-tmp")
        });
    std::fs::create_dir_all(&root).expect("create bench dir");
    root
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(bench_root()).expect("tempdir")
}

/// A batch of `size / 1 KiB` records with 1 KiB values.
fn batch(size: usize) -> Vec<u8> {
    let value = Bytes::from(vec![b'x'; RECORD]);
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..size / RECORD {
        b.push(&Record {
            key: None,
            value: Some(value.clone()),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        });
    }
    b.build().to_vec()
}

fn append_config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: SEGMENT,
        ..LogConfig::default()
    }
}

/// Appends `n` batches to a fresh log; returns the elapsed time.
fn log_appends(batch: &[u8], n: u64) -> Duration {
    let dir = scratch();
    let log = Log::open(dir.path(), append_config()).unwrap();
    let buf = batch.to_vec();
    let start = Instant::now();
    for _ in 0..n {
        black_box(log.append(&buf).unwrap());
    }
    start.elapsed()
}

/// Writes `n` buffers of the same size to a fresh file with an fdatasync
/// after each; returns the elapsed time.
fn raw_appends(batch: &[u8], n: u64) -> Duration {
    let dir = scratch();
    let mut f = File::create(dir.path().join("raw.log")).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(batch).unwrap();
        f.sync_data().unwrap();
    }
    start.elapsed()
}

/// A log whose first segment (about `SEGMENT` bytes of 16 KiB batches) is sealed.
fn sealed_segment() -> (tempfile::TempDir, Log, PathBuf, i64) {
    let dir = scratch();
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: SEGMENT,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let b = batch(16 << 10);
    while log.segment_count() < 2 {
        log.append(&b).unwrap();
    }
    log.flush().unwrap();
    let path = dir.path().join(format!("{:020}.log", 0));
    // The second segment's base is the first offset past the sealed segment.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    let second: i64 = names[1].trim_end_matches(".log").parse().unwrap();
    (dir, log, path, second)
}

/// Reads the sealed segment through the log; returns bytes read.
fn log_read_segment(log: &Log, end: i64) -> usize {
    let mut offset = 0;
    let mut bytes = 0;
    while offset < end {
        let r = log.read(offset, READ_CHUNK, None).unwrap();
        bytes += r.data.len();
        offset = r.next_offset;
        black_box(r.data);
    }
    bytes
}

/// Reads the same file with plain `pread`s into a reused buffer.
fn raw_read_segment(path: &PathBuf, buf: &mut [u8]) -> usize {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let mut pos = 0;
    while pos < len {
        let n = READ_CHUNK.min(len - pos);
        f.read_exact_at(&mut buf[..n], pos as u64).unwrap();
        black_box(&buf[..n]);
        pos += n;
    }
    len
}

fn mib_s(bytes: f64, d: Duration) -> f64 {
    bytes / d.as_secs_f64() / (1 << 20) as f64
}

/// Log and raw side by side, interleaved in blocks so both see the same
/// disk conditions (the machine is shared); ratio of total throughputs.
fn ratio_report() {
    println!("storage engine ratios (log / raw, interleaved append by append, same disk)");
    for (size, name) in SIZES {
        let b = batch(size);
        let log_dir = scratch();
        let log = Log::open(log_dir.path(), append_config()).unwrap();
        let raw_dir = scratch();
        let mut raw = File::create(raw_dir.path().join("raw.log")).unwrap();
        let buf = b.clone();
        // Alternate single appends: the disk is shared with other work, so
        // both sides must see the same conditions.
        let block = 1;
        let total = ((256usize << 20) / b.len()).max(256);
        let (mut t_log, mut t_raw) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..total / block {
            let t = Instant::now();
            for _ in 0..block {
                raw.write_all(&b).unwrap();
                raw.sync_data().unwrap();
            }
            t_raw += t.elapsed();
            let t = Instant::now();
            for _ in 0..block {
                black_box(log.append(&buf).unwrap());
            }
            t_log += t.elapsed();
        }
        let bytes = (total / block * block * b.len()) as f64;
        let (log_mib, raw_mib) = (mib_s(bytes, t_log), mib_s(bytes, t_raw));
        println!(
            "ratio append fsync=always batch={name}: log {log_mib:.1} MiB/s, raw write+fdatasync {raw_mib:.1} MiB/s, ratio {:.2}",
            log_mib / raw_mib
        );
    }
    let (_dir, log, path, end) = sealed_segment();
    let mut buf = vec![0u8; READ_CHUNK];
    let (mut t_log, mut t_raw, mut bytes) = (Duration::ZERO, Duration::ZERO, 0usize);
    for _ in 0..10 {
        let t = Instant::now();
        bytes += raw_read_segment(&path, &mut buf);
        t_raw += t.elapsed();
        let t = Instant::now();
        log_read_segment(&log, end);
        t_log += t.elapsed();
    }
    let (log_mib, raw_mib) = (mib_s(bytes as f64, t_log), mib_s(bytes as f64, t_raw));
    println!(
        "ratio sequential read sealed segment chunk=1MiB: log {log_mib:.1} MiB/s, raw pread {raw_mib:.1} MiB/s, ratio {:.2}",
        log_mib / raw_mib
    );
}

fn criterion_groups(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_fsync_always");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (size, name) in SIZES {
        let b = batch(size);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::new("log", name), &b, |bench, b| {
            bench.iter_custom(|n| log_appends(b, n))
        });
        g.bench_with_input(
            BenchmarkId::new("raw_write_fdatasync", name),
            &b,
            |bench, b| bench.iter_custom(|n| raw_appends(b, n)),
        );
    }
    g.finish();

    let (_dir, log, path, end) = sealed_segment();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut g = c.benchmark_group("read_sealed_segment");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(size));
    g.bench_function("log", |bench| bench.iter(|| log_read_segment(&log, end)));
    let mut buf = vec![0u8; READ_CHUNK];
    g.bench_function("raw_pread", |bench| {
        bench.iter(|| raw_read_segment(&path, &mut buf))
    });
    g.finish();
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: the setup writes
    // hundreds of MiB, so only run under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    ratio_report();
    if std::env::var_os("STREAMBUS_BENCH_RATIO_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    criterion_groups(&mut c);
    c.final_summary();
}
