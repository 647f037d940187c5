//! The [`Log`] type: open, append, roll, flush, close.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use streambus_record::{
    BatchHeader, BatchIter, RecordError, set_base_offset, set_partition_leader_epoch,
    validate_batch,
};

use crate::epoch::{self, EpochCache};
use crate::fsync_stats::FsyncStats;
use crate::io::{Disk, Io, IoFile, OpenMode, StdIo};
use crate::producer::{ProducerState, SequenceCheck};
use crate::recovery::{CLEAN_SHUTDOWN_FILE, recover};
use crate::segment::{ROLLING_EXT, Segment, segment_file, write_index_files};
use crate::sync::{Flusher, SyncState};
use crate::{FsyncPolicy, LogConfig, LogError};

/// How [`Log::open_with`] opens a log: which file system, which fsync
/// statistics, which interval flusher. `OpenOptions::default()` is what
/// [`Log::open`] uses: the real file system, statistics of its own and the
/// process-wide flusher.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    io: Option<Arc<dyn Io>>,
    fsync_stats: Option<Arc<FsyncStats>>,
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

    /// The file system set with [`OpenOptions::io`] (`None`: [`StdIo`]), for
    /// a caller that wraps it in another layer (a
    /// [`HandleCache`](crate::HandleCache), say).
    pub fn configured_io(&self) -> Option<&Arc<dyn Io>> {
        self.io.as_ref()
    }

    /// Records every data and directory fsync of the log, and how long it
    /// took, in `stats` (share them between many logs for per-node
    /// metrics).
    pub fn fsync_stats(mut self, stats: Arc<FsyncStats>) -> OpenOptions {
        self.fsync_stats = Some(stats);
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
    /// The batch was already in the log (an idempotent producer's retry):
    /// nothing was written, the offsets are the original ones.
    pub duplicate: bool,
}

/// What [`Log::append_replicated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicatedAppendInfo {
    /// Base offset of the first batch (the end offset before the append).
    pub base_offset: i64,
    /// Last offset of the last batch (`base_offset - 1` when no batch was
    /// given).
    pub last_offset: i64,
    /// Bytes written.
    pub size: usize,
    /// Batches written.
    pub batch_count: usize,
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
    /// Changed in place by [`Log::update_config`]; the fsync policy and the
    /// index interval never change while the log is open.
    config: RwLock<LogConfig>,
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
    /// An append holds on to the end offset while it released the state
    /// lock midway (to persist a leader-epoch entry before its batch, or to
    /// finish its own roll between two of its batches): other appends and
    /// truncations wait until it is done, so nothing else is written at or
    /// cut below the offsets it is about to write. Set only while holding
    /// the `state` write lock (see [`Shared::reserve`]); waited on with
    /// `reserve_done`.
    pub reserved: Mutex<bool>,
    pub reserve_done: Condvar,
    /// Serialises writes of the leader-epoch checkpoint (and the matching
    /// update of `State::epochs`) by appends and retention. Taken before
    /// the state lock, never while holding it. Truncation writes the
    /// checkpoint without it: it holds `maintenance` (so retention is not
    /// running) and the state lock while no reservation is held (so no
    /// append is writing the checkpoint: appends do so only while holding
    /// one).
    pub epoch_file: Mutex<()>,
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
    /// The leader-epoch cache, as in `leader-epoch-checkpoint`.
    pub epochs: EpochCache,
    /// Idempotent producers' recent batches.
    pub producers: ProducerState,
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

/// A reservation of the end offset by an append; released on drop.
struct Reservation<'a>(&'a Shared);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *lock(&self.0.reserved) = false;
        self.0.reserve_done.notify_all();
    }
}

/// The batches of one append and how they get their offsets.
enum Batches<'a> {
    /// One producer batch: offsets assigned from the end offset, the leader
    /// epoch stamped if given. The batch's bytes are not changed: the
    /// fields the log stamps are in `head`, a copy of its first bytes,
    /// written in front of the rest.
    Assign {
        batch: &'a [u8],
        head: [u8; STAMPED],
        header: BatchHeader,
        epoch: Option<i32>,
    },
    /// Whole, validated, contiguous batches that keep their offsets and
    /// leader epochs: `(position in data, header)`.
    Keep {
        data: &'a [u8],
        batches: Vec<(usize, BatchHeader)>,
    },
}

