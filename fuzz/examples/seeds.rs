//! Writes the hand-made seed inputs of the record, varint and log targets
//! into `fuzz/corpus/<target>/seed-*` (real batches from the builder, real
//! log directories from `streambus_log::Log`).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::path::{Path, PathBuf};

use bytes::Bytes;
use streambus_fuzz::{log_recovery, record_batch};
use streambus_log::{CleanupPolicy, FsyncPolicy, Log, LogConfig};
use streambus_record::{
    BatchBuilder, Compression, Header, Record, compute_crc, put_varint, put_varlong,
    retain_records, set_base_offset, set_partition_leader_epoch,
};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    // Each seed must pass its own target's checks.
    match target {
        "record_batch" => record_batch::check(bytes),
        "varint" => streambus_fuzz::varint::check(bytes),
        _ => log_recovery::check(bytes),
    }
    std::fs::write(corpus(target).join(format!("seed-{name}")), bytes).expect("write seed");
}

fn record(key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: vec![],
        timestamp_ms: ts,
    }
}

fn build(compression: Compression, records: &[Record]) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression).with_producer(7, 1, 42);
    for r in records {
        b.push(r);
    }
    b.build().to_vec()
}

fn recrc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn record_seeds() {
    let mut with_headers = record(Some("k1"), Some("v1"), 1_700_000_000_005);
    with_headers.headers = vec![
        Header {
            key: "trace".into(),
            value: Some(Bytes::from_static(b"abc")),
        },
        Header {
            key: "none".into(),
            value: None,
        },
    ];
    let records = vec![
        with_headers,
        record(None, None, 1_700_000_000_003),
        record(Some("k3"), Some(""), 1_700_000_000_009),
        record(Some("k1"), Some(&"x".repeat(300)), 1_700_000_000_001),
    ];
    let keep_all = 0xfc;
    let keep_some = 0x54; // records 0, 2 and 4
    for (name, codec) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let mut b = build(codec, &records);
        set_base_offset(&mut b, 1000);
        set_partition_leader_epoch(&mut b, 3);
        write(
            "record_batch",
            &format!("{name}-4-records"),
            &record_batch::input_for(&b, keep_some),
        );
        write(
            "record_batch",
            &format!("{name}-keep-all"),
            &record_batch::input_for(&b, keep_all),
        );
        // Compacted: gaps in the offset deltas.
        let mut i = 0;
        let compacted = retain_records(&b, |_| {
            i += 1;
            i % 2 == 0
        })
        .unwrap()
        .unwrap();
        write(
            "record_batch",
            &format!("{name}-compacted"),
            &record_batch::input_for(&compacted, keep_all),
        );
        // LogAppendTime (attribute bit 3), CRC recomputed by the target.
        let mut lat = b.clone();
        lat[22] |= 0x08;
        write(
            "record_batch",
            &format!("{name}-log-append-time"),
            &record_batch::input_for(&lat, keep_some | record_batch::FIX_CRC),
        );
        // Two batches back to back (a fetch response), plus a torn third.
        let one = build(codec, &records[..1]);
        let mut two = b.clone();
        two.extend_from_slice(&one);
        two.extend_from_slice(&one[..30]);
        write(
            "record_batch",
            &format!("{name}-concatenated"),
            &record_batch::input_for(&two, keep_some),
        );
    }
    // One record, the smallest valid batch.
    let small = build(Compression::None, &[record(None, Some("a"), 1)]);
    write(
        "record_batch",
        "single",
        &record_batch::input_for(&small, keep_all),
    );
    // Transactional + control attributes.
    let mut ctl = small.clone();
    ctl[22] |= 0x30;
    recrc(&mut ctl);
    write("record_batch", "control", &record_batch::input_for(&ctl, 0));
    // Unsupported codec (gzip), with a valid CRC.
    let mut gz = small.clone();
    gz[22] = (gz[22] & !0x07) | 1;
    write(
        "record_batch",
        "gzip",
        &record_batch::input_for(&gz, record_batch::FIX_CRC),
    );
    // Known crash, kept as its reproducer: a valid CRC and a huge
    // recordCount make `decode_records` reserve ~223 GB before it finds
    // the records missing. Not run through the checks here.
    let mut huge = small.clone();
    huge[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    recrc(&mut huge);
    std::fs::write(
        corpus("record_batch").join("known-crash-decode-records-capacity"),
        record_batch::input_for(&huge, 0),
    )
    .expect("write reproducer");
    // An empty builder's batch (no records: rejected).
    let empty = BatchBuilder::new(Compression::Lz4).build();
    write("record_batch", "empty", &record_batch::input_for(&empty, 0));
}

