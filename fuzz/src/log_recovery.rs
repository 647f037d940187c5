//! Checks for partition-log recovery (`streambus_log::Log::open`) on
//! arbitrary directory contents: segment files, index files, the log start
//! checkpoint and the clean-shutdown marker.
//!
//! Input layout: byte 0 is a flags byte, then up to [`MAX_FILES`] file
//! entries, each `kind: u8, base: u32 LE, len: u16 LE, bytes[len]` (a short
//! last entry takes what is left). `kind % 4` is 0 for a segment
//! `{base:020}.log`, 1 for its `.index`, 2 for its `.timeindex` and 3 for
//! `log-start-offset.checkpoint` (base ignored); a later entry for the same
//! file replaces the earlier one. Flags:
//!
//! * bit 0: write the `.clean-shutdown` marker (damage in the active segment
//!   is then an error, not a torn tail);
//! * bit 1: recompute the CRC of every batch that frames in each `.log`,
//!   so mutations of batch contents get past the CRC check;
//! * bits 2-3: `index_interval_bytes`, one of [`INTERVALS`];
//! * bits 4-5: `max_bytes` for the reads, one of [`READ_SIZES`];
//! * bit 6: also reopen once after a crash (drop without `close`);
//! * bit 7: a small `segment_bytes`, so the append after recovery rolls.
//!
//! `Log::open` must return `Ok` or `Err`, never panic. After `Ok`, reading
//! the whole log, looking up timestamps, appending, closing and reopening
//! must not panic either, and the offsets seen must be consistent (see
//! [`check`]).
//!
//! This file is shared, via `#[path]`, with the stable replay test
//! `crates/log/tests/fuzz_corpus.rs`, so it uses nothing but
//! `streambus-log`, `streambus-record`, `bytes`, `tempfile` and the sibling
//! module `corpus`.

use std::path::Path;

use bytes::Bytes;
use streambus_log::{FsyncPolicy, Log, LogConfig, LogError};
use streambus_record::{
    BatchBuilder, BatchHeader, BatchIter, Compression, HEADER_SIZE, Record, compute_crc,
};

use crate::corpus::scratch_root;

/// Most file entries taken from one input.
pub const MAX_FILES: usize = 8;
/// `index_interval_bytes` choices (flags bits 2-3).
pub const INTERVALS: [u32; 4] = [4096, 0, 1, 128];
/// `max_bytes` choices for reads (flags bits 4-5).
pub const READ_SIZES: [usize; 4] = [4096, 1, 100, 1 << 20];

/// Flag: write the clean-shutdown marker.
pub const CLEAN: u8 = 0x01;
/// Flag: fix the CRCs of the batches in `.log` files.
pub const FIX_CRC: u8 = 0x02;
/// Flag: reopen once after a simulated crash.
pub const CRASH_REOPEN: u8 = 0x40;
/// Flag: small segments.
pub const SMALL_SEGMENTS: u8 = 0x80;

const CHECKPOINT_FILE: &str = "log-start-offset.checkpoint";
const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
const EXTS: [&str; 3] = ["log", "index", "timeindex"];

/// One file of a fuzzer input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// 0 `.log`, 1 `.index`, 2 `.timeindex`, 3 checkpoint.
    pub kind: u8,
    /// Segment base offset (the file name).
    pub base: u32,
    /// File contents.
    pub bytes: Vec<u8>,
}

/// A parsed fuzzer input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The flags byte.
    pub flags: u8,
    /// The files, in input order.
    pub files: Vec<FileEntry>,
}

impl Input {
    /// Parses fuzzer bytes; any bytes parse (to possibly no files).
    pub fn parse(data: &[u8]) -> Input {
        let (flags, mut rest) = match data.split_first() {
            Some((&f, r)) => (f, r),
            None => (0, &[][..]),
        };
        let mut files = Vec::new();
        while rest.len() >= 7 && files.len() < MAX_FILES {
            let kind = rest[0] % 4;
            let base = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes"));
            let len = usize::from(u16::from_le_bytes([rest[5], rest[6]]));
            let body = &rest[7..];
            let len = len.min(body.len());
            files.push(FileEntry {
                kind,
                base,
                bytes: body[..len].to_vec(),
            });
            rest = &body[len..];
        }
        Input { flags, files }
    }

