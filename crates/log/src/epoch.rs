//! The leader-epoch cache (Kafka's `LeaderEpochFileCache`, KIP-101 /
//! KIP-279): for every leader epoch that wrote to the log, the offset of its
//! first batch. Replication uses it to find where a follower's log diverges
//! from the leader's ([`Log::end_offset_for_epoch`]).
//!
//! Kept in memory (in the log's state) and in `leader-epoch-checkpoint` in
//! the log directory, Kafka's format: a version line `0`, the number of
//! entries, then one `<epoch> <start offset>` line per entry. Epochs and
//! start offsets are strictly increasing. The file is replaced atomically
//! (see [`checkpoint::write_atomic`]), so after a crash it is the old or
//! the new one; like the other checkpoints an absent file means "none" (the
//! cache is then rebuilt from the batch headers) but a present file that
//! cannot be read or parsed is an error naming it.
//!
//! Ordering: an entry is made durable before the first batch it describes
//! is written, so a crash can leave an entry at or beyond the log end (it is
//! dropped on open) but never a batch of a newer epoch without its entry.
//! Entries at or beyond the end offset (left by a failed write) describe no
//! data: queries and the epoch checks of appends ignore them, and the next
//! entry assigned at that offset replaces them.

use std::path::Path;

use crate::checkpoint;
use crate::log::{Log, State};
use crate::segment::{OffsetCheck, Segment};
use crate::{LogError, io::Disk};

