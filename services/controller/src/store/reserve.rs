//! Space held back for the Raft store. A file of `size` bytes sits next to
//! the sled database; before every store write, if the file system has
//! less than `size` bytes available, the file is deleted, which gives the
//! store that much room even when something else (partition logs on the
//! same disk, another process) filled the disk to the last byte. A failed
//! write would otherwise stop the controller's Raft for good. The file is
//! written again once the disk has room for it three times over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const FILE: &str = "space.reserve";

/// The reserve file of one controller store.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    size: u64,
    /// Whether the file is in place (at its full size).
    held: Mutex<bool>,
}

fn available(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize.max(1)))
}

impl Reserve {
    /// The reserve for a store in `dir`; `size` 0 turns it off. Writes the
    /// file if it is missing and the disk has room.
    pub fn open(dir: &Path, size: u64) -> Reserve {
        let path = dir.join(FILE);
        // A write interrupted by a crash leaves only the temporary file.
        let _ = std::fs::remove_file(path.with_extension("tmp"));
        if size == 0 {
            let _ = std::fs::remove_file(&path);
        }
        // Whatever its size, a reserve file found is space to release.
        let held = size > 0 && std::fs::metadata(&path).is_ok();
        let reserve = Reserve {
            path,
            size,
            held: Mutex::new(held),
        };
        reserve.restore();
        reserve
    }

    /// Whether the reserve file is in place.
    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called before a store write: releases the reserve when the disk has
    /// less than its size available.
    pub fn ensure_room(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if !*held {
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match available(dir) {
            Ok(free) if free >= self.size => {}
            Ok(free) => match std::fs::remove_file(&self.path) {
                Ok(()) => {
                    *held = false;
                    tracing::warn!(path = %self.path.display(), available = free, released = self.size,
                        "disk almost full: released the controller's space reserve so metadata writes go on; free space on this disk");
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot release the controller's space reserve");
                }
            },
            Err(e) => tracing::debug!(error = %e, "cannot sample the controller's disk"),
        }
    }

    /// Writes the reserve file again if it is missing and the disk has
    /// room for it three times over. Blocking: call it off the async
    /// threads.
    pub fn restore(&self) {
        // Held across the write: a store write meanwhile waits rather than
        // finding neither the reserve nor the space it took.
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if self.size == 0 || *held {
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !available(dir).is_ok_and(|free| free / 3 >= self.size) {
            return;
        }
        match self.write() {
            Ok(()) => {
                *held = true;
                tracing::info!(path = %self.path.display(), size = self.size, "controller space reserve in place");
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the controller's space reserve");
            }
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        // Written, not just sized: a sparse file would reserve nothing.
        let chunk = vec![0u8; 1 << 20];
        let mut left = self.size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_kept_while_there_is_room_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::open(dir.path(), 1 << 20);
        assert!(r.is_held());
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE)).unwrap().len(),
            1 << 20
        );
        r.ensure_room();
        assert!(r.is_held(), "plenty of room: kept");
        // Released by hand (as ensure_room does on a full disk), then
        // restored once there is room.
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        *r.held.lock().unwrap() = false;
        r.restore();
        assert!(r.is_held());
        let off = Reserve::open(dir.path(), 0);
        assert!(!off.is_held());
        assert!(
            !dir.path().join(FILE).exists(),
            "a reserve turned off is removed"
        );
    }
}
