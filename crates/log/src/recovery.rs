//! Opening a log directory: finding segments, checking or rebuilding their
//! indexes, and cutting a torn or corrupt tail off the active segment.

use std::path::Path;

use crate::checkpoint;
use crate::error::IoContext;
use crate::index::IndexWriter;
use crate::segment::{
    ScanRules, Segment, load_indexes, open_rw, parse_segment_name, remove_if_exists, scan,
    segment_file, sync_dir,
};
use crate::{LogConfig, LogError};

/// Marker written by a clean `close`: the active segment's index files are
/// complete, so opening needs only a short tail scan.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";

/// Segments and log start offset found on disk.
pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub log_start: i64,
}

/// Opens (creating if needed) a log directory and recovers it.
pub(crate) fn recover(dir: &Path, config: &LogConfig, now_ms: i64) -> Result<Recovered, LogError> {
    std::fs::create_dir_all(dir).ctx(|| format!("create log directory {}", dir.display()))?;
    let marker = dir.join(CLEAN_SHUTDOWN_FILE);
    let clean = marker.exists();
    remove_if_exists(&marker)?;

    let mut bases = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = parse_segment_name(&name, "log") {
            bases.push(base);
        } else if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            // Leftovers of an interrupted compaction or checkpoint write.
            remove_if_exists(&entry.path())?;
        } else {
            others.push(name);
        }
    }
    bases.sort_unstable();
    // Index files whose segment is gone (deleted by retention or truncation).
    for name in others {
        let base =
            parse_segment_name(&name, "index").or_else(|| parse_segment_name(&name, "timeindex"));
        if let Some(base) = base
            && bases.binary_search(&base).is_err()
        {
            remove_if_exists(&dir.join(&name))?;
        }
    }

    let checkpoint = checkpoint::read(dir);
    // Segments wholly below the checkpointed start: retention was
    // interrupted after writing the checkpoint.
    if let Some(start) = checkpoint {
        while bases.len() > 1 && bases[1] <= start {
            delete_segment_files(dir, bases.remove(0))?;
        }
    }
    if bases.is_empty() {
        let base = checkpoint.unwrap_or(0).max(0);
        let segment = Segment::create(dir, base)?;
        return Ok(Recovered {
            segments: vec![segment],
            log_start: base,
        });
    }

    let mut segments = Vec::with_capacity(bases.len());
    let last = bases.len() - 1;
    for (i, &base) in bases.iter().enumerate() {
        let segment = if i == last {
            load_active(dir, base, config, clean, now_ms)?
        } else {
            load_sealed(dir, base, config)?
        };
        if let Some(prev) = segments.last() {
            let prev: &Segment = prev;
            if prev.next_offset > base {
                return Err(LogError::Corrupt {
                    file: prev.path.clone(),
                    position: prev.size,
                    reason: format!(
                        "segment ends at offset {} but the next segment starts at {base}",
                        prev.next_offset
                    ),
                });
            }
        }
        segments.push(segment);
    }
    sync_dir(dir)?;
    let first = segments[0].base;
    let end = segments[last].next_offset;
    let log_start = checkpoint.unwrap_or(first).clamp(first, end);
    Ok(Recovered {
        segments,
        log_start,
    })
}

pub(crate) fn delete_segment_files(dir: &Path, base: i64) -> Result<(), LogError> {
    for ext in ["log", "index", "timeindex"] {
        remove_if_exists(&segment_file(dir, base, ext))?;
    }
    Ok(())
}

fn open_segment_file(
    dir: &Path,
    base: i64,
) -> Result<(std::fs::File, std::path::PathBuf, u64), LogError> {
    let path = segment_file(dir, base, "log");
    let file = open_rw(&path, false)?;
    let size = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    Ok((file, path, size))
}