/// Name of the leader-epoch checkpoint file in the log directory.
pub(crate) const EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// Ordered `(epoch, start offset)` entries, both strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    #[cfg(test)]
    fn from_entries(entries: Vec<(i32, i64)>) -> EpochCache {
        EpochCache { entries }
    }

    /// The entries that describe offsets below `end` (a prefix, since
    /// start offsets increase).
    pub fn visible(&self, end: i64) -> &[(i32, i64)] {
        let n = self.entries.partition_point(|&(_, start)| start < end);
        &self.entries[..n]
    }

    /// Kafka's `assign`: `epoch` starts at `start`. Entries with an epoch
    /// `>= epoch` or a start `>= start` are removed first (only entries at
    /// or beyond the end offset can match, since callers refuse older
    /// epochs), so both columns stay strictly increasing.
    fn assign(&mut self, epoch: i32, start: i64) {
        self.entries.retain(|&(e, s)| e < epoch && s < start);
        self.entries.push((epoch, start));
    }

    /// The cache after appending batches `(leader epoch, base offset)`, in
    /// order, at the end of a log whose end offset is `end`, or `None` if
    /// it stays as it is. Entries at or beyond `end` are dropped (they
    /// describe no data, and a batch of another epoch is about to take
    /// their offset), then a new entry is made for every batch whose epoch
    /// is greater than the latest one. A batch whose epoch is lower than the
    /// latest is refused with [`LogError::StaleLeaderEpoch`]. Negative
    /// epochs (unset, `-1`) never make an entry, and are refused once the
    /// cache has one.
    pub fn plan(
        &self,
        end: i64,
        batches: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<Option<EpochCache>, LogError> {
        let visible = self.visible(end);
        let mut latest = visible.last().map(|&(e, _)| e);
        let mut next = (visible.len() < self.entries.len()).then(|| EpochCache {
            entries: visible.to_vec(),
        });
        for (epoch, base) in batches {
            match latest {
                Some(l) if epoch < l => {
                    return Err(LogError::StaleLeaderEpoch { epoch, latest: l });
                }
                Some(l) if epoch == l => {}
                _ if epoch < 0 => {}
                _ => {
                    next.get_or_insert_with(|| self.clone()).assign(epoch, base);
                    latest = Some(epoch);
                }
            }
        }
        Ok(next.filter(|n| n != self))
    }

    /// Drops the entries starting at or after `end` (Kafka's
    /// `truncateFromEnd`). Returns whether anything changed.
    pub fn truncate_from_end(&mut self, end: i64) -> bool {
        let n = self.visible(end).len();
        let changed = n < self.entries.len();
        self.entries.truncate(n);
        changed
    }

    /// Drops the entries wholly below `start`, keeping the latest one that
    /// starts at or below it with its start raised to `start` (Kafka's
    /// `truncateFromStart`). Returns whether anything changed.
    pub fn truncate_from_start(&mut self, start: i64) -> bool {
        let below = self.entries.partition_point(|&(_, s)| s <= start);
        if below == 0 || (below == 1 && self.entries[0].1 == start) {
            return false;
        }
        let epoch = self.entries[below - 1].0;
        self.entries.drain(..below - 1);
        self.entries[0] = (epoch, start);
        true
    }

    /// Kafka's OffsetsForLeaderEpoch answer for a log ending at `end`: the
    /// largest epoch `<= requested` and the start of the next epoch (or
    /// `end` if it is the latest). `None` if `requested` is below every
    /// epoch or the cache is empty.
    pub fn end_offset_for(&self, requested: i32, end: i64) -> Option<(i32, i64)> {
        let visible = self.visible(end);
        let i = visible.partition_point(|&(e, _)| e <= requested);
        if i == 0 {
            return None;
        }
        let epoch = visible[i - 1].0;
        let until = visible.get(i).map_or(end, |&(_, s)| s);
        Some((epoch, until))
    }

    fn to_text(&self) -> String {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        text
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<EpochCache, LogError> {
        let corrupt = |reason: String| LogError::Corrupt {
            file: path.to_path_buf(),
            position: 0,
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text".into()))?;
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(corrupt(
                "unknown version (expected a first line \"0\")".into(),
            ));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| corrupt("missing or malformed entry count".into()))?;
        let mut entries: Vec<(i32, i64)> = Vec::with_capacity(count.min(1024));
        for i in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| corrupt(format!("{count} entries announced, {i} found")))?;
            let mut fields = line.split_whitespace();
            let epoch = fields.next().and_then(|f| f.parse::<i32>().ok());
            let start = fields.next().and_then(|f| f.parse::<i64>().ok());
            let (Some(epoch), Some(start), None) = (epoch, start, fields.next()) else {
                return Err(corrupt(format!("malformed entry {i}: {line:?}")));
            };
            if epoch < 0 || start < 0 {
                return Err(corrupt(format!("negative epoch or offset in entry {i}")));
            }
            if let Some(&(e, s)) = entries.last()
                && (epoch <= e || start <= s)
            {
                return Err(corrupt(format!(
                    "entry {i} ({epoch} {start}) does not follow ({e} {s}) in increasing order"
                )));
            }
            entries.push((epoch, start));
        }
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(corrupt("trailing data".into()));
        }
        Ok(EpochCache { entries })
    }
}

/// Reads the checkpoint; `None` if the file does not exist.
fn read(disk: &Disk, dir: &Path) -> Result<Option<EpochCache>, LogError> {
    let path = dir.join(EPOCH_FILE);
    match disk.read_file(&path)? {
        Some(bytes) => EpochCache::parse(&bytes, &path).map(Some),
        None => Ok(None),
    }
}

/// Durably replaces the checkpoint with `cache`.
pub(crate) fn write(disk: &Disk, dir: &Path, cache: &EpochCache) -> Result<(), LogError> {
    checkpoint::write_atomic(disk, dir, EPOCH_FILE, cache.to_text().as_bytes())
}

/// Rebuilds the cache from the `partitionLeaderEpoch` of every batch header
/// (headers only, no payload is read).
fn rebuild(segments: &[Segment]) -> Result<EpochCache, LogError> {
    let mut cache = EpochCache::default();
    for seg in segments {
        let mut check = OffsetCheck::new(seg.base, seg.next_offset, None);
        let mut pos = 0;
        while let Some(h) = Segment::header_at(&*seg.file, &seg.path, pos, seg.size)? {
            check.check(&seg.path, pos, &h)?;
            let epoch = h.partition_leader_epoch;
            if epoch >= 0 && cache.entries.last().is_none_or(|&(e, _)| epoch > e) {
                cache.entries.push((epoch, h.base_offset));
            }
            pos += h.total_size() as u64;
        }
    }
    Ok(cache)
}

