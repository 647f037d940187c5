//! Group commit: appenders waiting for durability share one `fdatasync`,
//! and the interval flusher thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::LogError;
use crate::error::IoContext;
use crate::log::{Shared, lock};

/// Coordination of fsyncs, guarded by `Shared::sync`.
#[derive(Debug)]
pub(crate) struct SyncState {
    /// Offsets below this are durable.
    pub durable: i64,
    /// An fsync is running; others wait for it instead of starting one.
    pub in_progress: bool,
    /// Bumped by every truncation, so an fsync that started before a
    /// truncation does not claim durability of offsets that were removed.
    pub generation: u64,
}

impl SyncState {
    pub fn new(durable: i64) -> SyncState {
        SyncState {
            durable,
            in_progress: false,
            generation: 0,
        }
    }
}

/// Current truncation generation.
pub(crate) fn generation(shared: &Shared) -> u64 {
    lock(&shared.sync).generation
}

/// Raises the durable offset (after a roll or truncation synced data).
impl Shared {
    pub fn advance_durable(&self, offset: i64) {
        let mut g = lock(&self.sync);
        if offset > g.durable {
            g.durable = offset;
            self.durable.store(offset, Ordering::Release);
        }
        drop(g);
        self.sync_done.notify_all();
    }

    /// After a truncation to `end`: everything below `end` was synced by the
    /// truncation itself.
    pub fn reset_durable(&self, end: i64) {
        let mut g = lock(&self.sync);
        g.generation += 1;
        g.durable = end;
        self.durable.store(end, Ordering::Release);
        drop(g);
        self.sync_done.notify_all();
    }
}

/// Returns once every offset below `target` is durable. One caller at a
/// time runs `fdatasync` on the active segment for everything appended so
/// far; the others wait for it and are usually covered by it.
///
/// `generation` is the truncation generation seen when the caller's data
/// was written: if a truncation happened since and the data is not durable,
/// it was removed, and the caller gets [`LogError::TruncatedDuringAppend`].
pub(crate) fn sync_until(shared: &Shared, target: i64, generation: u64) -> Result<(), LogError> {
    let mut g = lock(&shared.sync);
    loop {
        if g.durable >= target {
            return Ok(());
        }
        if g.generation != generation {
            return Err(LogError::TruncatedDuringAppend { offset: target - 1 });
        }
        shared.check_failed()?;
        if g.in_progress {
            g = shared.sync_done.wait(g).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        g.in_progress = true;
        let started = g.generation;
        drop(g);
        let (file, path, end) = {
            let st = shared.read_state();
            let active = st.active();
            (active.file.clone(), active.path.clone(), st.end())
        };
        let result = file.sync_data().ctx(|| format!("fsync {}", path.display()));
        g = lock(&shared.sync);
        g.in_progress = false;
        if let Err(e) = result {
            // After a failed fsync the kernel may have dropped the dirty
            // pages: nothing written since the last good fsync can be
            // trusted, so stop accepting writes until a reopen recovers.
            drop(g);
            shared.fail(e.to_string());
            shared.sync_done.notify_all();
            return Err(e);
        }
        if g.generation == started && end > g.durable {
            g.durable = end;
            shared.durable.store(end, Ordering::Release);
        }
        shared.sync_done.notify_all();
    }
}

/// Starts the thread that fsyncs every `every` while there is unsynced data.
pub(crate) fn spawn_flusher(
    shared: Arc<Shared>,
    every: Duration,
) -> Result<JoinHandle<()>, LogError> {
    std::thread::Builder::new()
        .name("log-flusher".into())
        .spawn(move || {
            let mut stop = lock(&shared.stop);
            loop {
                let (guard, _) = shared
                    .stop_signal
                    .wait_timeout(stop, every)
                    .unwrap_or_else(|e| e.into_inner());
                stop = guard;
                if *stop {
                    return;
                }
                drop(stop);
                let target = shared.end.load(Ordering::Acquire);
                if shared.durable.load(Ordering::Acquire) < target {
                    let generation = generation(&shared);
                    if let Err(e) = sync_until(&shared, target, generation) {
                        tracing::warn!(dir = %shared.dir.display(), error = %e, "interval fsync failed");
                    }
                }
                stop = lock(&shared.stop);
            }
        })
        .ctx(|| "spawn log flusher thread".to_string())
}