/// Trusts index files only if they match the log and the tail after the
/// last entry scans cleanly to the end of the file.
fn try_indexes(
    dir: &Path,
    base: i64,
    file: &std::fs::File,
    path: &Path,
    size: u64,
    config: &LogConfig,
    contiguous: bool,
) -> Option<(IndexWriter, i64)> {
    let (mut idx, resume) = match load_indexes(dir, base, file, path, size) {
        Ok(v) => v,
        Err(reason) => {
            tracing::debug!(segment = %path.display(), %reason, "rebuilding segment index");
            return None;
        }
    };
    let resume_offset = base + i64::from(idx.index.last().map_or(0, |(r, _)| r));
    idx.bytes_since_entry = 0;
    let rules = ScanRules {
        verify_crc: true,
        contiguous,
        interval: config.index_interval_bytes,
    };
    let scan = scan(file, base, resume, resume_offset, size, rules, &mut idx).ok()?;
    let time_index_beyond_end = idx
        .time_index
        .last()
        .is_some_and(|(_, rel)| base + i64::from(rel) >= scan.next_offset);
    if scan.error.is_some() || scan.valid_size != size || time_index_beyond_end {
        tracing::debug!(segment = %path.display(), "index does not match the log, rebuilding");
        return None;
    }
    Some((idx, scan.next_offset))
}

/// Loads a sealed segment. Sealed segments were fsynced before the next
/// segment was created, so any damage is corruption and an error.
fn load_sealed(dir: &Path, base: i64, config: &LogConfig) -> Result<Segment, LogError> {
    let (file, path, size) = open_segment_file(dir, base)?;
    if let Some((idx, next)) = try_indexes(dir, base, &file, &path, size, config, false) {
        return Ok(Segment::from_parts(base, file, path, size, next, idx));
    }
    let mut idx = IndexWriter::new();
    let rules = ScanRules {
        verify_crc: true,
        contiguous: false,
        interval: config.index_interval_bytes,
    };
    let scan = scan(&file, base, 0, base, size, rules, &mut idx)
        .ctx(|| format!("read {}", path.display()))?;
    if let Some((position, reason)) = scan.error {
        return Err(LogError::Corrupt {
            file: path,
            position,
            reason,
        });
    }
    let segment = Segment::from_parts(base, file, path, size, scan.next_offset, idx);
    segment.write_indexes(dir)?;
    Ok(segment)
}

/// Loads the active (newest) segment, truncating a torn or corrupt tail:
/// anything after the last batch that is whole, has a valid CRC and the
/// expected offset. Fsynced data is never cut, since fsynced batches are whole.
fn load_active(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    clean: bool,
    now_ms: i64,
) -> Result<Segment, LogError> {
    let (file, path, size) = open_segment_file(dir, base)?;
    let trusted = if clean {
        try_indexes(dir, base, &file, &path, size, config, true)
    } else {
        None
    };
    let (idx, next, valid) = match trusted {
        Some((idx, next)) => (idx, next, size),
        None => {
            let mut idx = IndexWriter::new();
            let rules = ScanRules {
                verify_crc: true,
                contiguous: true,
                interval: config.index_interval_bytes,
            };
            let scan = scan(&file, base, 0, base, size, rules, &mut idx)
                .ctx(|| format!("read {}", path.display()))?;
            if let Some((position, reason)) = &scan.error {
                tracing::warn!(
                    segment = %path.display(),
                    position,
                    dropped_bytes = size - position,
                    %reason,
                    "truncating torn or corrupt tail of the active segment"
                );
                file.set_len(scan.valid_size)
                    .ctx(|| format!("truncate {}", path.display()))?;
            }
            (idx, scan.next_offset, scan.valid_size)
        }
    };
    file.sync_data()
        .ctx(|| format!("fsync {}", path.display()))?;
    let mut segment = Segment::from_parts(base, file, path, valid, next, idx);
    if valid > 0 {
        segment.first_append_ms = Some(now_ms);
    }
    Ok(segment)
}
