//! The [`Log`] type: open, append, roll, flush, close.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use streambus_record::{RecordError, set_base_offset, set_partition_leader_epoch, validate_batch};

use crate::recovery::{CLEAN_SHUTDOWN_FILE, recover};
use crate::segment::{Segment, sync_dir};
use crate::sync::SyncState;
use crate::{FsyncPolicy, LogConfig, LogError};

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
    flusher: Option<JoinHandle<()>>,
}

/// State shared with the background flusher.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
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
    pub stop: Mutex<bool>,
    pub stop_signal: Condvar,
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

    /// Seals the active segment and starts a new one at the end offset.
    /// Everything below the new segment's base is durable afterwards.
    pub fn roll(&self, st: &mut State) -> Result<(), LogError> {
        let result = (|| {
            st.active_mut().seal(&self.dir)?;
            let base = st.end();
            let segment = Segment::create(&self.dir, base)?;
            st.segments.push(segment);
            Ok(base)
        })();
        match result {
            Ok(base) => {
                self.advance_durable(base);
                tracing::debug!(dir = %self.dir.display(), base, "rolled segment");
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
    /// Opens the log in `dir`, creating the directory if missing, and
    /// recovers it (see `docs/storage.md`): a torn or corrupt tail of the
    /// active segment is truncated, missing or damaged index files are
    /// rebuilt, and damage inside a sealed segment is a
    /// [`LogError::Corrupt`] error.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, LogError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let recovered = recover(&dir, &config, now_ms())?;
        let end = recovered
            .segments
            .last()
            .expect("recover returns a segment")
            .next_offset;
        let shared = Arc::new(Shared {
            dir,
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
            stop: Mutex::new(false),
            stop_signal: Condvar::new(),
        });
        let flusher = match shared.config.fsync {
            FsyncPolicy::Interval(every) => {
                Some(crate::sync::spawn_flusher(shared.clone(), every)?)
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
        shared.check_failed()?;
        let now = now_ms();
        let (info, generation) = {
            let mut st = shared.write_state();
            let base = st.end();
            set_base_offset(batch, base);
            header.base_offset = base;
            if let Some(epoch) = epoch {
                set_partition_leader_epoch(batch, epoch);
            }
            let active = st.active();
            let too_big = active.size + batch.len() as u64 > shared.config.segment_bytes;
            let too_old = shared
                .config
                .segment_ms
                .zip(active.first_append_ms)
                .is_some_and(|(ms, first)| now - first >= ms as i64);
            let too_many = header.last_offset() - active.base > i64::from(i32::MAX);
            if active.size > 0 && (too_big || too_old || too_many) {
                shared.roll(&mut st)?;
            }
            let interval = shared.config.index_interval_bytes;
            st.active_mut().append(batch, &header, interval, now)?;
            shared.end.store(header.next_offset(), Ordering::Release);
            let generation = crate::sync::generation(shared);
            let info = AppendInfo {
                base_offset: base,
                last_offset: header.last_offset(),
                max_timestamp: header.max_timestamp,
                record_count: header.record_count,
                size: batch.len(),
            };
            (info, generation)
        };
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

    /// Rolls the active segment if it is older than `segment_ms` (measured
    /// from its first append) at `now_ms`. Returns whether it rolled.
    pub fn roll_if_due(&self, now_ms: i64) -> Result<bool, LogError> {
        let Some(ms) = self.shared.config.segment_ms else {
            return Ok(false);
        };
        self.shared.check_failed()?;
        let mut st = self.shared.write_state();
        let active = st.active();
        let due = active.size > 0
            && active
                .first_append_ms
                .is_some_and(|first| now_ms - first >= ms as i64);
        if due {
            self.shared.roll(&mut st)?;
        }
        Ok(due)
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

    /// Flushes, writes the active segment's index files and a clean-shutdown
    /// marker (so the next open skips the full tail scan), and stops the
    /// background flusher.
    pub fn close(self) -> Result<(), LogError> {
        self.flush()?;
        let shared = &self.shared;
        let st = shared.read_state();
        st.active().write_indexes(&shared.dir)?;
        crate::segment::write_synced(&shared.dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        sync_dir(&shared.dir)?;
        Ok(())
    }
}

impl Drop for Log {
    /// Stops the background flusher. Does not flush: dropping a log without
    /// `close` behaves like a crash of the process (the page cache keeps
    /// what was written).
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.stop_signal.notify_all();
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
    }
}