fn varint_seeds() {
    let mut all = Vec::new();
    for v in [0, 1, -1, 63, -64, 64, 300, i32::MAX, i32::MIN] {
        put_varint(&mut all, v);
    }
    write("varint", "varints", &[&[0x00][..], &all].concat());
    let mut longs = Vec::new();
    for v in [0i64, -1, 1 << 40, i64::MAX, i64::MIN] {
        put_varlong(&mut longs, v);
    }
    write("varint", "varlongs", &[&[0xff][..], &longs].concat());
    // Overlong, 32-bit overflow and truncated encodings.
    write(
        "varint",
        "overlong",
        &[0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    );
    write("varint", "overflow", &[0x00, 0xff, 0xff, 0xff, 0xff, 0x1f]);
    write("varint", "truncated", &[0x01, 0x80, 0x80]);
}

fn log_batch(tag: &str, n: usize, ts: i64, codec: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for i in 0..n {
        b.push(&record(
            Some(&format!("k{}", i % 3)),
            Some(&format!("{tag}-{i}")),
            ts + i as i64,
        ));
    }
    b.build().to_vec()
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        fsync: FsyncPolicy::Never,
        cleanup_policy: CleanupPolicy::CompactAndDelete,
        ..LogConfig::default()
    }
}

/// Builds a log with `fill`, optionally closes it, and writes the directory as a seed.
fn log_seed(name: &str, flags: u8, segment_bytes: u64, close: bool, fill: impl FnOnce(&Log)) {
    let tmp = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(1000),
        ..config(segment_bytes)
    };
    let log = Log::open(tmp.path(), config).unwrap();
    fill(&log);
    if close {
        log.close().unwrap();
    } else {
        drop(log);
    }
    let input = log_recovery::Input::from_dir(tmp.path(), flags).unwrap();
    write("log_recovery", name, &input.encode());
}

fn log_seeds() {
    use log_recovery::{CLEAN, CRASH_REOPEN, FIX_CRC, SMALL_SEGMENTS};
    log_seed("one-segment-clean", CLEAN, 1 << 20, true, |log| {
        for i in 0..6 {
            log.append(&mut log_batch(
                &format!("b{i}"),
                3,
                1000 * i,
                Compression::None,
            ))
            .unwrap();
        }
    });
    log_seed(
        "three-segments-clean",
        CLEAN | 0x04 | 0x10,
        400,
        true,
        |log| {
            for i in 0..9 {
                let codec = if i % 2 == 0 {
                    Compression::Lz4
                } else {
                    Compression::None
                };
                log.append(&mut log_batch(&format!("b{i}"), 2, 1000 * i, codec))
                    .unwrap();
            }
        },
    );
    log_seed("crashed", CRASH_REOPEN | 0x08, 400, false, |log| {
        for i in 0..14 {
            log.append_with_epoch(
                &mut log_batch(&format!("b{i}"), 2, 50 * i, Compression::None),
                2,
            )
            .unwrap();
        }
    });
    log_seed("retention-checkpoint", FIX_CRC | 0x20, 400, true, |log| {
        for i in 0..14 {
            log.append(&mut log_batch(&format!("b{i}"), 2, i, Compression::None))
                .unwrap();
        }
        // Retention by time deletes the old sealed segments and writes
        // the start checkpoint.
        log.apply_retention(i64::MAX / 2).unwrap();
    });
    log_seed("compacted", SMALL_SEGMENTS | CLEAN, 600, true, |log| {
        for i in 0..10 {
            log.append(&mut log_batch(&format!("b{i}"), 3, i, Compression::None))
                .unwrap();
        }
        log.compact(1_000_000).unwrap();
    });
    write("log_recovery", "empty", &[]);
}

fn main() {
    record_seeds();
    varint_seeds();
    log_seeds();
    println!("seeds written under {}", corpus("").display());
}
