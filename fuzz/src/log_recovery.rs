//! Checks for partition-log recovery (`streambus_log::Log::open`) on
//! arbitrary directory contents: segment files, index files, the log start
//! checkpoint, the clean-shutdown marker, the leader-epoch checkpoint, the
//! truncation intent, and the leftovers of an interrupted segment roll
//! (`*.log.rolling`), compaction (`*.cleaned`) or checkpoint write
//! (`*.tmp`).
//!
//! Input layout: byte 0 is a flags byte, then up to [`MAX_FILES`] file
//! entries, each `kind: u8, base: u32 LE, len: u16 LE, bytes[len]` (a short
//! last entry takes what is left). `kind % 8` says which file the entry is
//! (`{base}` is the base offset as 20 digits, a segment's file name):
//!
//! | `kind % 8` | file |
//! |---|---|
//! | 0 | `{base}.log` |
//! | 1 | `{base}.index` |
//! | 2 | `{base}.timeindex` |
//! | 3 | `log-start-offset.checkpoint` (base ignored) |
//! | 4 | `leader-epoch-checkpoint` (see [`epoch_file`]) |
//! | 5 | `truncation.checkpoint` (see [`truncation_file`]) |
//! | 6 | `{base}.log.rolling`, a segment a roll was creating |
//! | 7 | by `(kind >> 3) % 4`: `{base}.log.cleaned`, `{base}.index.cleaned`, `{base}.timeindex.cleaned`, or a checkpoint's `.tmp` file (which checkpoint: `base % 3`) |
//!
//! A later entry for the same file replaces the earlier one. Flags:
//!
//! * bit 0: write the `.clean-shutdown` marker (damage in the active segment
//!   is then an error, not a torn tail);
//! * bit 1: recompute the CRC of every batch that frames in each segment
//!   file (`.log`, `.log.rolling`, `.log.cleaned`), so mutations of batch
//!   contents get past the CRC check;
//! * bits 2-3: `index_interval_bytes`, one of [`INTERVALS`];
//! * bits 4-5: `max_bytes` for the reads, one of [`READ_SIZES`];
//! * bit 6: also reopen once after a crash (drop without `close`);
//! * bit 7: a small `segment_bytes`, so the append after recovery rolls.
//!
//! Until kinds 4 to 7 were added the kind was taken `% 4` and at most 8
//! entries were read; the corpus files of that format were rewritten with
//! their kinds reduced `% 4` and the bytes after their last entry dropped,
//! which keeps their meaning.
//!
//! `Log::open` must return `Ok` or `Err`, never panic. After `Ok`, reading
//! the whole log, looking up timestamps and leader epochs, appending,
//! closing and reopening must not panic either, and what they return must
//! be consistent (see [`check`]).
//!
//! This file is shared, via `#[path]`, with the stable replay test
//! `crates/log/tests/fuzz_corpus.rs`, so it uses nothing but
//! `streambus-log`, `streambus-record`, `bytes`, `tempfile` and the sibling
//! module `corpus`.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use streambus_log::{FsyncPolicy, Log, LogConfig, LogError};
use streambus_record::{
    BatchBuilder, BatchHeader, BatchIter, Compression, HEADER_SIZE, Record, compute_crc,
};

use crate::corpus::scratch_root;

/// Most file entries taken from one input.
pub const MAX_FILES: usize = 16;
/// `index_interval_bytes` choices (flags bits 2-3).
pub const INTERVALS: [u32; 4] = [4096, 0, 1, 128];
/// `max_bytes` choices for reads (flags bits 4-5).
pub const READ_SIZES: [usize; 4] = [4096, 1, 100, 1 << 20];

/// Flag: write the clean-shutdown marker.
pub const CLEAN: u8 = 0x01;
/// Flag: fix the CRCs of the batches in segment files.
pub const FIX_CRC: u8 = 0x02;
/// Flag: reopen once after a simulated crash.
pub const CRASH_REOPEN: u8 = 0x40;
/// Flag: small segments.
pub const SMALL_SEGMENTS: u8 = 0x80;