/// Loads the cache on open, after the segments were recovered: reads the
/// checkpoint (rebuilding it from the batch headers if it is absent: a log
/// directory from before the cache existed, or a deleted file; a log
/// creates it empty when it is created, so opening a log normally never
/// scans for it), drops entries at or beyond `end` (written before a batch
/// that a crash or a torn-tail truncation removed, or left by a truncation
/// interrupted before it trimmed the cache) and entries wholly below
/// `log_start` (retention interrupted before it trimmed the cache), and
/// writes the result back if it differs from the file.
pub(crate) fn load(
    disk: &Disk,
    dir: &Path,
    segments: &[Segment],
    log_start: i64,
    end: i64,
) -> Result<EpochCache, LogError> {
    let (mut cache, mut dirty) = match read(disk, dir)? {
        Some(cache) => (cache, false),
        None if end > log_start => {
            let cache = rebuild(segments)?;
            tracing::info!(
                dir = %dir.display(),
                entries = cache.entries.len(),
                "rebuilt the leader-epoch checkpoint from the batch headers"
            );
            (cache, true)
        }
        // A new (or empty) log: written at once, so that a later open never
        // scans for it.
        None => (EpochCache::default(), true),
    };
    dirty |= cache.truncate_from_end(end);
    dirty |= cache.truncate_from_start(log_start);
    if dirty {
        write(disk, dir, &cache)?;
    }
    Ok(cache)
}

impl State {
    /// Entries of the leader-epoch cache that describe offsets in the log.
    pub(crate) fn visible_epochs(&self) -> &[(i32, i64)] {
        self.epochs.visible(self.end())
    }
}

