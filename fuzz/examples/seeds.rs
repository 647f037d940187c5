//! Writes the hand-made seed inputs of the record, varint and log targets
//! into `fuzz/corpus/<target>/seed-*` (real batches from the builder, real
//! log directories from `streambus_log::Log`).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds [TARGET...]
//! ```
//!
//! With target names (`record_batch`, `varint`, `log_recovery`), only
//! those targets' seeds are written.

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
    // A crash once, fixed, kept as a regression input: a valid CRC and a
    // huge recordCount made `decode_records` reserve ~223 GB before it
    // found the records missing.
    let mut huge = small.clone();
    huge[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    recrc(&mut huge);
    let input = record_batch::input_for(&huge, 0);
    record_batch::check(&input);
    std::fs::write(
        corpus("record_batch").join("regression-decode-records-capacity"),
        input,
    )
    .expect("write regression input");
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
    // These seeds predate the leader-epoch checkpoint: without it open
    // rebuilds the cache from the batch headers.
    std::fs::remove_file(tmp.path().join("leader-epoch-checkpoint")).unwrap();
    let input = log_recovery::Input::from_dir(tmp.path(), flags).unwrap();
    write("log_recovery", name, &input.encode());
}

fn log_seeds() {
    use log_recovery::{CLEAN, CRASH_REOPEN, FIX_CRC, SMALL_SEGMENTS};
    log_seed("one-segment-clean", CLEAN, 1 << 20, true, |log| {
        for i in 0..6 {
            log.append(&log_batch(
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
                log.append(&log_batch(&format!("b{i}"), 2, 1000 * i, codec))
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
            log.append(&log_batch(&format!("b{i}"), 2, i, Compression::None))
                .unwrap();
        }
        // Retention by time deletes the old sealed segments and writes
        // the start checkpoint.
        log.apply_retention(i64::MAX / 2).unwrap();
    });
    log_seed("compacted", SMALL_SEGMENTS | CLEAN, 600, true, |log| {
        for i in 0..10 {
            log.append(&log_batch(&format!("b{i}"), 3, i, Compression::None))
                .unwrap();
        }
        log.compact(1_000_000).unwrap();
    });
    write("log_recovery", "empty", &[]);
}

/// A log directory filled by `fill` with `config`, then closed (or
/// dropped, as in a crash).
fn log_dir(config: LogConfig, close: bool, fill: impl FnOnce(&Log)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(tmp.path(), config).unwrap();
    fill(&log);
    if close {
        log.close().unwrap();
    } else {
        drop(log);
    }
    tmp
}

/// Names of the segment files (`.log`) in `dir`, oldest first.
fn segment_bases(dir: &Path) -> Vec<u32> {
    let mut bases: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort();
    bases
}

fn segment_path(dir: &Path, base: u32, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// Appends `n` two-record batches, `epoch_of(i)` giving batch `i`'s leader
/// epoch.
fn fill_with_epochs(log: &Log, n: i64, epoch_of: impl Fn(i64) -> i32) {
    for i in 0..n {
        let b = log_batch(&format!("e{i}"), 2, 100 * i, Compression::None);
        log.append_with_epoch(&b, epoch_of(i)).unwrap();
    }
}

/// Seeds for the files that an interrupted operation leaves behind and for
/// the leader-epoch checkpoint.
fn interrupted_log_seeds() {
    use log_recovery::{
        CLEAN, CLEANED, CRASH_REOPEN, EPOCH_CHECKPOINT, FIX_CRC, FileEntry, INDEX, Input, LOG,
        TIME_INDEX, TRUNCATION,
    };
    let epochs = |i: i64| [1, 1, 1, 3, 3, 4, 4, 4, 4, 7, 7, 7][i as usize % 12];

    // Leader epochs over several segments, a truncation that removed the
    // newest epoch's entry, then a newer epoch: the checkpoint as it is.
    let tmp = log_dir(config(400), true, |log| {
        fill_with_epochs(log, 10, epochs);
        log.truncate_to(12).unwrap();
        fill_with_epochs(log, 2, |_| 8);
    });
    let input = Input::from_dir(tmp.path(), CLEAN | 0x10).unwrap();
    write("log_recovery", "epochs-truncated", &input.encode());

    // A crash during a segment roll: the new segment is still
    // `.log.rolling` (and took appends), the sealed one has no index files
    // yet; a checkpoint write left its `.tmp` file.
    let tmp = log_dir(config(400), false, |log| fill_with_epochs(log, 9, epochs));
    let dir = tmp.path();
    let bases = segment_bases(dir);
    let (sealed, last) = (bases[bases.len() - 2], bases[bases.len() - 1]);
    std::fs::rename(
        segment_path(dir, last, "log"),
        segment_path(dir, last, "log.rolling"),
    )
    .unwrap();
    for ext in ["index", "timeindex"] {
        let _ = std::fs::remove_file(segment_path(dir, sealed, ext));
        let _ = std::fs::remove_file(segment_path(dir, last, ext));
    }
    std::fs::write(dir.join("leader-epoch-checkpoint.tmp"), "0\n3\n1 0\n").unwrap();
    let input = Input::from_dir(dir, CRASH_REOPEN | 0x08).unwrap();
    write("log_recovery", "interrupted-roll", &input.encode());

    // A crash during `truncate_to`: the intent (described: cut the middle
    // segment after its first batch) is durable, the segment already cut,
    // the segments above not yet deleted. The leader-epoch checkpoint is
    // described too (its entries still include the removed batches').
    let tmp = log_dir(config(400), false, |log| fill_with_epochs(log, 12, epochs));
    let dir = tmp.path();
    let bases = segment_bases(dir);
    let middle = bases[bases.len() / 2];
    let mut input = Input::from_dir(dir, CRASH_REOPEN).unwrap();
    input.files.retain(|f| f.kind != EPOCH_CHECKPOINT);
    // Epochs 1, 3, 4 and 7 start at batches 0, 3, 5 and 9 (2 offsets each).
    input.files.push(FileEntry {
        kind: EPOCH_CHECKPOINT,
        base: 0,
        bytes: vec![0xff, 1, 0, 2, 6, 1, 4, 3, 8],
    });
    input.files.push(FileEntry {
        kind: TRUNCATION,
        base: middle,
        bytes: vec![0xff, 1, 0, 1],
    });
    write("log_recovery", "interrupted-truncation", &input.encode());

    // The same crash right after the intent was written, which cuts the
    // active segment back to empty (written as text).
    let tmp = log_dir(config(400), false, |log| fill_with_epochs(log, 8, epochs));
    let dir = tmp.path();
    let last = *segment_bases(dir).last().unwrap();
    std::fs::write(
        dir.join("truncation.checkpoint"),
        format!("0\n{last}\n{last}\n0\n"),
    )
    .unwrap();
    let input = Input::from_dir(dir, FIX_CRC).unwrap();
    write(
        "log_recovery",
        "interrupted-truncation-text",
        &input.encode(),
    );

    // A crash during compaction's swap of the first segment: before the
    // renames (old log without index files, the `.cleaned` files), and
    // after the log's rename (new log, index files still `.cleaned`).
    let compact_config = LogConfig {
        index_interval_bytes: 1,
        ..config(500)
    };
    let fill = |log: &Log| {
        for i in 0..10 {
            log.append(&log_batch(&format!("c{i}"), 3, i, Compression::None))
                .unwrap();
        }
    };
    let before = log_dir(compact_config.clone(), true, fill);
    let after = log_dir(compact_config.clone(), true, |log| {
        fill(log);
        log.compact(1_000_000).unwrap();
    });
    let first = segment_bases(before.path())[0];
    let cleaned = |ext: &str| FileEntry {
        kind: match ext {
            "log" => CLEANED,
            "index" => CLEANED | 8,
            _ => CLEANED | 16,
        },
        base: first,
        bytes: std::fs::read(segment_path(after.path(), first, ext)).unwrap(),
    };
    let mut input = Input::from_dir(before.path(), CRASH_REOPEN).unwrap();
    input
        .files
        .retain(|f| f.base != first || !matches!(f.kind, INDEX | TIME_INDEX));
    input
        .files
        .extend(["log", "index", "timeindex"].map(cleaned));
    write("log_recovery", "interrupted-compaction", &input.encode());
    input
        .files
        .retain(|f| f.base != first || (f.kind != LOG && f.kind != CLEANED));
    input.files.push(FileEntry {
        kind: LOG,
        ..cleaned("log")
    });
    write(
        "log_recovery",
        "interrupted-compaction-swap",
        &input.encode(),
    );
}

fn main() {
    let targets: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |t: &str| targets.is_empty() || targets.iter().any(|a| a == t);
    if wanted("record_batch") {
        record_seeds();
    }
    if wanted("varint") {
        varint_seeds();
    }
    if wanted("log_recovery") {
        log_seeds();
        interrupted_log_seeds();
    }
    println!("seeds written under {}", corpus("").display());
}