/// Kind of a segment file `{base}.log`.
pub const LOG: u8 = 0;
/// Kind of `{base}.index`.
pub const INDEX: u8 = 1;
/// Kind of `{base}.timeindex`.
pub const TIME_INDEX: u8 = 2;
/// Kind of `log-start-offset.checkpoint`.
pub const START_CHECKPOINT: u8 = 3;
/// Kind of `leader-epoch-checkpoint`.
pub const EPOCH_CHECKPOINT: u8 = 4;
/// Kind of `truncation.checkpoint`.
pub const TRUNCATION: u8 = 5;
/// Kind of `{base}.log.rolling`.
pub const ROLLING: u8 = 6;
/// Kind of `{base}.log.cleaned`; `| 8` is `.index.cleaned`, `| 16`
/// `.timeindex.cleaned`, `| 24` a checkpoint's `.tmp` file.
pub const CLEANED: u8 = 7;

const CHECKPOINT_FILE: &str = "log-start-offset.checkpoint";
const EPOCH_FILE: &str = "leader-epoch-checkpoint";
const TRUNCATION_FILE: &str = "truncation.checkpoint";
const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
const SEGMENT_EXTS: [&str; 3] = ["log", "index", "timeindex"];
const CHECKPOINTS: [&str; 3] = [CHECKPOINT_FILE, EPOCH_FILE, TRUNCATION_FILE];

/// One file of a fuzzer input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Which file (see the module docs): `kind % 8`, and for
    /// [`CLEANED`] also bits 3-4.
    pub kind: u8,
    /// Segment base offset (the file name).
    pub base: u32,
    /// File contents.
    pub bytes: Vec<u8>,
}

impl FileEntry {
    /// The kind byte as the parser keeps it: `kind % 8`, and for
    /// [`CLEANED`] also `(kind >> 3) % 4` in bits 3-4.
    pub fn canonical_kind(kind: u8) -> u8 {
        match kind % 8 {
            CLEANED => CLEANED | (((kind >> 3) % 4) << 3),
            k => k,
        }
    }

    /// The file's name in the log directory.
    pub fn name(&self) -> String {
        let seg = |ext: &str| format!("{:020}.{ext}", self.base);
        match self.kind % 8 {
            k @ (LOG | INDEX | TIME_INDEX) => seg(SEGMENT_EXTS[usize::from(k)]),
            START_CHECKPOINT => CHECKPOINT_FILE.into(),
            EPOCH_CHECKPOINT => EPOCH_FILE.into(),
            TRUNCATION => TRUNCATION_FILE.into(),
            ROLLING => seg("log.rolling"),
            _ => match self.kind >> 3 {
                3 => format!("{}.tmp", CHECKPOINTS[self.base as usize % 3]),
                sub => seg(&format!("{}.cleaned", SEGMENT_EXTS[usize::from(sub)])),
            },
        }
    }

    /// Whether the file holds batches (CRCs fixed under [`FIX_CRC`]).
    fn is_segment_data(&self) -> bool {
        matches!(self.kind, LOG | ROLLING | CLEANED)
    }

    /// Whether a checkpoint entry's bytes are written as they are: empty,
    /// or starting with the version line's `0`. Otherwise they describe
    /// the file (see [`epoch_file`] and [`truncation_file`]).
    fn is_raw(&self) -> bool {
        self.bytes.first().is_none_or(|&b| b == b'0')
    }
}

/// A parsed fuzzer input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The flags byte.
    pub flags: u8,
    /// The files, in input order.
    pub files: Vec<FileEntry>,
}

/// The leader-epoch checkpoint described by the bytes of a non-raw entry
/// ([`EPOCH_CHECKPOINT`], `base` = `b`): byte 0 is ignored, then each byte
/// pair `(x, y)` is one entry; the first is `(x, b + y)`, each next one adds
/// `x` to the previous epoch and `y` to the previous start offset. A zero
/// step makes a file whose entries do not increase, which open must refuse.
pub fn epoch_entries(base: u32, bytes: &[u8]) -> Vec<(i32, i64)> {
    let mut entries: Vec<(i32, i64)> = Vec::new();
    for pair in bytes.get(1..).unwrap_or_default().chunks_exact(2) {
        let (x, y) = (i32::from(pair[0]), i64::from(pair[1]));
        entries.push(match entries.last() {
            None => (x, i64::from(base) + y),
            Some(&(e, s)) => (e + x, s + y),
        });
    }
    entries
}

/// The text of a leader-epoch checkpoint with `entries`.
pub fn epoch_file(entries: &[(i32, i64)]) -> String {
    let mut text = format!("0\n{}\n", entries.len());
    for (epoch, start) in entries {
        text.push_str(&format!("{epoch} {start}\n"));
    }
    text
}