impl Log {
    /// The latest leader epoch in the leader-epoch cache, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.shared
            .read_state()
            .visible_epochs()
            .last()
            .map(|&(e, _)| e)
    }

    /// The leader-epoch cache: `(epoch, start offset)` for every leader
    /// epoch that wrote to the log (through [`Log::append_with_epoch`] or
    /// [`Log::append_replicated`]), in increasing order. The first entry's
    /// start offset is at least the log start offset.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.shared.read_state().visible_epochs().to_vec()
    }

    /// Kafka's OffsetsForLeaderEpoch: the largest epoch `E <= requested` in
    /// the leader-epoch cache and the end offset of `E` (exclusive): the
    /// start offset of the first epoch after `E`, or the log end offset if
    /// `E` is the latest epoch. `None` if `requested` is below the earliest
    /// epoch in the cache (the caller answers "unknown") or the cache is
    /// empty.
    ///
    /// A follower whose latest epoch is `F` truncates its log to
    /// `min(its end offset, leader's end_offset_for_epoch(F).1)` when the
    /// returned epoch is `F`, and otherwise repeats the question with the
    /// returned epoch (KIP-279).
    pub fn end_offset_for_epoch(&self, requested: i32) -> Option<(i32, i64)> {
        let st = self.shared.read_state();
        st.epochs.end_offset_for(requested, st.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        EpochCache::from_entries(entries.to_vec())
    }

    #[test]
    fn plan_adds_entries_on_epoch_increases_only() {
        let c = cache(&[(1, 0)]);
        let next = c.plan(10, [(1, 10), (2, 12), (2, 15), (4, 20)]).unwrap();
        assert_eq!(next, Some(cache(&[(1, 0), (2, 12), (4, 20)])));
        assert_eq!(c.plan(10, [(1, 10)]).unwrap(), None);
        assert_eq!(c.plan(10, []).unwrap(), None);
        let err = c.plan(10, [(1, 10), (0, 11)]).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::StaleLeaderEpoch {
                    epoch: 0,
                    latest: 1
                }
            ),
            "{err}"
        );
        // Unset epochs make no entry, and are older than any epoch.
        assert_eq!(EpochCache::default().plan(0, [(-1, 0)]).unwrap(), None);
        assert!(c.plan(10, [(-1, 10)]).is_err());
    }

    #[test]
    fn entries_beyond_the_end_are_ignored_and_replaced() {
        // (5, 10) was written before a batch that never made it.
        let c = cache(&[(3, 0), (5, 10)]);
        assert_eq!(c.visible(10), &[(3, 0)]);
        assert_eq!(c.plan(10, [(5, 10)]).unwrap(), None);
        let p = |batches: &[(i32, i64)]| c.plan(10, batches.to_vec()).unwrap();
        assert_eq!(p(&[(4, 10)]), Some(cache(&[(3, 0), (4, 10)])));
        assert_eq!(p(&[(6, 10)]), Some(cache(&[(3, 0), (6, 10)])));
        // A batch of the visible latest epoch takes the offset: the entry
        // beyond the end goes, or it would claim that batch.
        assert_eq!(p(&[(3, 10)]), Some(cache(&[(3, 0)])));
        assert_eq!(p(&[]), Some(cache(&[(3, 0)])));
        assert_eq!(c.end_offset_for(5, 10), Some((3, 10)));
    }

    #[test]
    fn end_offset_for_follows_offsets_for_leader_epoch() {
        let c = cache(&[(2, 5), (4, 20), (7, 30)]);
        assert_eq!(c.end_offset_for(1, 40), None);
        assert_eq!(c.end_offset_for(-1, 40), None);
        assert_eq!(c.end_offset_for(2, 40), Some((2, 20)));
        assert_eq!(c.end_offset_for(3, 40), Some((2, 20)));
        assert_eq!(c.end_offset_for(4, 40), Some((4, 30)));
        assert_eq!(c.end_offset_for(6, 40), Some((4, 30)));
        assert_eq!(c.end_offset_for(7, 40), Some((7, 40)));
        assert_eq!(c.end_offset_for(100, 40), Some((7, 40)));
        assert_eq!(EpochCache::default().end_offset_for(0, 40), None);
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(2, 5), (4, 20), (7, 30)]);
        assert!(!c.truncate_from_end(31));
        assert!(c.truncate_from_end(30));
        assert_eq!(c, cache(&[(2, 5), (4, 20)]));
        assert!(!c.truncate_from_start(5));
        assert!(!c.truncate_from_start(3));
        assert!(c.truncate_from_start(12));
        assert_eq!(c, cache(&[(2, 12), (4, 20)]));
        assert!(c.truncate_from_start(20));
        assert_eq!(c, cache(&[(4, 20)]));
        assert!(!c.truncate_from_start(20));
        assert!(c.truncate_from_start(25));
        assert_eq!(c, cache(&[(4, 25)]));
        assert!(c.truncate_from_end(0));
        assert_eq!(c, EpochCache::default());
        assert!(!c.truncate_from_start(100));
    }

    #[test]
    fn text_round_trip_and_malformed_files() {
        let c = cache(&[(0, 0), (3, 17), (9, 400)]);
        let path = Path::new("/x/leader-epoch-checkpoint");
        assert_eq!(c.to_text(), "0\n3\n0 0\n3 17\n9 400\n");
        assert_eq!(EpochCache::parse(c.to_text().as_bytes(), path).unwrap(), c);
        assert_eq!(
            EpochCache::parse(b"0\n0\n", path).unwrap(),
            EpochCache::default()
        );
        for bad in [
            &b""[..],
            b"1\n0\n",
            b"0\n",
            b"0\nx\n",
            b"0\n2\n1 0\n",
            b"0\n1\n1\n",
            b"0\n1\n1 0 7\n",
            b"0\n1\n-1 0\n",
            b"0\n2\n1 5\n1 9\n",
            b"0\n2\n1 5\n2 5\n",
            b"0\n1\n1 5\n2 9\n",
            b"\xff",
        ] {
            let err = EpochCache::parse(bad, path).unwrap_err();
            assert!(
                matches!(&err, LogError::Corrupt { file, .. } if file == path),
                "{bad:?}: {err}"
            );
        }
    }
}
