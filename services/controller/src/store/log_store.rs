//! The Raft log, vote and commit index in sled.
//!
//! Trees: `raft_log` maps the big-endian log index to the JSON entry;
//! `raft_meta` holds `vote`, `committed` and `last_purged`. The vote and
//! appended entries are flushed to disk before openraft is told they are
//! saved.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;
use crate::error::ControllerError;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The Raft log store. Cheap to clone (sled handles are shared).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    gate: std::sync::Arc<super::WriteGate>,
    logs: sled::Tree,
    meta: sled::Tree,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

impl LogStore {
    pub(crate) fn open(
        db: &sled::Db,
        gate: std::sync::Arc<super::WriteGate>,
    ) -> Result<LogStore, ControllerError> {
        Ok(LogStore {
            db: db.clone(),
            gate,
            logs: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>, std::io::Error> {
        match self.meta.get(name)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        }
    }

    fn put_meta<T: Serialize>(&self, name: &[u8], value: &T) -> Result<(), std::io::Error> {
        let bytes = serde_json::to_vec(value)?;
        self.meta.insert(name, bytes)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), std::io::Error> {
        self.db.flush_async().await?;
        Ok(())
    }

    fn remove_range(&self, from: u64, to_inclusive: u64) -> Result<(), std::io::Error> {
        let mut batch = sled::Batch::default();
        for item in self.logs.range(key(from)..=key(to_inclusive)) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.logs.range(key(start)..) {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                StorageIOError::read_logs(&std::io::Error::other("malformed log key"))
            })?);
            if !range.contains(&index) {
                break;
            }
            entries.push(decode_entry(&v).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self
            .get_meta(LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = self
            .logs
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some((_, v)) => Some(
                decode_entry(&v)
                    .map_err(|e| StorageIOError::read_logs(&e))?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.gate
            .begin()
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.put_meta(VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self
            .get_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.gate.begin().map_err(|e| StorageIOError::write(&e))?;
        self.put_meta(COMMITTED, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        let committed: Option<Option<LogId<u64>>> = self
            .get_meta(COMMITTED)
            .map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.gate
            .begin()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&key(entry.log_id.index), bytes);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        match self.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.gate
            .begin()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_range(log_id.index, u64::MAX)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.gate
            .begin()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Record the purge point first: a crash in between leaves entries
        // that are ignored rather than a gap that is not explained.
        self.put_meta(LAST_PURGED, &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_range(0, log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