/// A truncation intent: the new end offset, the segment holding it and
/// the byte position the segment is cut at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// New end offset.
    pub end: i64,
    /// Base offset of the segment that is cut.
    pub segment_base: i64,
    /// Byte position of the cut.
    pub position: u64,
}

/// The truncation intent described by the bytes of a non-raw entry
/// ([`TRUNCATION`], `base` = the segment cut) as `truncate_to` would write
/// it, given the contents of that segment's file (`None`: no such file):
/// byte 1 is `k`, byte 2 a gap `g`, byte 3 flags. The cut is at the start
/// of the `k`-th batch that frames in the segment, the new end that batch's
/// base offset; with fewer batches, at the end of the last one, the new end
/// `g` offsets after it (after a compacted segment's gap). Flags bit 0:
/// the segment file is already cut there (the crash came after that step).
pub fn truncation_file(base: u32, bytes: &[u8], segment: Option<&[u8]>) -> (Truncation, bool) {
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let (k, gap, cut) = (usize::from(byte(1)), i64::from(byte(2)), byte(3) & 1 != 0);
    let base = i64::from(base);
    let mut t = Truncation {
        end: base + gap,
        segment_base: base,
        position: k as u64,
    };
    if let Some(segment) = segment {
        let batches = frame(segment);
        t = match batches.get(k) {
            Some(&(pos, h)) => Truncation {
                end: h.base_offset,
                segment_base: base,
                position: pos as u64,
            },
            None => {
                let (position, next) = batches.last().map_or((0, base), |&(pos, h)| {
                    (pos + h.total_size(), h.next_offset())
                });
                Truncation {
                    end: next.max(base).saturating_add(gap),
                    segment_base: base,
                    position: position as u64,
                }
            }
        };
    }
    (t, cut)
}

/// The text of a truncation intent.
pub fn truncation_text(t: &Truncation) -> String {
    format!("0\n{}\n{}\n{}\n", t.end, t.segment_base, t.position)
}

/// Position and header of every batch that frames, from the start of a
/// segment file, up to the first that does not.
fn frame(buf: &[u8]) -> Vec<(usize, BatchHeader)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= HEADER_SIZE {
        let Ok(h) = BatchHeader::parse(&buf[pos..]) else {
            break;
        };
        let size = h.total_size();
        if size > buf.len() - pos {
            break;
        }
        out.push((pos, h));
        pos += size;
    }
    out
}

