//! Helpers shared by the log integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use streambus_log::{FsyncPolicy, Log, LogConfig};
use streambus_record::{
    BatchBuilder, BatchIter, Compression, DecodedRecord, Record, decode_records,
};

/// A batch of `n` records with values `"{tag}-{i}"`, keys `k{i % keys}`.
pub fn batch(tag: &str, n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        b.push(&Record {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: vec![],
            timestamp_ms: ts,
        });
    }
    b.build().to_vec()
}

/// A batch from explicit records.
pub fn batch_of(compression: Compression, records: &[Record]) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for r in records {
        b.push(r);
    }
    b.build().to_vec()
}

pub fn record(key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: vec![],
        timestamp_ms: ts,
    }
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    }
}

/// Decodes every record in the log from its start, checking each batch.
pub fn read_all(log: &Log) -> Vec<DecodedRecord> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let r = log.read(offset, 4096, None).expect("read");
        if r.data.is_empty() {
            assert_eq!(r.next_offset, offset);
            break;
        }
        for item in BatchIter::new(&r.data) {
            let (_, bytes) = item.expect("whole batches");
            for rec in decode_records(bytes).expect("valid batch") {
                if rec.offset >= offset {
                    out.push(rec);
                }
            }
        }
        assert!(r.next_offset > offset);
        offset = r.next_offset;
    }
    out
}

pub fn values(records: &[DecodedRecord]) -> Vec<(i64, String)> {
    records
        .iter()
        .map(|r| {
            let v = r.value.as_ref().map_or("<null>".to_string(), |v| {
                String::from_utf8_lossy(v).into_owned()
            });
            (r.offset, v)
        })
        .collect()
}

/// Segment `.log` files in `dir`, sorted.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}