    /// Encodes back to fuzzer bytes (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        for f in &self.files {
            let len = u16::try_from(f.bytes.len()).expect("file too large for an input");
            out.push(f.kind);
            out.extend_from_slice(&f.base.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&f.bytes);
        }
        out
    }

    /// Reads a real log directory into an input (for seeds): segment and
    /// index files whose base fits a `u32`, and the checkpoint.
    pub fn from_dir(dir: &Path, flags: u8) -> std::io::Result<Input> {
        let mut files = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let bytes = std::fs::read(dir.join(&name))?;
            if name == CHECKPOINT_FILE {
                files.push(FileEntry {
                    kind: 3,
                    base: 0,
                    bytes,
                });
                continue;
            }
            let Some((stem, ext)) = name.split_once('.') else {
                continue;
            };
            let (Some(kind), Ok(base)) = (EXTS.iter().position(|e| *e == ext), stem.parse()) else {
                continue;
            };
            files.push(FileEntry {
                kind: kind as u8,
                base,
                bytes,
            });
        }
        Ok(Input { flags, files })
    }

    /// Writes the input's files (and marker) into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for f in &self.files {
            let path = match f.kind {
                3 => dir.join(CHECKPOINT_FILE),
                k => dir.join(format!("{:020}.{}", f.base, EXTS[usize::from(k)])),
            };
            let mut bytes = f.bytes.clone();
            if f.kind == 0 && self.flags & FIX_CRC != 0 {
                fix_crcs(&mut bytes);
            }
            std::fs::write(path, bytes)?;
        }
        if self.flags & CLEAN != 0 {
            std::fs::write(dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        }
        Ok(())
    }

    fn config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: if self.flags & SMALL_SEGMENTS != 0 {
                256
            } else {
                LogConfig::default().segment_bytes
            },
            index_interval_bytes: INTERVALS[usize::from((self.flags >> 2) & 3)],
            fsync: FsyncPolicy::Never,
            ..LogConfig::default()
        }
    }

    fn read_size(&self) -> usize {
        READ_SIZES[usize::from((self.flags >> 4) & 3)]
    }

    /// Whether open rebuilds every index from the segment files, so that
    /// the data a read returns was all scanned and CRC-checked on open: no
    /// index files are given for a segment below the newest one (the active
    /// segment is always scanned whole; only sealed segments' index files
    /// are trusted).
    fn fully_scanned(&self) -> bool {
        let active = self
            .files
            .iter()
            .filter(|f| f.kind == 0)
            .map(|f| f.base)
            .max();
        !self
            .files
            .iter()
            .any(|f| (f.kind == 1 || f.kind == 2) && active.is_some_and(|a| f.base < a))
    }
}

/// Recomputes the CRC of every batch that frames, from the start of a
/// segment file, stopping at the first one that does not.
pub fn fix_crcs(buf: &mut [u8]) {
    let mut pos = 0;
    while buf.len() - pos >= HEADER_SIZE {
        let Ok(h) = BatchHeader::parse(&buf[pos..]) else {
            return;
        };
        let size = h.total_size();
        if size > buf.len() - pos {
            return;
        }
        let crc = compute_crc(&buf[pos..pos + size]);
        buf[pos + 17..pos + 21].copy_from_slice(&crc.to_be_bytes());
        pos += size;
    }
}

/// Runs every check on one fuzzer input.
pub fn check(data: &[u8]) {
    let input = Input::parse(data);
    let tmp = tempfile::Builder::new()
        .prefix("streambus-fuzz-log")
        .tempdir_in(scratch_root())
        .expect("create a scratch directory");
    let dir = tmp.path().join("log");
    std::fs::create_dir(&dir).expect("create the log directory");
    input.write_to(&dir).expect("write the input files");
    check_dir(&input, &dir);
}

/// Opens the log in `dir` (filled from `input`) and checks it.
fn check_dir(input: &Input, dir: &Path) {
    let config = input.config();
    let log = match Log::open(dir, config) {
        Ok(log) => log,
        Err(e) => {
            assert!(
                matches!(e, LogError::Corrupt { .. } | LogError::Io { .. }),
                "open failed with an unexpected error: {e}"
            );
            return;
        }
    };
    assert_eq!(
        log.durable_offset(),
        log.end_offset(),
        "not durable after open"
    );
    let strict = input.fully_scanned();
    let max_bytes = input.read_size();
    let first = read_all(&log, max_bytes, strict);
    lookups(&log);

    let log = if input.flags & CRASH_REOPEN != 0 {
        let (start, end) = (log.log_start_offset(), log.end_offset());
        drop(log);
        let log = Log::open(dir, config).expect("reopen after a crash failed");
        if strict {
            assert_eq!(
                (log.log_start_offset(), log.end_offset()),
                (start, end),
                "offsets changed on reopen"
            );
            let again = read_all(&log, max_bytes, strict);
            assert_eq!(
                batches(&again),
                batches(&first),
                "data changed on reopen after a crash"
            );
        }
        log
    } else {
        log
    };

    // The log takes a new batch at its end offset after recovery.
    let (start, end) = (log.log_start_offset(), log.end_offset());
    let mut batch = new_batch(end);
    let info = log
        .append(&mut batch)
        .expect("append after recovery failed");
    assert_eq!(info.base_offset, end);
    assert_eq!(log.end_offset(), end + 1);
    let r = log.read(end, 1, None).expect("read of the appended batch");
    assert_eq!(
        &r.data[..],
        &batch[..],
        "appended batch reads back differently"
    );
    assert_eq!(r.next_offset, end + 1);
    let before = read_all(&log, max_bytes, false);
    log.close().expect("close after recovery failed");

    // A log closed cleanly reopens to the same offsets and data.
    let log = Log::open(dir, config).expect("reopen after close failed");
    assert_eq!(
        (log.log_start_offset(), log.end_offset()),
        (start, end + 1),
        "offsets changed on reopen after close"
    );
    let after = read_all(&log, max_bytes, false);
    assert_eq!(
        batches(&after),
        batches(&before),
        "data changed on reopen after close"
    );
    lookups(&log);
}