/// What [`Input::write_to`] wrote that the checks need.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Base offsets of the `.log` files.
    pub logs: Vec<i64>,
    /// A leader-epoch checkpoint was written.
    pub epoch_file: bool,
    /// Its entries, when it was described rather than raw.
    pub epochs: Option<Vec<(i32, i64)>>,
    /// The truncation intent, when it was described rather than raw.
    pub truncation: Option<Truncation>,
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
            let kind = FileEntry::canonical_kind(rest[0]);
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

    /// Reads a real log directory into an input (for seeds): every file the
    /// input format can name, whose base fits a `u32`; checkpoints as they
    /// are (raw).
    pub fn from_dir(dir: &Path, flags: u8) -> std::io::Result<Input> {
        let mut files = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let bytes = std::fs::read(dir.join(&name))?;
            let fixed = [
                (CHECKPOINT_FILE, START_CHECKPOINT, 0),
                (EPOCH_FILE, EPOCH_CHECKPOINT, 0),
                (TRUNCATION_FILE, TRUNCATION, 0),
                ("log-start-offset.checkpoint.tmp", CLEANED | 24, 0),
                ("leader-epoch-checkpoint.tmp", CLEANED | 24, 1),
                ("truncation.checkpoint.tmp", CLEANED | 24, 2),
            ];
            if let Some(&(_, kind, base)) = fixed.iter().find(|(n, _, _)| *n == name) {
                files.push(FileEntry { kind, base, bytes });
                continue;
            }
            let Some((stem, ext)) = name.split_once('.') else {
                continue;
            };
            let kind = match ext {
                "log" => LOG,
                "index" => INDEX,
                "timeindex" => TIME_INDEX,
                "log.rolling" => ROLLING,
                "log.cleaned" => CLEANED,
                "index.cleaned" => CLEANED | 8,
                "timeindex.cleaned" => CLEANED | 16,
                _ => continue,
            };
            let (20, Ok(base)) = (stem.len(), stem.parse()) else {
                continue;
            };
            files.push(FileEntry { kind, base, bytes });
        }
        Ok(Input { flags, files })
    }

    /// Writes the input's files (and marker) into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<Written> {
        let mut written = Written::default();
        let mut epochs = None;
        let mut truncation = None;
        for f in &self.files {
            let path = dir.join(f.name());
            match f.kind {
                EPOCH_CHECKPOINT => {
                    written.epoch_file = true;
                    epochs = (!f.is_raw()).then(|| epoch_entries(f.base, &f.bytes));
                    if let Some(entries) = &epochs {
                        std::fs::write(path, epoch_file(entries))?;
                        continue;
                    }
                }
                // Described intents need the final segment files.
                TRUNCATION => {
                    truncation = (!f.is_raw()).then_some(f);
                    if truncation.is_some() {
                        continue;
                    }
                }
                _ => {}
            }
            let mut bytes = f.bytes.clone();
            if f.is_segment_data() && self.flags & FIX_CRC != 0 {
                fix_crcs(&mut bytes);
            }
            std::fs::write(path, bytes)?;
        }
        if let Some(f) = truncation {
            let seg = dir.join(format!("{:020}.log", f.base));
            let bytes = std::fs::read(&seg).ok();
            let (t, cut) = truncation_file(f.base, &f.bytes, bytes.as_deref());
            if let Some(bytes) = bytes
                && cut
                && t.position < bytes.len() as u64
            {
                std::fs::write(&seg, &bytes[..t.position as usize])?;
            }
            std::fs::write(dir.join(TRUNCATION_FILE), truncation_text(&t))?;
            written.truncation = Some(t);
        }
        written.epochs = epochs;
        for name in dir_names(dir) {
            if let Some(base) = segment_base(&name, "log") {
                written.logs.push(base);
            }
        }
        if self.flags & CLEAN != 0 {
            std::fs::write(dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        }
        Ok(written)
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
    /// are trusted; a segment a truncation cuts or a roll seals gets its
    /// index files rebuilt).
    fn fully_scanned(&self) -> bool {
        let active = self
            .files
            .iter()
            .filter(|f| f.kind == LOG)
            .map(|f| f.base)
            .max();
        !self.files.iter().any(|f| {
            (f.kind == INDEX || f.kind == TIME_INDEX) && active.is_some_and(|a| f.base < a)
        })
    }
}

