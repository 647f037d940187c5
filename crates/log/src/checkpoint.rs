//! Small offset files: the log start offset checkpoint
//! (`log-start-offset.checkpoint`) and the truncation intent
//! (`truncation.checkpoint`); the leader-epoch checkpoint (`epoch.rs`) is
//! written the same way ([`write_atomic`]) and read by the same rules.
//!
//! Text, Kafka style: a version line (`0`) then the offset. Written to a
//! temporary file, fsynced, renamed over the old one and the directory
//! fsynced, so after a crash the file is either the old one, the new one or
//! (if there was none) absent — never partial. Reading therefore treats an
//! absent file as "no checkpoint" but an unreadable or malformed one as an
//! error ([`LogError::Io`] / [`LogError::Corrupt`]): it cannot come from a
//! crash, and guessing would be worse. Silently ignoring a damaged log start
//! checkpoint would resurrect deleted records; ignoring a damaged truncation
//! intent would leave a half-done truncation.

use std::path::Path;

use crate::LogError;
use crate::io::Disk;

pub(crate) const CHECKPOINT_FILE: &str = "log-start-offset.checkpoint";

/// Written by `truncate_to` before it changes any file; holds the new end
/// offset, the base of the segment holding it and the byte position the
/// segment is cut at. Recovery that finds it finishes the truncation.
pub(crate) const TRUNCATION_FILE: &str = "truncation.checkpoint";

/// Reads an offset file holding `n` values; `None` if absent.
pub(crate) fn read_values(
    disk: &Disk,
    dir: &Path,
    name: &str,
    n: usize,
) -> Result<Option<Vec<i64>>, LogError> {
    let path = dir.join(name);
    let Some(bytes) = disk.read_file(&path)? else {
        return Ok(None);
    };
    let corrupt = |reason: &str| LogError::Corrupt {
        file: path.clone(),
        position: 0,
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not UTF-8 text"))?;
    let mut lines = text.lines();
    if lines.next() != Some("0") {
        return Err(corrupt("unknown version (expected a first line \"0\")"));
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let v: i64 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .filter(|v| *v >= 0)
            .ok_or_else(|| corrupt("missing, malformed or negative offset"))?;
        values.push(v);
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(corrupt("trailing data"));
    }
    Ok(Some(values))
}

/// Durably replaces an offset file.
pub(crate) fn write_values(
    disk: &Disk,
    dir: &Path,
    name: &str,
    values: &[i64],
) -> Result<(), LogError> {
    let mut text = String::from("0\n");
    for v in values {
        text.push_str(&format!("{v}\n"));
    }
    write_atomic(disk, dir, name, text.as_bytes())
}

/// Durably replaces the small file `name` in `dir`: written to
/// `{name}.tmp`, fsynced, renamed over the old one, directory fsynced.
/// Recovery deletes leftover `*.tmp` files.
pub(crate) fn write_atomic(
    disk: &Disk,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    disk.write_synced(&tmp, bytes)?;
    disk.rename(&tmp, &dir.join(name))?;
    disk.sync_dir(dir)
}

/// Reads the log start checkpoint.
pub(crate) fn read(disk: &Disk, dir: &Path) -> Result<Option<i64>, LogError> {
    Ok(read_values(disk, dir, CHECKPOINT_FILE, 1)?.map(|v| v[0]))
}

/// Durably replaces the log start checkpoint.
pub(crate) fn write(disk: &Disk, dir: &Path, log_start: i64) -> Result<(), LogError> {
    write_values(disk, dir, CHECKPOINT_FILE, &[log_start])
}

/// The cut of an interrupted `truncate_to`: the new end offset, the
/// segment holding it and the byte position it is cut at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TruncationIntent {
    pub end: i64,
    pub segment_base: i64,
    pub position: u64,
}

pub(crate) fn read_truncation(
    disk: &Disk,
    dir: &Path,
) -> Result<Option<TruncationIntent>, LogError> {
    Ok(
        read_values(disk, dir, TRUNCATION_FILE, 3)?.map(|v| TruncationIntent {
            end: v[0],
            segment_base: v[1],
            position: v[2] as u64,
        }),
    )
}

pub(crate) fn write_truncation(
    disk: &Disk,
    dir: &Path,
    t: TruncationIntent,
) -> Result<(), LogError> {
    write_values(
        disk,
        dir,
        TRUNCATION_FILE,
        &[t.end, t.segment_base, t.position as i64],
    )
}