impl Batches<'_> {
    fn len(&self) -> usize {
        match self {
            Batches::Assign { .. } => 1,
            Batches::Keep { batches, .. } => batches.len(),
        }
    }

    /// Header of batch `i` (before it is given its offsets).
    fn header(&self, i: usize) -> &BatchHeader {
        match self {
            Batches::Assign { header, .. } => header,
            Batches::Keep { batches, .. } => &batches[i].1,
        }
    }

    /// Whether the batches can go at the end offset `end`: kept batches
    /// must start there; a producer batch's offsets must fit after it (kept
    /// batches' headers guarantee that theirs do).
    fn check_start(&self, end: i64) -> Result<(), LogError> {
        match self {
            Batches::Assign { header, .. } => {
                let count = i64::from(header.last_offset_delta) + 1;
                match end.checked_add(count) {
                    Some(_) => Ok(()),
                    None => Err(LogError::OffsetOverflow { end, count }),
                }
            }
            Batches::Keep { batches, .. } => match batches.first() {
                Some((_, h)) if h.base_offset != end => Err(LogError::NonContiguous {
                    expected: end,
                    got: h.base_offset,
                }),
                _ => Ok(()),
            },
        }
    }

    /// `(leader epoch, base offset)` of the batches that concern the
    /// leader-epoch cache, when appended at `end`.
    fn epochs(&self, end: i64) -> impl Iterator<Item = (i32, i64)> + '_ {
        let (single, many) = match self {
            Batches::Assign { epoch, .. } => (epoch.map(|e| (e, end)), &[][..]),
            Batches::Keep { batches, .. } => (None, batches.as_slice()),
        };
        single.into_iter().chain(
            many.iter()
                .map(|(_, h)| (h.partition_leader_epoch, h.base_offset)),
        )
    }

    /// Gives batch `i` its offsets for the end offset `end` (stamping a
    /// producer batch; checking a kept one starts there) and returns its
    /// bytes and final header.
    fn place(&mut self, i: usize, end: i64) -> Result<(Placed<'_>, BatchHeader), LogError> {
        match self {
            Batches::Assign {
                batch,
                head,
                header,
                epoch,
            } => {
                head.copy_from_slice(&batch[..STAMPED]);
                set_base_offset(head, end);
                header.base_offset = end;
                if let Some(epoch) = *epoch {
                    set_partition_leader_epoch(head, epoch);
                    header.partition_leader_epoch = epoch;
                }
                let placed = Placed {
                    head: &head[..],
                    tail: &batch[STAMPED..],
                };
                Ok((placed, *header))
            }
            Batches::Keep { data, batches } => {
                let (pos, h) = batches[i];
                if h.base_offset != end {
                    return Err(LogError::NonContiguous {
                        expected: end,
                        got: h.base_offset,
                    });
                }
                let placed = Placed {
                    head: &data[pos..pos + h.total_size()],
                    tail: &[],
                };
                Ok((placed, h))
            }
        }
    }
}

/// The leading bytes of a batch header the log stamps on append:
/// `baseOffset`, `batchLength` and `partitionLeaderEpoch`, none of them
/// covered by the CRC.
const STAMPED: usize = 16;

/// A batch as it is written: `head` then `tail`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
}