/// The names in a directory, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list the log directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Base offset of a `{base:020}.{ext}` name.
fn segment_base(name: &str, ext: &str) -> Option<i64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Recomputes the CRC of every batch that frames, from the start of a
/// segment file, stopping at the first one that does not.
pub fn fix_crcs(buf: &mut [u8]) {
    for (pos, h) in frame(buf) {
        let size = h.total_size();
        let crc = compute_crc(&buf[pos..pos + size]);
        buf[pos + 17..pos + 21].copy_from_slice(&crc.to_be_bytes());
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
    let written = input.write_to(&dir).expect("write the input files");
    check_dir(&input, &written, &dir);
}

/// Opens the log in `dir` (filled from `input`) and checks it.
fn check_dir(input: &Input, written: &Written, dir: &Path) {
    let config = input.config();
    let epochs_valid = written.epochs.as_deref().is_none_or(increasing);
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
    assert!(
        epochs_valid,
        "open accepted a leader-epoch checkpoint whose entries do not increase: {:?}",
        written.epochs
    );
    assert_eq!(
        log.durable_offset(),
        log.end_offset(),
        "not durable after open"
    );
    check_files(dir, &log);
    let (start, end) = (log.log_start_offset(), log.end_offset());
    if let Some(t) = written.truncation {
        // Open finishes the interrupted truncation: the log ends where it
        // said. (Unless the files contradict it: a segment of its own at
        // the new end, or a cut that leaves batches in the segment starting
        // at the new end; no truncation leaves either.)
        let contradicted = (t.end != t.segment_base && written.logs.contains(&t.end))
            || (t.end == t.segment_base && t.position > 0);
        if !contradicted {
            assert_eq!(end, t.end, "open did not finish the truncation {t:?}");
        }
    }
    let epochs = check_epochs(&log);
    if let Some(entries) = &written.epochs {
        assert_eq!(
            epochs,
            epochs_after_open(entries, start, end),
            "leader-epoch cache after open, from the checkpoint {entries:?}"
        );
    }
    let strict = input.fully_scanned();
    let max_bytes = input.read_size();
    let first = read_all(&log, max_bytes, strict);
    if !written.epoch_file
        && let Ok(batches) = &first
    {
        epochs_cover_batches(&epochs, batches, start);
    }
    lookups(&log);

    let log = if input.flags & CRASH_REOPEN != 0 {
        drop(log);
        let log = Log::open(dir, config).expect("reopen after a crash failed");
        check_files(dir, &log);
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
            assert_eq!(
                check_epochs(&log),
                epochs,
                "leader-epoch cache changed on reopen after a crash"
            );
        }
        log
    } else {
        log
    };

    // The log takes a new batch at its end offset after recovery; with a
    // leader epoch (one newer than the latest) when the log has epochs.
    // Only at the very end of the offset range (an end offset of i64::MAX,
    // from a checkpoint or truncation intent) is it refused, and the log
    // stays as it was (`regression-append-past-i64-max`).
    let (start, end) = (log.log_start_offset(), log.end_offset());
    let mut epochs = check_epochs(&log);
    let latest = log.latest_epoch();
    let batch = new_batch(end);
    let with_epoch = latest.is_some() || written.epoch_file;
    let epoch = latest.map_or(0, |l| l.saturating_add(1));
    let appended = if with_epoch {
        log.append_with_epoch(&batch, epoch)
    } else {
        log.append(&batch)
    };
    let new_end = match appended {
        Ok(info) => {
            assert_eq!(info.base_offset, end);
            if with_epoch && latest.is_none_or(|l| epoch > l) {
                epochs.push((epoch, end));
            }
            end + 1
        }
        Err(LogError::OffsetOverflow { .. }) if end == i64::MAX => end,
        Err(e) => panic!("append after recovery failed: {e}"),
    };
    assert_eq!(log.end_offset(), new_end);
    assert_eq!(
        check_epochs(&log),
        epochs,
        "leader-epoch cache after an append"
    );
    if new_end > end {
        let r = log.read(end, 1, None).expect("read of the appended batch");
        // As written: at the end offset, with the epoch if given.
        let mut stored = batch.clone();
        streambus_record::set_base_offset(&mut stored, end);
        if with_epoch {
            streambus_record::set_partition_leader_epoch(&mut stored, epoch);
        }
        assert_eq!(
            &r.data[..],
            &stored[..],
            "appended batch reads back differently"
        );
        assert_eq!(r.next_offset, end + 1);
    }
    let before = read_all(&log, max_bytes, false);
    log.close().expect("close after recovery failed");

    // A log closed cleanly reopens to the same offsets and data.
    let log = Log::open(dir, config).expect("reopen after close failed");
    check_files(dir, &log);
    assert_eq!(
        (log.log_start_offset(), log.end_offset()),
        (start, new_end),
        "offsets changed on reopen after close"
    );
    let after = read_all(&log, max_bytes, false);
    assert_eq!(
        batches(&after),
        batches(&before),
        "data changed on reopen after close"
    );
    assert_eq!(
        check_epochs(&log),
        epochs,
        "leader-epoch cache changed on reopen after close"
    );
    if !written.epoch_file
        && let Ok(batches) = &after
    {
        epochs_cover_batches(&epochs, batches, start);
    }
    lookups(&log);
}

/// Whether epochs and start offsets both strictly increase.
fn increasing(entries: &[(i32, i64)]) -> bool {
    entries
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
}

/// The leader-epoch cache open makes of a valid checkpoint with `entries`
/// for a log from `start` to `end` (Kafka's `truncateFromEnd(end)` then
/// `truncateFromStart(start)`), as far as it describes offsets in the log:
/// entries at or after `end` are dropped; of those at or below `start` the
/// latest is kept, starting at `start`.
fn epochs_after_open(entries: &[(i32, i64)], start: i64, end: i64) -> Vec<(i32, i64)> {
    let below_end: Vec<_> = entries.iter().copied().filter(|&(_, s)| s < end).collect();
    let at_or_below = below_end.iter().filter(|&&(_, s)| s <= start).count();
    let mut out = Vec::new();
    if at_or_below > 0 {
        out.push((below_end[at_or_below - 1].0, start));
    }
    out.extend_from_slice(&below_end[at_or_below..]);
    out.retain(|&(_, s)| s < end);
    out
}

