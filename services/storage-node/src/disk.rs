//! The data directory's disk usage and the produce watermark: past it,
//! appends from producers are refused with `DISK_FULL` (retriable) before
//! the file system runs out, so reads, replication, deletes and the
//! controller's metadata (often on the same disk) keep the space they need.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use streambus_proto::{Error, Reason};

/// How old a usage sample may be when an append checks the watermark.
const MAX_SAMPLE_AGE: Duration = Duration::from_millis(50);

/// One sample of the file system holding the data directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Size of the file system, in bytes.
    pub total: u64,
    /// Bytes an unprivileged writer can still use.
    pub available: u64,
    /// Bytes in use (total minus free, including the root reserve).
    pub used: u64,
}

impl Usage {
    /// Percentage used the way `df` shows it: used / (used + available).
    pub fn used_percent(&self) -> f64 {
        let denominator = self.used.saturating_add(self.available);
        if denominator == 0 {
            return 0.0;
        }
        self.used as f64 * 100.0 / denominator as f64
    }
}

/// The produce watermark: refuse below `min_free_bytes` available or above
/// `max_used_percent` used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermark {
    /// Fewest available bytes with which produce is still accepted.
    pub min_free_bytes: u64,
    /// Highest used percentage at which produce is still accepted
    /// (100 = no percentage limit).
    pub max_used_percent: u8,
}

impl Watermark {
    /// Whether `usage` is past the watermark.
    pub fn is_past(&self, usage: &Usage) -> bool {
        usage.available < self.min_free_bytes
            || (self.max_used_percent < 100
                && usage.used_percent() > f64::from(self.max_used_percent))
    }
}

/// Samples the data directory's file system and applies the watermark.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    node_id: u64,
    watermark: Watermark,
    sample: Mutex<Option<(Instant, Usage)>>,
    full: AtomicBool,
}

impl Disk {
    /// A disk for `dir` (which must exist).
    pub fn new(dir: &Path, node_id: u64, watermark: Watermark) -> Disk {
        Disk {
            dir: dir.to_path_buf(),
            node_id,
            watermark,
            sample: Mutex::new(None),
            full: AtomicBool::new(false),
        }
    }

    /// Samples the file system now.
    pub fn refresh(&self) -> std::io::Result<Usage> {
        let st = rustix::fs::statvfs(&self.dir)?;
        let unit = st.f_frsize.max(1);
        let usage = Usage {
            total: st.f_blocks.saturating_mul(unit),
            available: st.f_bavail.saturating_mul(unit),
            used: st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(unit),
        };
        let full = self.watermark.is_past(&usage);
        if full != self.full.swap(full, Ordering::AcqRel) {
            if full {
                tracing::warn!(
                    node_id = self.node_id,
                    available = usage.available,
                    used_percent = usage.used_percent(),
                    "disk past its watermark: produce is refused until space is freed"
                );
            } else {
                tracing::info!(
                    node_id = self.node_id,
                    available = usage.available,
                    "disk below its watermark again: produce accepted"
                );
            }
        }
        *self.sample.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), usage));
        Ok(usage)
    }

    /// The latest sample (refreshed if it is older than a few ms).
    pub fn usage(&self) -> std::io::Result<Usage> {
        let cached = *self.sample.lock().unwrap_or_else(|p| p.into_inner());
        match cached {
            Some((at, usage)) if at.elapsed() < MAX_SAMPLE_AGE => Ok(usage),
            _ => self.refresh(),
        }
    }

    /// Whether the last sample was past the watermark.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// `DISK_FULL` if the disk is past the watermark (on a sample at most a
    /// few ms old). A file system that cannot be sampled does not block
    /// produce: the write itself reports what is wrong.
    pub fn check_produce(&self) -> Result<(), Error> {
        let Ok(usage) = self.usage() else {
            return Ok(());
        };
        if !self.watermark.is_past(&usage) {
            return Ok(());
        }
        Err(Error::new(
            Reason::DiskFull,
            format!(
                "storage node {}: {} bytes free of {} ({:.1}% used) in {}; produce is refused below {} bytes free or above {}% used until space is freed (delete a topic or lower its retention)",
                self.node_id,
                usage.available,
                usage.total,
                usage.used_percent(),
                self.dir.display(),
                self.watermark.min_free_bytes,
                self.watermark.max_used_percent,
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn usage(total: u64, available: u64) -> Usage {
        Usage {
            total,
            available,
            used: total - available,
        }
    }

    #[test]
    fn the_watermark_trips_on_free_bytes_or_on_the_used_percentage() {
        let w = Watermark {
            min_free_bytes: 10 * MIB,
            max_used_percent: 95,
        };
        assert!(!w.is_past(&usage(1000 * MIB, 100 * MIB)));
        assert!(
            w.is_past(&usage(1000 * MIB, 9 * MIB)),
            "below the free bytes"
        );
        assert!(w.is_past(&usage(1000 * MIB, 40 * MIB)), "96% used");
        assert!(!w.is_past(&usage(1000 * MIB, 50 * MIB)), "exactly 95%");
        let bytes_only = Watermark {
            max_used_percent: 100,
            ..w
        };
        assert!(!bytes_only.is_past(&usage(1_000_000 * MIB, 11 * MIB)));
    }

    #[test]
    fn used_percent_counts_the_root_reserve_as_df_does() {
        // 100 blocks, 10 free of which 5 are reserved for root.
        let u = Usage {
            total: 100,
            available: 5,
            used: 90,
        };
        assert!((u.used_percent() - 94.736_842).abs() < 1e-3);
    }

    #[test]
    fn a_real_directory_is_sampled_and_produce_refused_past_the_watermark() {
        let tmp = tempfile::tempdir().unwrap();
        let open = Disk::new(
            tmp.path(),
            7,
            Watermark {
                min_free_bytes: 0,
                max_used_percent: 100,
            },
        );
        let u = open.refresh().unwrap();
        assert!(u.total > 0 && u.available <= u.total);
        open.check_produce().unwrap();
        assert!(!open.is_full());
        let full = Disk::new(
            tmp.path(),
            7,
            Watermark {
                min_free_bytes: u64::MAX,
                max_used_percent: 100,
            },
        );
        let err = full.check_produce().unwrap_err();
        assert_eq!(err.reason, Reason::DiskFull);
        assert!(err.message.contains("storage node 7"), "{}", err.message);
        assert!(full.is_full());
    }
}
