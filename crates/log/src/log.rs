//! The [`Log`] type: open, append, roll, flush, close.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use streambus_record::{RecordError, set_base_offset, set_partition_leader_epoch, validate_batch};

use crate::io::{Disk, Io, IoFile, OpenMode, StdIo};
use crate::recovery::{CLEAN_SHUTDOWN_FILE, recover};
use crate::segment::{ROLLING_EXT, Segment, segment_file, write_index_files};
use crate::sync::{Flusher, SyncState};
use crate::{FsyncPolicy, LogConfig, LogError};

/// How [`Log::open_with`] opens a log: which file system, which fsync
/// counter, which interval flusher. `OpenOptions::default()` is what
/// [`Log::open`] uses: the real file system, a counter of its own and the
/// process-wide flusher.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    io: Option<Arc<dyn Io>>,
    fsync_counter: Option<Arc<AtomicU64>>,
    flusher: Option<Flusher>,
}

impl OpenOptions {
    /// The defaults (see the type docs).
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// Uses `io` for every file operation instead of [`StdIo`].
    pub fn io(mut self, io: Arc<dyn Io>) -> OpenOptions {
        self.io = Some(io);
        self
    }

    /// Counts every data and directory fsync of the log into `counter`
    /// (share one counter between many logs for a per-node metric).
    pub fn fsync_counter(mut self, counter: Arc<AtomicU64>) -> OpenOptions {
        self.fsync_counter = Some(counter);
        self
    }

    /// Registers the log with `flusher` under [`FsyncPolicy::Interval`]
    /// instead of the process-wide default one.
    pub fn flusher(mut self, flusher: Flusher) -> OpenOptions {
        self.flusher = Some(flusher);
        self
    }
}

/// What `append` did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The batch's `maxTimestamp`.
    pub max_timestamp: i64,
    /// Records in the batch.
    pub record_count: i32,
    /// Bytes written.
    pub size: usize,
}

/// A partition log stored in one directory. See the crate docs.
#[derive(Debug)]
pub struct Log {
    pub(crate) shared: Arc<Shared>,
    /// The interval flusher this log is registered with.
    flusher: Option<Flusher>,
}

/// State shared with the background flusher.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub disk: Disk,
    pub config: LogConfig,
    pub state: RwLock<State>,
    /// Serialises retention, compaction and truncation.
    pub maintenance: Mutex<()>,
    pub sync: Mutex<SyncState>,
    pub sync_done: Condvar,
    pub durable: AtomicI64,
    pub end: AtomicI64,
    pub start: AtomicI64,
    /// Set after a failed fsync or unrecoverable write.
    pub failed: Mutex<Option<String>>,
    /// A roll is between [`Shared::start_roll`] and [`Shared::finish_roll`]:
    /// the segment before the active one is not yet known to be durable.
    /// Changed only while holding the `state` write lock (so holding the
    /// state lock gives a stable view); waited on with `roll_done`.
    pub rolling: Mutex<bool>,
    pub roll_done: Condvar,
}

/// A roll whose sealed segment still has to be made durable (outside the
/// state lock).
#[derive(Debug)]
pub(crate) struct RollJob {
    sealed_base: i64,
    sealed_file: Arc<dyn IoFile>,
    sealed_path: PathBuf,
    sealed_idx: crate::index::IndexWriter,
    /// Base of the new active segment (= end of the sealed one).
    new_base: i64,
}

/// Segments and offsets, guarded by `Shared::state`.
#[derive(Debug)]
pub(crate) struct State {
    /// Segments by increasing base offset; the last one is active.
    pub segments: Vec<Segment>,
    pub log_start: i64,
}