/// A one-record batch whose value names its expected offset.
fn new_batch(offset: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        key: Some(Bytes::from_static(b"fuzz")),
        value: Some(Bytes::from(format!("at {offset}"))),
        headers: vec![],
        timestamp_ms: 1_700_000_000_000,
    });
    b.build().to_vec()
}

/// Outcome of reading a whole log.
type ReadAll = Result<Vec<Vec<u8>>, String>;

fn batches(r: &ReadAll) -> Option<&Vec<Vec<u8>>> {
    r.as_ref().ok()
}

/// Reads the log from its start offset to its end, checking every read.
/// A read may fail (index files that open trusted can point at damage
/// inside a sealed segment), but only with an error, and only as
/// corruption.
fn read_all(log: &Log, max_bytes: usize, strict: bool) -> ReadAll {
    let start = log.log_start_offset();
    let end = log.end_offset();
    assert!(
        (0..=end).contains(&start),
        "log start {start} after end {end}"
    );
    assert!(log.segment_count() >= 1);
    if start > 0 {
        assert!(matches!(
            log.read(start - 1, max_bytes, None),
            Err(LogError::OffsetBelowStart { .. })
        ));
    }
    if let Some(above) = end.checked_add(1) {
        assert!(matches!(
            log.read(above, max_bytes, None),
            Err(LogError::OffsetAboveEnd { .. })
        ));
    }
    let at_end = log.read(end, max_bytes, None).expect("read at the end");
    assert!(at_end.data.is_empty() && at_end.next_offset == end);

    let mut out = Vec::new();
    let mut offset = start;
    // Offset after the previous batch returned.
    let mut prev_next = i64::MIN;
    while offset < end {
        let r = match log.read(offset, max_bytes, None) {
            Ok(r) => r,
            Err(e @ LogError::Corrupt { .. }) if !strict => return Err(e.to_string()),
            Err(e) => panic!("read at {offset} failed: {e}"),
        };
        assert_eq!((r.log_start_offset, r.end_offset), (start, end));
        if r.data.is_empty() {
            // Nothing at or after `offset` (the data ends in a gap).
            assert_eq!(r.next_offset, offset);
            break;
        }
        let mut iter = BatchIter::new(&r.data);
        let mut first = true;
        for item in iter.by_ref() {
            let (h, bytes) = item.expect("a read returns whole batches");
            // Open does not scan the batches of a sealed segment whose index
            // files check out; reads check the offsets of every batch they
            // return (a damaged one is a `Corrupt` error, above), so these
            // hold for every log (`regression-sealed-segment-*`).
            if first {
                assert!(
                    h.last_offset() >= offset,
                    "first batch ends before {offset}"
                );
                first = false;
            }
            assert!(
                h.base_offset >= prev_next,
                "batches overlap or go backwards"
            );
            assert!(h.last_offset() < end, "batch beyond the end offset");
            if strict {
                assert_eq!(compute_crc(bytes), h.crc, "read a batch with a bad CRC");
            }
            prev_next = h.next_offset();
            out.push(bytes.to_vec());
        }
        assert_eq!(
            iter.position(),
            r.data.len(),
            "a read returned a partial batch"
        );
        assert_eq!(r.next_offset, prev_next);
        assert!(r.next_offset > offset, "read at {offset} did not advance");
        offset = r.next_offset;
    }
    Ok(out)
}

/// Timestamp lookups: `Ok` or an error (a lookup that meets a damaged batch
/// of a sealed segment is `Corrupt`), never a panic nor an offset past the
/// end.
fn lookups(log: &Log) {
    let end = log.end_offset();
    for ts in [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX] {
        match log.offset_for_timestamp(ts) {
            Ok(Some(o)) => assert!(o < end, "timestamp {ts} found at {o}, past the end {end}"),
            Ok(None) | Err(LogError::Corrupt { .. } | LogError::Io { .. }) => {}
            Err(e) => panic!("timestamp {ts} lookup failed unexpectedly: {e}"),
        }
    }
}
