//! The log start offset checkpoint (`log-start-offset.checkpoint`).
//!
//! Text, Kafka style: a version line (`0`) then the offset. Written to a
//! temporary file, fsynced and renamed, so it is either old or new.

use std::path::Path;

use crate::LogError;
use crate::error::IoContext;
use crate::segment::{sync_dir, write_synced};

pub(crate) const CHECKPOINT_FILE: &str = "log-start-offset.checkpoint";

/// Reads the checkpoint; `None` if absent or unreadable (the log then
/// starts at its first segment).
pub(crate) fn read(dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT_FILE)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "0" {
        return None;
    }
    lines.next()?.trim().parse().ok()
}

/// Durably replaces the checkpoint.
pub(crate) fn write(dir: &Path, log_start: i64) -> Result<(), LogError> {
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    write_synced(&tmp, format!("0\n{log_start}\n").as_bytes())?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE)).ctx(|| format!("rename {}", tmp.display()))?;
    sync_dir(dir)
}