impl State {
    pub fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }
    pub fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }
    pub fn end(&self) -> i64 {
        self.active().next_offset
    }
    /// Number of leading segments that are sealed and durable: all but the
    /// active one, and but the one being sealed while a roll is in progress.
    pub fn sealed_count(&self, rolling: bool) -> usize {
        self.segments.len() - 1 - usize::from(rolling && self.segments.len() > 1)
    }
    /// Index of the last segment whose base is `<= offset` (0 if none).
    pub fn segment_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
    pub fn check_failed(&self) -> Result<(), LogError> {
        match &*lock(&self.failed) {
            Some(reason) => Err(LogError::Failed(reason.clone())),
            None => Ok(()),
        }
    }
    pub fn fail(&self, reason: String) {
        tracing::error!(dir = %self.dir.display(), %reason, "log failed");
        lock(&self.failed).get_or_insert(reason);
    }

    /// Whether a roll is in progress (stable while the state lock is held).
    pub fn is_rolling(&self) -> bool {
        *lock(&self.rolling)
    }

    /// Waits until no roll is in progress.
    pub fn wait_for_roll(&self) {
        let mut r = lock(&self.rolling);
        while *r {
            r = self.roll_done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// First half of a roll, under the state write lock: creates the next
    /// segment (as `{base}.log.rolling`) at the end offset and switches
    /// appends to it. No fsync happens here; [`Shared::finish_roll`] must
    /// follow, without the lock. The caller makes sure no roll is in
    /// progress.
    pub fn start_roll(&self, st: &mut State) -> Result<RollJob, LogError> {
        debug_assert!(!self.is_rolling());
        let base = st.end();
        let path = segment_file(&self.dir, base, ROLLING_EXT);
        let file = match self.disk.open(&path, OpenMode::CreateNew) {
            Ok(f) => f,
            Err(e) => {
                self.fail(format!("segment roll failed: {e}"));
                return Err(e);
            }
        };
        let sealed = st.active_mut();
        sealed.idx.finish_time_index();
        let job = RollJob {
            sealed_base: sealed.base,
            sealed_file: sealed.file.clone(),
            sealed_path: sealed.path.clone(),
            sealed_idx: sealed.idx.clone(),
            new_base: base,
        };
        st.segments.push(Segment::empty(base, file, path));
        *lock(&self.rolling) = true;
        Ok(job)
    }

    /// Second half of a roll, without the state lock: fsyncs the sealed
    /// segment, writes its index files, renames the new segment to its
    /// final `.log` name and fsyncs the directory; only then is the durable
    /// offset advanced past the sealed segment. Reads and appends (to the
    /// new segment) go on meanwhile. On failure the log is failed.
    pub fn finish_roll(&self, job: RollJob) -> Result<(), LogError> {
        let final_path = segment_file(&self.dir, job.new_base, "log");
        let rolling_path = segment_file(&self.dir, job.new_base, ROLLING_EXT);
        let result = (|| {
            self.disk.sync_file(&*job.sealed_file, &job.sealed_path)?;
            write_index_files(&self.disk, &self.dir, job.sealed_base, &job.sealed_idx)?;
            self.disk.rename(&rolling_path, &final_path)?;
            self.disk.sync_dir(&self.dir)
        })();
        {
            let mut st = self.write_state();
            if result.is_ok()
                && let Some(s) = st.segments.iter_mut().find(|s| s.base == job.new_base)
            {
                s.path = final_path;
            }
            *lock(&self.rolling) = false;
        }
        self.roll_done.notify_all();
        match result {
            Ok(()) => {
                self.advance_durable(job.new_base);
                tracing::debug!(dir = %self.dir.display(), base = job.new_base, "rolled segment");
                Ok(())
            }
            Err(e) => {
                self.fail(format!("segment roll failed: {e}"));
                Err(e)
            }
        }
    }
}

impl Log {
    /// Opens the log in `dir` on the real file system, creating the
    /// directory if missing, and recovers it (see `docs/storage.md`): a torn
    /// or corrupt tail of the active segment is truncated, missing or
    /// damaged index files are rebuilt, an interrupted truncation or roll is
    /// finished, and damage inside a sealed segment is a
    /// [`LogError::Corrupt`] error.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, LogError> {
        Log::open_with(dir, config, OpenOptions::default())
    }

    /// Like [`Log::open`], with the file system, fsync counter and flusher
    /// given in `options`.
    pub fn open_with(
        dir: impl AsRef<Path>,
        config: LogConfig,
        options: OpenOptions,
    ) -> Result<Log, LogError> {
        config.validate()?;
        let disk = Disk {
            io: options.io.unwrap_or_else(|| Arc::new(StdIo)),
            fsyncs: options.fsync_counter.unwrap_or_default(),
        };
        let dir = dir.as_ref().to_path_buf();
        let recovered = recover(&disk, &dir, &config, now_ms())?;
        let end = recovered
            .segments
            .last()
            .expect("recover returns a segment")
            .next_offset;
        let shared = Arc::new(Shared {
            dir,
            disk,
            config,
            state: RwLock::new(State {
                segments: recovered.segments,
                log_start: recovered.log_start,
            }),
            maintenance: Mutex::new(()),
            sync: Mutex::new(SyncState::new(end)),
            sync_done: Condvar::new(),
            durable: AtomicI64::new(end),
            end: AtomicI64::new(end),
            start: AtomicI64::new(recovered.log_start),
            failed: Mutex::new(None),
            rolling: Mutex::new(false),
            roll_done: Condvar::new(),
        });
        let flusher = match shared.config.fsync {
            FsyncPolicy::Interval(every) => {
                let flusher = match options.flusher {
                    Some(f) => f,
                    None => Flusher::global()?,
                };
                flusher.register(&shared, every);
                Some(flusher)
            }
            _ => None,
        };
        Ok(Log { shared, flusher })
    }

    /// Appends a producer batch: validates it, assigns offsets (rewrites
    /// `baseOffset` in `batch`; the CRC does not cover it) and writes it
    /// with one positional write. With [`FsyncPolicy::Always`] it returns
    /// only once the batch is durable; concurrent appenders share one
    /// `fdatasync` (group commit).
    ///
    /// The batch must be a producer batch: `lastOffsetDelta == recordCount - 1`.
    /// Timestamps may go backwards between batches (CreateTime is the
    /// producer's clock); the time index stays monotonic.
    pub fn append(&self, batch: &mut [u8]) -> Result<AppendInfo, LogError> {
        self.append_inner(batch, None)
    }

    /// Like [`Log::append`], also stamping `partitionLeaderEpoch`.
    pub fn append_with_epoch(
        &self,
        batch: &mut [u8],
        leader_epoch: i32,
    ) -> Result<AppendInfo, LogError> {
        self.append_inner(batch, Some(leader_epoch))
    }

    fn append_inner(&self, batch: &mut [u8], epoch: Option<i32>) -> Result<AppendInfo, LogError> {
        let shared = &*self.shared;
        let max = shared.config.max_batch_bytes as usize;
        if batch.len() > max {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                max,
            });
        }
        let mut header = validate_batch(batch)?;
        if header.last_offset_delta != header.record_count - 1 {
            return Err(LogError::InvalidBatch(RecordError::Malformed(format!(
                "producer batch has lastOffsetDelta {} for {} records (offset deltas must be 0..n-1)",
                header.last_offset_delta, header.record_count
            ))));
        }
        let now = now_ms();
        let (info, generation, roll) = loop {
            shared.check_failed()?;
            let mut st = shared.write_state();
            let base = st.end();
            let active = st.active();
            let too_big = active.size + batch.len() as u64 > shared.config.segment_bytes;
            let too_old = shared
                .config
                .segment_ms
                .zip(active.first_append_ms)
                .is_some_and(|(ms, first)| now - first >= ms as i64);
            let too_many =
                base + i64::from(header.last_offset_delta) - active.base > i64::from(i32::MAX);
            let mut roll = None;
            if active.size > 0 && (too_big || too_old || too_many) {
                if shared.is_rolling() {
                    // The segment filled up while the previous roll is still
                    // syncing; rolls are one at a time.
                    drop(st);
                    shared.wait_for_roll();
                    continue;
                }
                roll = Some(shared.start_roll(&mut st)?);
            }
            set_base_offset(batch, base);
            header.base_offset = base;
            if let Some(epoch) = epoch {
                set_partition_leader_epoch(batch, epoch);
            }
            let interval = shared.config.index_interval_bytes;
            let written = st.active_mut().append(batch, &header, interval, now);
            if let Err(e) = written {
                drop(st);
                if let LogError::Failed(reason) = &e {
                    shared.fail(reason.clone());
                }
                if let Some(job) = roll {
                    shared.finish_roll(job)?;
                }
                return Err(e);
            }
            shared.end.store(header.next_offset(), Ordering::Release);
            let generation = crate::sync::generation(shared);
            let info = AppendInfo {
                base_offset: base,
                last_offset: header.last_offset(),
                max_timestamp: header.max_timestamp,
                record_count: header.record_count,
                size: batch.len(),
            };
            break (info, generation, roll);
        };
        if let Some(job) = roll {
            shared.finish_roll(job)?;
        }
        if shared.config.fsync == FsyncPolicy::Always {
            crate::sync::sync_until(shared, info.last_offset + 1, generation)?;
        }
        Ok(info)
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.shared.start.load(Ordering::Acquire)
    }

    /// Next offset to be assigned.
    pub fn end_offset(&self) -> i64 {
        self.shared.end.load(Ordering::Acquire)
    }

    /// All offsets below this are fsynced and survive a crash.
    pub fn durable_offset(&self) -> i64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Fsyncs now; afterwards `durable_offset() >= ` the end offset seen at the call.
    pub fn flush(&self) -> Result<(), LogError> {
        let target = self.end_offset();
        let generation = crate::sync::generation(&self.shared);
        crate::sync::sync_until(&self.shared, target, generation)
    }

    /// Why the log is failed, if it is: after a failed fsync (or a write
    /// that could not be undone) every write is refused with
    /// [`LogError::Failed`] until the log is dropped and opened again, which
    /// recovers from what is on disk. A storage node reports such a
    /// partition offline.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failed).clone()
    }

    /// Fsyncs (data and directory) counted so far by this log's counter
    /// (shared with other logs if one was given in [`OpenOptions`]).
    pub fn fsyncs(&self) -> u64 {
        self.shared.disk.fsyncs.load(Ordering::Relaxed)
    }

    /// Rolls the active segment if it is older than `segment_ms` (measured
    /// from its first append) at `now_ms`. Returns whether it rolled.
    pub fn roll_if_due(&self, now_ms: i64) -> Result<bool, LogError> {
        let Some(ms) = self.shared.config.segment_ms else {
            return Ok(false);
        };
        let shared = &*self.shared;
        let job = loop {
            shared.check_failed()?;
            let mut st = shared.write_state();
            let active = st.active();
            let due = active.size > 0
                && active
                    .first_append_ms
                    .is_some_and(|first| now_ms - first >= ms as i64);
            if !due {
                return Ok(false);
            }
            if shared.is_rolling() {
                drop(st);
                shared.wait_for_roll();
                continue;
            }
            break shared.start_roll(&mut st)?;
        };
        shared.finish_roll(job)?;
        Ok(true)
    }

    /// Total bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.shared
            .read_state()
            .segments
            .iter()
            .map(|s| s.size)
            .sum()
    }

    /// Number of segments, including the active one.
    pub fn segment_count(&self) -> usize {
        self.shared.read_state().segments.len()
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Flushes, writes a clean-shutdown marker (so the next open treats any
    /// damage in the active segment as corruption rather than a torn tail)
    /// and unregisters from the interval flusher.
    pub fn close(self) -> Result<(), LogError> {
        self.shared.check_failed()?;
        self.flush()?;
        let shared = &self.shared;
        shared.wait_for_roll();
        shared
            .disk
            .write_synced(&shared.dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        shared.disk.sync_dir(&shared.dir)?;
        Ok(())
    }
}

impl Drop for Log {
    /// Unregisters from the interval flusher. Does not flush: dropping a log
    /// without `close` behaves like a crash of the process (the page cache
    /// keeps what was written).
    fn drop(&mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.unregister(&self.shared);
        }
    }
}