impl Placed<'_> {
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// What [`Log::append_batches`] wrote.
#[derive(Debug, Default)]
struct Appended {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    size: usize,
    batches: usize,
    /// An idempotent producer batch already in the log: nothing written.
    duplicate: bool,
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
    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        *self.config.read().unwrap_or_else(|e| e.into_inner())
    }
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

    /// Whether an append holds a reservation of the end offset (stable
    /// while the state lock is held).
    pub fn is_reserved(&self) -> bool {
        *lock(&self.reserved)
    }

    /// Waits until no append holds a reservation.
    pub fn wait_for_reservation(&self) {
        let mut r = lock(&self.reserved);
        while *r {
            r = self.reserve_done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Reserves the end offset for the calling append (see
    /// `Shared::reserved`); the caller holds the state write lock (`_st`)
    /// and made sure no other append holds a reservation. Released when the
    /// returned guard is dropped.
    fn reserve(&self, _st: &mut State) -> Reservation<'_> {
        let mut r = lock(&self.reserved);
        debug_assert!(!*r);
        *r = true;
        Reservation(self)
    }

    /// Makes the leader-epoch entries that appending `batches` (`(epoch,
    /// base offset)`) at `end` adds durable, then installs them in memory.
    /// Called by an append that holds a reservation (so `end` stays the end
    /// offset) and not the state lock.
    fn persist_epochs(
        &self,
        end: i64,
        batches: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<(), LogError> {
        let _file = lock(&self.epoch_file);
        let current = self.read_state().epochs.clone();
        if let Some(next) = current.plan(end, batches)? {
            epoch::write(&self.disk, &self.dir, &next)?;
            tracing::debug!(dir = %self.dir.display(), entries = ?next, "leader-epoch cache updated");
            self.write_state().epochs = next;
        }
        Ok(())
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
        // Nothing has changed yet: a segment that cannot be created (no
        // space left, say) fails this append only, and the next one tries
        // again.
        let file = self.disk.open(&path, OpenMode::CreateNew)?;
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
    /// [`LogError::Corrupt`] error. The leader-epoch cache is loaded (or
    /// rebuilt from the batch headers if its file is missing) and trimmed to
    /// the recovered offsets; a damaged cache file is an error.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, LogError> {
        Log::open_with(dir, config, OpenOptions::default())
    }

    /// Like [`Log::open`], with the file system, fsync statistics and flusher
    /// given in `options`.
    pub fn open_with(
        dir: impl AsRef<Path>,
        config: LogConfig,
        options: OpenOptions,
    ) -> Result<Log, LogError> {
        config.validate()?;
        let disk = Disk {
            io: options.io.unwrap_or_else(|| Arc::new(StdIo)),
            fsyncs: options.fsync_stats.unwrap_or_default(),
        };
        let dir = dir.as_ref().to_path_buf();
        let recovered = recover(&disk, &dir, &config, now_ms())?;
        let end = recovered
            .segments
            .last()
            .expect("recover returns a segment")
            .next_offset;
        let producers = ProducerState::rebuild(&recovered.segments)?;
        let shared = Arc::new(Shared {
            dir,
            disk,
            config: RwLock::new(config),
            state: RwLock::new(State {
                segments: recovered.segments,
                log_start: recovered.log_start,
                epochs: recovered.epochs,
                producers,
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
            reserved: Mutex::new(false),
            reserve_done: Condvar::new(),
            epoch_file: Mutex::new(()),
        });
        let flusher = match shared.config().fsync {
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

    /// Appends a producer batch: validates it, assigns offsets (the
    /// `baseOffset` written is the batch's first offset; the CRC does not
    /// cover it, and `batch` itself is not changed) and writes it with one
    /// positional write. With [`FsyncPolicy::Always`] it returns
    /// only once the batch is durable; concurrent appenders share one
    /// `fdatasync` (group commit).
    ///
    /// The batch must be a producer batch: `lastOffsetDelta == recordCount - 1`.
    /// Timestamps may go backwards between batches (CreateTime is the
    /// producer's clock); the time index stays monotonic. The leader-epoch
    /// cache gets no entry for the batch (only entries a failed write left
    /// at the end offset are dropped, since they would claim it).
    pub fn append(&self, batch: &[u8]) -> Result<AppendInfo, LogError> {
        self.append_inner(batch, None)
    }

    /// Like [`Log::append`], also stamping `partitionLeaderEpoch` with
    /// `leader_epoch`. If `leader_epoch` is newer than the latest epoch of
    /// the leader-epoch cache, the entry `(leader_epoch, base offset)` is
    /// made durable before the batch is written; an epoch older than the
    /// latest is refused with [`LogError::StaleLeaderEpoch`] (a leader
    /// never appends with an older epoch).
    pub fn append_with_epoch(
        &self,
        batch: &[u8],
        leader_epoch: i32,
    ) -> Result<AppendInfo, LogError> {
        self.append_inner(batch, Some(leader_epoch))
    }

    fn append_inner(&self, batch: &[u8], epoch: Option<i32>) -> Result<AppendInfo, LogError> {
        let max = self.shared.config().max_batch_bytes as usize;
        if batch.len() > max {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                max,
            });
        }
        let header = validate_batch(batch)?;
        if header.last_offset_delta != header.record_count - 1 {
            return Err(LogError::InvalidBatch(RecordError::Malformed(format!(
                "producer batch has lastOffsetDelta {} for {} records (offset deltas must be 0..n-1)",
                header.last_offset_delta, header.record_count
            ))));
        }
        let done = self.append_batches(Batches::Assign {
            batch,
            head: [0; STAMPED],
            header,
            epoch,
        })?;
        if done.duplicate && self.durable_offset() <= done.last_offset {
            // The original may still be waiting for its fsync: the retry
            // is acknowledged no earlier than the original would be.
            if self.shared.config().fsync == FsyncPolicy::Always {
                self.flush()?;
            }
        }
        Ok(AppendInfo {
            base_offset: done.base_offset,
            last_offset: done.last_offset,
            max_timestamp: done.max_timestamp,
            record_count: header.record_count,
            size: done.size,
            duplicate: done.duplicate,
        })
    }

    /// Appends batches copied from the partition leader's log, as a
    /// follower: `batches` is one or more whole RecordBatch v2 batches,
    /// concatenated exactly as the leader stored them (as [`Log::read`]
    /// returns them). Nothing is rewritten: base offsets and
    /// `partitionLeaderEpoch` are kept.
    ///
    /// Every batch is validated as [`Log::append`] validates one (size up to
    /// `max_batch_bytes`, CRC, records), except that its offsets may have
    /// gaps left by compaction (`lastOffsetDelta` may exceed `recordCount -
    /// 1`; the batch covers `base..=base + lastOffsetDelta`). The first batch
    /// must start at the log end offset and each next one right after the
    /// previous batch's last offset, or the append is refused with
    /// [`LogError::NonContiguous`]. Leader epochs must not decrease, from
    /// the latest epoch of the leader-epoch cache through the batches
    /// ([`LogError::StaleLeaderEpoch`]); every epoch increase makes a cache
    /// entry at that batch's base offset, made durable before the batches
    /// are written. All of this is checked before anything is written.
    ///
    /// Segments roll, indexes are built and the fsync policy applies as for
    /// [`Log::append`] (under [`FsyncPolicy::Always`] it returns once all
    /// the batches are durable, sharing fsyncs with concurrent appends).
    /// Other appends wait while it is in progress, so its batches end up
    /// contiguous. If a write fails midway the batches before the failing
    /// one stay appended ([`Log::end_offset`] says how far it got).
    ///
    /// Empty input is a no-op returning `batch_count: 0` at the end offset.
    pub fn append_replicated(&self, batches: &[u8]) -> Result<ReplicatedAppendInfo, LogError> {
        if batches.is_empty() {
            let end = self.end_offset();
            return Ok(ReplicatedAppendInfo {
                base_offset: end,
                last_offset: end - 1,
                size: 0,
                batch_count: 0,
            });
        }
        // The log's hard limit, not the topic's `max_batch_bytes`: that
        // bounds what producers may send now, and a leader may hold larger
        // batches written before it was lowered, which followers must
        // still copy.
        let max = crate::MAX_BATCH_BYTES as usize;
        let mut parsed: Vec<(usize, BatchHeader)> = Vec::new();
        let mut iter = BatchIter::new(batches);
        let mut pos = 0;
        for item in iter.by_ref() {
            let (_, bytes) = item?;
            if bytes.len() > max {
                return Err(LogError::BatchTooLarge {
                    size: bytes.len(),
                    max,
                });
            }
            let h = validate_batch(bytes)?;
            if let Some((_, prev)) = parsed.last()
                && h.base_offset != prev.next_offset()
            {
                return Err(LogError::NonContiguous {
                    expected: prev.next_offset(),
                    got: h.base_offset,
                });
            }
            parsed.push((pos, h));
            pos += bytes.len();
        }
        if iter.position() != batches.len() {
            return Err(LogError::InvalidBatch(RecordError::Malformed(format!(
                "{} trailing bytes after {} whole batches (a partial batch)",
                batches.len() - iter.position(),
                parsed.len()
            ))));
        }
        let done = self.append_batches(Batches::Keep {
            data: batches,
            batches: parsed,
        })?;
        Ok(ReplicatedAppendInfo {
            base_offset: done.base_offset,
            last_offset: done.last_offset,
            size: done.size,
            batch_count: done.batches,
        })
    }

    /// Writes validated batches at the end of the log: what `append`,
    /// `append_with_epoch` and `append_replicated` share. Under the state
    /// write lock, per batch: roll first if the active segment is full (too
    /// big, too old, or relative offsets would overflow), give the batch
    /// its offsets, write it with one positional write and index it. A new
    /// leader-epoch entry is made durable first, outside the lock, holding
    /// a reservation of the end offset; a roll of our own that must finish
    /// before the next batch can roll is finished the same way. Afterwards
    /// the roll is finished and, under [`FsyncPolicy::Always`], the batches
    /// are synced (group commit).
    fn append_batches(&self, mut batches: Batches<'_>) -> Result<Appended, LogError> {
        let shared = &*self.shared;
        let n = batches.len();
        let now = now_ms();
        let interval = shared.config().index_interval_bytes;
        let mut done = Appended::default();
        let mut roll: Option<RollJob> = None;
        let mut reservation: Option<Reservation<'_>> = None;
        let mut generation = None;
        let result = 'outer: loop {
            if let Err(e) = shared.check_failed() {
                break Err(e);
            }
            let mut st = shared.write_state();
            if reservation.is_none() && shared.is_reserved() {
                drop(st);
                shared.wait_for_reservation();
                continue;
            }
            if done.batches == 0 {
                let end = st.end();
                if let Err(e) = batches.check_start(end) {
                    break Err(e);
                }
                if let Batches::Assign { header, .. } = &batches {
                    match st.producers.check(header) {
                        Err(e) => break Err(e),
                        Ok(SequenceCheck::Append) => {}
                        Ok(SequenceCheck::Duplicate {
                            base_offset,
                            last_offset,
                        }) => {
                            done.base_offset = base_offset;
                            done.last_offset = last_offset;
                            done.max_timestamp = header.max_timestamp;
                            done.duplicate = true;
                            break Ok(());
                        }
                    }
                }
                match st.epochs.plan(end, batches.epochs(end)) {
                    Err(e) => break Err(e),
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        // The entry must be durable before its batch is
                        // written; the reservation keeps the end offset
                        // while the lock is released for the file write.
                        if reservation.is_none() {
                            reservation = Some(shared.reserve(&mut st));
                        }
                        drop(st);
                        if let Err(e) = shared.persist_epochs(end, batches.epochs(end)) {
                            break Err(e);
                        }
                        continue;
                    }
                }
            }
            while done.batches < n {
                let base = st.end();
                let header = *batches.header(done.batches);
                let active = st.active();
                let too_big =
                    active.size + header.total_size() as u64 > shared.config().segment_bytes;
                let too_old = shared
                    .config()
                    .segment_ms
                    .zip(active.first_append_ms)
                    .is_some_and(|(ms, first)| now - first >= ms as i64);
                let too_many =
                    base + i64::from(header.last_offset_delta) - active.base > i64::from(i32::MAX);
                if active.size > 0 && (too_big || too_old || too_many) {
                    if shared.is_rolling() {
                        // Rolls are one at a time: finish ours (from an
                        // earlier batch of this append) or wait for the one
                        // in progress, keeping the end offset if batches of
                        // this append are already written.
                        if done.batches > 0 && reservation.is_none() {
                            reservation = Some(shared.reserve(&mut st));
                        }
                        drop(st);
                        match roll.take() {
                            Some(job) => {
                                if let Err(e) = shared.finish_roll(job) {
                                    break 'outer Err(e);
                                }
                            }
                            None => shared.wait_for_roll(),
                        }
                        continue 'outer;
                    }
                    match shared.start_roll(&mut st) {
                        Ok(job) => roll = Some(job),
                        Err(e) => break 'outer Err(e),
                    }
                }
                let (bytes, header) = match batches.place(done.batches, base) {
                    Ok(placed) => placed,
                    Err(e) => break 'outer Err(e),
                };
                if let Err(e) = st.active_mut().append(bytes, &header, interval, now) {
                    drop(st);
                    if let LogError::Failed(reason) = &e {
                        shared.fail(reason.clone());
                    }
                    break 'outer Err(e);
                }
                st.producers.record(&header, now);
                shared.end.store(header.next_offset(), Ordering::Release);
                generation.get_or_insert_with(|| crate::sync::generation(shared));
                if done.batches == 0 {
                    done.base_offset = header.base_offset;
                    done.max_timestamp = header.max_timestamp;
                }
                done.last_offset = header.last_offset();
                done.max_timestamp = done.max_timestamp.max(header.max_timestamp);
                done.size += bytes.len();
                done.batches += 1;
            }
            break Ok(());
        };
        drop(reservation);
        if let Some(job) = roll {
            shared.finish_roll(job)?;
        }
        result?;
        if shared.config().fsync == FsyncPolicy::Always
            && let Some(generation) = generation
        {
            crate::sync::sync_until(shared, done.last_offset + 1, generation)?;
        }
        Ok(done)
    }

    /// Idempotent producers whose recent batches the log remembers.
    pub fn producer_count(&self) -> usize {
        self.shared.read_state().producers.len()
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

    /// The configuration in effect.
    pub fn config(&self) -> LogConfig {
        self.shared.config()
    }

    /// Changes the configuration of the open log. Segment size and age,
    /// the largest batch, retention, cleanup policy and tombstone retention
    /// apply from the next append, roll or maintenance call (a smaller
    /// `segment_bytes` never splits the active segment: it rolls on the
    /// next append). The fsync policy and the index interval are fixed for
    /// the life of an open log: a configuration that changes them is
    /// refused with [`LogError::InvalidConfig`] (reopen the log instead).
    pub fn update_config(&self, config: LogConfig) -> Result<(), LogError> {
        config.validate()?;
        let mut current = self
            .shared
            .config
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if config.fsync != current.fsync {
            return Err(LogError::InvalidConfig(format!(
                "the fsync policy of an open log cannot change ({:?} to {:?}): reopen the log",
                current.fsync, config.fsync
            )));
        }
        if config.index_interval_bytes != current.index_interval_bytes {
            return Err(LogError::InvalidConfig(format!(
                "the index interval of an open log cannot change ({} to {}): reopen the log",
                current.index_interval_bytes, config.index_interval_bytes
            )));
        }
        *current = config;
        Ok(())
    }

    /// Fsyncs (data and directory) recorded so far in this log's
    /// statistics (shared with other logs if given in [`OpenOptions`]).
    pub fn fsyncs(&self) -> u64 {
        self.shared.disk.fsyncs.count()
    }

    /// Rolls the active segment if it is older than `segment_ms` (measured
    /// from its first append) at `now_ms`. Returns whether it rolled.
    pub fn roll_if_due(&self, now_ms: i64) -> Result<bool, LogError> {
        let Some(ms) = self.shared.config().segment_ms else {
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
