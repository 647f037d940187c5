//! Group commit: appenders waiting for durability share one `fdatasync`;
//! and the [`Flusher`], one thread that fsyncs many interval logs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
/// While a roll is in progress the segment before the active one may not
/// be durable yet, so the syncing caller first waits for the roll (which
/// fsyncs it and advances the durable offset past it): the durable offset
/// never claims bytes of a segment that was not synced.
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
        let captured = {
            let st = shared.read_state();
            if shared.is_rolling() {
                None
            } else {
                let active = st.active();
                Some((active.file.clone(), active.path.clone(), st.end()))
            }
        };
        let Some((file, path, end)) = captured else {
            g = lock(&shared.sync);
            g.in_progress = false;
            drop(g);
            shared.sync_done.notify_all();
            shared.wait_for_roll();
            g = lock(&shared.sync);
            continue;
        };
        let result = shared.disk.sync_file(&*file, &path);
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

/// One background thread that fsyncs every registered
/// [`FsyncPolicy::Interval`](crate::FsyncPolicy::Interval) log whose
/// interval has passed and that has unsynced data, so many partitions do
/// not mean many threads.
///
/// Logs are held weakly: a dropped log unregisters itself (and would be
/// skipped anyway). A log opened with the interval policy and no flusher in
/// its [`OpenOptions`](crate::OpenOptions) uses [`Flusher::global`]. Clones
/// share the thread; it stops when the last clone (logs hold one) is
/// dropped. The fsyncs of one round run one after the other, so a slow disk
/// delays the other logs of the same flusher.
#[derive(Debug, Clone)]
pub struct Flusher {
    handle: Arc<FlusherHandle>,
}

#[derive(Debug)]
struct FlusherHandle {
    shared: Arc<FlusherShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct FlusherShared {
    state: Mutex<FlusherState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct FlusherState {
    logs: Vec<Registered>,
    stop: bool,
}

#[derive(Debug)]
struct Registered {
    log: Weak<Shared>,
    every: Duration,
    due: Instant,
}

static GLOBAL: Mutex<Option<Flusher>> = Mutex::new(None);

impl Flusher {
    /// Starts a flusher thread.
    pub fn new() -> Result<Flusher, LogError> {
        let shared = Arc::new(FlusherShared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || worker.run())
            .ctx(|| "spawn log flusher thread".to_string())?;
        Ok(Flusher {
            handle: Arc::new(FlusherHandle {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The process-wide flusher, started on first use; it lives as long as
    /// the process.
    pub fn global() -> Result<Flusher, LogError> {
        let mut g = lock(&GLOBAL);
        if let Some(f) = &*g {
            return Ok(f.clone());
        }
        let f = Flusher::new()?;
        *g = Some(f.clone());
        Ok(f)
    }

    /// Logs currently registered and alive.
    pub fn registered(&self) -> usize {
        lock(&self.handle.shared.state)
            .logs
            .iter()
            .filter(|r| r.log.strong_count() > 0)
            .count()
    }

    pub(crate) fn register(&self, log: &Arc<Shared>, every: Duration) {
        let mut st = lock(&self.handle.shared.state);
        st.logs.push(Registered {
            log: Arc::downgrade(log),
            every,
            due: Instant::now() + every,
        });
        drop(st);
        self.handle.shared.wake.notify_all();
    }

    pub(crate) fn unregister(&self, log: &Arc<Shared>) {
        let weak = Arc::downgrade(log);
        lock(&self.handle.shared.state)
            .logs
            .retain(|r| !r.log.ptr_eq(&weak) && r.log.strong_count() > 0);
    }
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take()
            && t.thread().id() != std::thread::current().id()
            && t.join().is_err()
        {
            tracing::error!("log flusher thread panicked");
        }
    }
}

impl FlusherShared {
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            let mut next: Option<Instant> = None;
            st.logs.retain_mut(|r| {
                let Some(log) = r.log.upgrade() else {
                    return false;
                };
                if r.due <= now {
                    due.push(log);
                    r.due = now + r.every;
                }
                next = Some(next.map_or(r.due, |n| n.min(r.due)));
                true
            });
            drop(st);
            for log in due {
                flush_interval_log(&log);
            }
            st = lock(&self.state);
            if st.stop {
                return;
            }
            st = match next {
                None => self.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(t) => match t.checked_duration_since(Instant::now()) {
                    Some(d) if !d.is_zero() => {
                        self.wake
                            .wait_timeout(st, d)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    _ => st,
                },
            };
        }
    }
}

/// One interval flush: skipped for a failed log or when nothing is unsynced.
fn flush_interval_log(shared: &Shared) {
    if lock(&shared.failed).is_some() {
        return;
    }
    let target = shared.end.load(Ordering::Acquire);
    if shared.durable.load(Ordering::Acquire) >= target {
        return;
    }
    let generation = generation(shared);
    if let Err(e) = sync_until(shared, target, generation) {
        tracing::warn!(dir = %shared.dir.display(), error = %e, "interval fsync failed");
    }
}
