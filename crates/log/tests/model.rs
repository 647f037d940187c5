//! Model-based property test: random sequences of append, read, truncate,
//! retention, compaction, flush, reopen and crash (files cut at random
//! positions past the durable point, bytes flipped) against an in-memory
//! model. Every fsynced record must survive and nothing garbled may ever be
//! returned.
//!
//! Case count: `PROPTEST_CASES` (default 64).

use std::fs::OpenOptions as FsOpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use std::sync::Arc;

use streambus_log::io::{Io, StdIo};
use streambus_log::{
    CleanupPolicy, FsyncPolicy, HandleCache, Log, LogConfig, LogError, OpenOptions,
};
use streambus_record::{BatchBuilder, BatchIter, Compression, Record, decode_records};

const RETENTION_MS: i64 = 3000;
const GRACE_MS: i64 = 2000;

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: Vec<(Option<u8>, Option<u16>, i64)>,
        lz4: bool,
    },
    Read {
        at: f64,
        max_bytes: usize,
        bound: Option<f64>,
    },
    ReadOutOfRange {
        below: bool,
    },
    Truncate {
        at: f64,
    },
    Retention {
        now: i64,
    },
    Compact {
        now: i64,
    },
    TimeLookup {
        ts: i64,
    },
    Flush,
    Reopen {
        clean: bool,
    },
    Crash {
        cut: f64,
        flips: Vec<(f64, u8)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let record = (
        prop::option::weighted(0.9, 0u8..6),
        prop::option::weighted(0.85, any::<u16>()),
        0i64..10_000,
    );
    prop_oneof![
        10 => (prop::collection::vec(record, 1..6), any::<bool>()).prop_map(|(records, lz4)| Op::Append { records, lz4 }),
        4 => (0.0..=1.0f64, 1usize..1500, prop::option::of(0.0..=1.0f64))
            .prop_map(|(at, max_bytes, bound)| Op::Read { at, max_bytes, bound }),
        1 => any::<bool>().prop_map(|below| Op::ReadOutOfRange { below }),
        1 => (0.0..=1.0f64).prop_map(|at| Op::Truncate { at }),
        1 => (0i64..15_000).prop_map(|now| Op::Retention { now }),
        1 => (0i64..15_000).prop_map(|now| Op::Compact { now }),
        1 => (-10i64..11_000).prop_map(|ts| Op::TimeLookup { ts }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        2 => (0.0..=1.0f64, prop::collection::vec((0.0..1.0f64, 1u8..=255), 0..3))
            .prop_map(|(cut, flips)| Op::Crash { cut, flips }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct MRec {
    offset: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    ts: i64,
    batch_base: i64,
    batch_last: i64,
}

struct Model {
    records: Vec<MRec>,
    start: i64,
    end: i64,
}

fn config(always: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 512,
        index_interval_bytes: 64,
        fsync: if always {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        },
        retention_ms: Some(RETENTION_MS),
        cleanup_policy: CleanupPolicy::CompactAndDelete,
        tombstone_retention_ms: GRACE_MS,
        ..LogConfig::default()
    }
}

/// Every record in the log, decoded from full-log reads, each batch checked.
fn log_records(log: &Log) -> Vec<MRec> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let r = log.read(offset, 700, None).expect("read");
        if r.data.is_empty() {
            break;
        }
        out.extend(decode(&r.data, offset));
        assert!(r.next_offset > offset);
        offset = r.next_offset;
    }
    out
}

fn decode(data: &[u8], from: i64) -> Vec<MRec> {
    let mut out = Vec::new();
    let mut it = BatchIter::new(data);
    for item in it.by_ref() {
        let (h, bytes) = item.expect("whole batches");
        for r in decode_records(bytes).expect("returned batches are valid") {
            if r.offset >= from {
                out.push(MRec {
                    offset: r.offset,
                    key: r.key,
                    value: r.value,
                    ts: r.timestamp_ms,
                    batch_base: h.base_offset,
                    batch_last: h.last_offset(),
                });
            }
        }
    }
    assert_eq!(it.position(), data.len(), "no partial batch returned");
    out
}

fn pick(model: &Model, at: f64) -> i64 {
    model.start + ((model.end - model.start) as f64 * at).round() as i64
}

/// Simulates losing unsynced data in a crash: cuts the active segment at a
/// random position at or past the durable point and flips bytes there.
fn crash(dir: &Path, durable: i64, cut: f64, flips: &[(f64, u8)]) {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let active = logs.pop().unwrap();
    let data = std::fs::read(&active).unwrap();
    let mut durable_pos = 0;
    for item in BatchIter::new(&data) {
        let (h, _) = item.unwrap();
        if h.base_offset >= durable {
            break;
        }
        durable_pos += h.total_size();
    }
    let len = data.len();
    let cut_pos = durable_pos + ((len - durable_pos) as f64 * cut) as usize;
    let f = FsOpenOptions::new().write(true).open(&active).unwrap();
    f.set_len(cut_pos as u64).unwrap();
    if cut_pos > durable_pos {
        for &(at, x) in flips {
            let pos = durable_pos + ((cut_pos - durable_pos) as f64 * at) as usize;
            let pos = pos.min(cut_pos - 1);
            f.write_all_at(&[data[pos] ^ x], pos as u64).unwrap();
        }
    }
}

/// Runs `ops` on a log on the real disk, opened directly or, with
/// `cache`, through a file-handle cache of that many descriptors (shared by
/// every reopen).
fn run(ops: Vec<Op>, always: bool, cache: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache.map(|c| HandleCache::new(Arc::new(StdIo), c));
    let open = |dir: &Path| {
        let options = match &cache {
            Some(c) => OpenOptions::new().io(Arc::new(c.clone()) as Arc<dyn Io>),
            None => OpenOptions::new(),
        };
        Log::open_with(dir, config(always), options)
    };
    let mut log = Some(open(dir.path()).unwrap());
    let mut m = Model {
        records: Vec::new(),
        start: 0,
        end: 0,
    };
    for op in ops {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append { records, lz4 } => {
                let mut b = BatchBuilder::new(if lz4 {
                    Compression::Lz4
                } else {
                    Compression::None
                });
                for (k, v, ts) in &records {
                    b.push(&Record {
                        key: k.map(|k| Bytes::from(format!("key{k}"))),
                        value: v.map(|v| Bytes::from(format!("value-{v}"))),
                        headers: vec![],
                        timestamp_ms: *ts,
                    });
                }
                let bytes = b.build().to_vec();
                let info = l.append(&bytes).unwrap();
                assert_eq!(info.base_offset, m.end);
                let last = m.end + records.len() as i64 - 1;
                for (i, (k, v, ts)) in records.into_iter().enumerate() {
                    m.records.push(MRec {
                        offset: m.end + i as i64,
                        key: k.map(|k| Bytes::from(format!("key{k}"))),
                        value: v.map(|v| Bytes::from(format!("value-{v}"))),
                        ts,
                        batch_base: m.end,
                        batch_last: last,
                    });
                }
                m.end = last + 1;
                if always {
                    assert_eq!(l.durable_offset(), m.end);
                }
            }
            Op::Read {
                at,
                max_bytes,
                bound,
            } => {
                let offset = pick(&m, at);
                let bound = bound.map(|b| pick(&m, b));
                let r = l.read(offset, max_bytes, bound).unwrap();
                assert_eq!(r.end_offset, m.end);
                let got = decode(&r.data, offset);
                let ub = bound.unwrap_or(m.end);
                assert!(r.next_offset <= ub.max(offset));
                let expected: Vec<_> = m
                    .records
                    .iter()
                    .filter(|x| x.offset >= offset && x.offset < r.next_offset)
                    .cloned()
                    .collect();
                assert_eq!(got, expected, "read({offset}, {max_bytes}, {bound:?})");
                if r.data.is_empty() {
                    assert_eq!(r.next_offset, offset);
                    if let Some(first) = m.records.iter().find(|x| x.offset >= offset) {
                        assert!(first.batch_last >= ub, "empty read although a batch fits");
                    }
                }
            }
            Op::ReadOutOfRange { below } => {
                if below {
                    if m.start > 0 {
                        assert!(matches!(
                            l.read(m.start - 1, 100, None),
                            Err(LogError::OffsetBelowStart { .. })
                        ));
                    }
                } else {
                    assert!(matches!(
                        l.read(m.end + 1, 100, None),
                        Err(LogError::OffsetAboveEnd { .. })
                    ));
                }
            }
            Op::Truncate { at } => {
                let offset = pick(&m, at);
                l.truncate_to(offset).unwrap();
                let new_end = m
                    .records
                    .iter()
                    .find(|x| x.batch_last >= offset)
                    .map_or(offset, |x| x.batch_base.min(offset));
                let no_op = offset == m.end;
                let new_end = if no_op { m.end } else { new_end };
                m.records.retain(|x| x.offset < new_end);
                m.end = new_end;
                assert_eq!(l.end_offset(), m.end);
                if !no_op {
                    assert_eq!(l.durable_offset(), m.end, "truncation syncs");
                }
            }
            Op::Retention { now } => {
                l.apply_retention(now).unwrap();
                let start = l.log_start_offset();
                assert!(start >= m.start && start <= m.end);
                for x in m.records.iter().filter(|x| x.offset < start) {
                    assert!(
                        x.ts < now - RETENTION_MS,
                        "retention deleted a record that is not old enough"
                    );
                }
                m.records.retain(|x| x.offset >= start);
                m.start = start;
            }
            Op::Compact { now } => {
                l.compact(now).unwrap();
                let after = log_records(l);
                for x in &after {
                    assert!(
                        m.records.contains(x),
                        "compaction produced a record that was not there: {x:?}"
                    );
                }
                for x in &m.records {
                    if after.iter().any(|a| a.offset == x.offset) {
                        continue;
                    }
                    let superseded = x.key.is_some()
                        && m.records
                            .iter()
                            .any(|y| y.key == x.key && y.offset > x.offset);
                    let expired_tombstone =
                        x.key.is_some() && x.value.is_none() && now - x.ts >= GRACE_MS;
                    assert!(
                        superseded || expired_tombstone,
                        "compaction removed a live record {x:?}"
                    );
                }
                m.records = after;
                assert_eq!(l.end_offset(), m.end);
            }
            Op::TimeLookup { ts } => {
                let mut batches: Vec<(i64, i64)> = Vec::new(); // (batch_base, max ts)
                for x in &m.records {
                    match batches.last_mut() {
                        Some((b, max)) if *b == x.batch_base => *max = (*max).max(x.ts),
                        _ => batches.push((x.batch_base, x.ts)),
                    }
                }
                let expected = batches.iter().find(|(_, max)| *max >= ts).map(|(b, _)| {
                    m.records
                        .iter()
                        .find(|x| x.batch_base == *b && x.ts >= ts)
                        .unwrap()
                        .offset
                });
                assert_eq!(
                    l.offset_for_timestamp(ts).unwrap(),
                    expected,
                    "offset_for_timestamp({ts})"
                );
            }
            Op::Flush => {
                l.flush().unwrap();
                assert_eq!(l.durable_offset(), m.end);
            }
            Op::Reopen { clean } => {
                let l = log.take().unwrap();
                if clean {
                    l.close().unwrap();
                } else {
                    drop(l);
                }
                let l = open(dir.path()).unwrap();
                assert_eq!(l.end_offset(), m.end);
                assert_eq!(l.log_start_offset(), m.start);
                log = Some(l);
            }
            Op::Crash { cut, flips } => {
                let durable = l.durable_offset();
                assert!(durable <= m.end);
                drop(log.take());
                crash(dir.path(), durable, cut, &flips);
                let l = open(dir.path()).unwrap();
                let end = l.end_offset();
                assert!(
                    end >= durable,
                    "fsynced records lost: end {end} < durable {durable}"
                );
                assert!(end <= m.end);
                assert_eq!(l.log_start_offset(), m.start);
                m.records.retain(|x| x.offset < end);
                m.end = end;
                log = Some(l);
            }
        }
        let l = log.as_ref().unwrap();
        assert_eq!(log_records(l), m.records);
        assert!(l.durable_offset() <= l.end_offset());
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model_through_crashes_and_maintenance(
        ops in prop::collection::vec(op(), 1..60),
        always in prop::bool::weighted(0.25),
    ) {
        run(ops, always, None);
    }

    /// The same with every file behind a file-handle cache of two
    /// descriptors, evicted and reopened all the time.
    #[test]
    fn log_matches_the_model_through_a_handle_cache(
        ops in prop::collection::vec(op(), 1..60),
        always in prop::bool::weighted(0.25),
    ) {
        run(ops, always, Some(2));
    }
}