/// Checks the leader-epoch cache against the log's offsets and its own
/// queries, and returns its entries.
fn check_epochs(log: &Log) -> Vec<(i32, i64)> {
    let (start, end) = (log.log_start_offset(), log.end_offset());
    let entries = log.epoch_entries();
    assert!(
        increasing(&entries),
        "leader-epoch entries do not increase: {entries:?}"
    );
    for &(epoch, offset) in &entries {
        assert!(
            epoch >= 0 && (start..end).contains(&offset),
            "leader-epoch entry ({epoch}, {offset}) outside the log {start}..{end}"
        );
    }
    assert_eq!(log.latest_epoch(), entries.last().map(|&(e, _)| e));
    for (i, &(epoch, _)) in entries.iter().enumerate() {
        let until = entries.get(i + 1).map_or(end, |&(_, s)| s);
        assert_eq!(
            log.end_offset_for_epoch(epoch),
            Some((epoch, until)),
            "end offset of epoch {epoch} in {entries:?}"
        );
    }
    match entries.first() {
        Some(&(first, _)) if first > 0 => assert_eq!(log.end_offset_for_epoch(first - 1), None),
        Some(_) => {}
        None => assert_eq!(log.end_offset_for_epoch(i32::MAX), None),
    }
    entries
}

/// A leader-epoch cache that open rebuilt from the batch headers agrees with
/// the batches read: every batch with a leader epoch lies in an epoch at
/// least as new, and every entry after the log start begins at a batch of
/// its epoch.
fn epochs_cover_batches(entries: &[(i32, i64)], batches: &[Vec<u8>], start: i64) {
    let headers: Vec<BatchHeader> = batches
        .iter()
        .map(|b| BatchHeader::parse(b).expect("a batch read back parses"))
        .collect();
    for h in &headers {
        if h.partition_leader_epoch < 0 {
            continue;
        }
        let at = h.base_offset.max(start);
        let covering = entries.iter().rev().find(|&&(_, s)| s <= at);
        assert!(
            covering.is_some_and(|&(e, _)| e >= h.partition_leader_epoch),
            "batch at {} of leader epoch {} is not covered by the rebuilt cache {entries:?}",
            h.base_offset,
            h.partition_leader_epoch
        );
    }
    for &(epoch, offset) in entries {
        if offset > start {
            assert!(
                headers
                    .iter()
                    .any(|h| h.base_offset == offset && h.partition_leader_epoch == epoch),
                "rebuilt leader-epoch entry ({epoch}, {offset}) has no batch"
            );
        }
    }
}

/// After open (and after each reopen) the directory holds only the log's
/// files: one `.log` per segment, index files only for them, the
/// checkpoints. An interrupted roll, compaction, checkpoint write or
/// truncation was finished or undone: no `*.log.rolling`, `*.cleaned`,
/// `*.tmp` nor `truncation.checkpoint` is left, and no `.clean-shutdown`
/// marker (a crash from here on is not a clean shutdown).
fn check_files(dir: &Path, log: &Log) {
    let names = dir_names(dir);
    let mut logs = BTreeMap::new();
    for name in &names {
        if let Some(base) = segment_base(name, "log") {
            logs.insert(base, name);
        }
    }
    for name in &names {
        let known = logs.values().any(|n| *n == name)
            || name == CHECKPOINT_FILE
            || name == EPOCH_FILE
            || ["index", "timeindex"]
                .iter()
                .any(|ext| segment_base(name, ext).is_some_and(|base| logs.contains_key(&base)));
        assert!(known, "{name} is left in the log directory after open");
    }
    assert!(
        names.iter().any(|n| n == EPOCH_FILE),
        "no leader-epoch checkpoint after open"
    );
    assert_eq!(
        logs.len(),
        log.segment_count(),
        "segment files {logs:?} for {} segments",
        log.segment_count()
    );
    let (first, last) = (
        *logs.keys().next().expect("a segment"),
        *logs.keys().next_back().expect("a segment"),
    );
    assert!(
        first <= log.log_start_offset() && last <= log.end_offset(),
        "segments {first}..={last} for the log {}..{}",
        log.log_start_offset(),
        log.end_offset()
    );
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
