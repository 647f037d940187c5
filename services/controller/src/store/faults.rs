//! Failures injected into the Raft store's writes, for fault tests: the
//! errors a full file-descriptor table (`EMFILE`) or a failing disk (`EIO`)
//! return. A library option (`ServeOptions::store_faults`), not a
//! configuration key; with nothing injected a check is one atomic load.

use std::sync::atomic::{AtomicI32, Ordering};

/// Shared switch: while set, every store write fails with that OS error
/// before it touches the database.
#[derive(Debug, Default)]
pub struct StoreFaults {
    errno: AtomicI32,
}

impl StoreFaults {
    /// Every store write from now on fails with OS error `errno` (for
    /// example `libc::EMFILE` or `libc::EIO`).
    pub fn fail_writes(&self, errno: i32) {
        self.errno.store(errno, Ordering::SeqCst);
    }

    /// Store writes succeed again.
    pub fn heal(&self) {
        self.errno.store(0, Ordering::SeqCst);
    }

    /// The injected error, if any.
    pub(crate) fn check(&self) -> std::io::Result<()> {
        match self.errno.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}
