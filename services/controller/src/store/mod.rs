//! Raft storage on sled: the log ([`LogStore`]) and the state machine
//! ([`StateMachineStore`]) live in one sled database under the controller's
//! data directory, in separate trees.

mod faults;
mod log_store;
mod reserve;
mod state_machine;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::BasicNode;

pub use faults::StoreFaults;
pub use log_store::LogStore;
pub use reserve::Reserve;
pub use state_machine::StateMachineStore;

use crate::error::ControllerError;
use crate::metadata::{Command, CommandResponse};

openraft::declare_raft_types!(
    /// The controller's openraft type configuration: JSON commands on the
    /// metadata state machine, `u64` node ids, controller addresses as nodes.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The controller's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// What every store write does first: release the space reserve if the
/// disk is short, then fail if a fault is injected.
#[derive(Debug)]
pub(crate) struct WriteGate {
    reserve: Arc<Reserve>,
    faults: Arc<StoreFaults>,
}

impl WriteGate {
    pub(crate) fn begin(&self) -> std::io::Result<()> {
        self.reserve.ensure_room();
        self.faults.check()
    }
}

/// Written and flushed at every open to check that the store takes writes.
const PROBE: &[u8] = b"write_probe";

/// Opens (or creates) the sled database under `dir` and both stores on it,
/// with a space reserve of `reserve_bytes` (0 = none) and writes failing
/// while `faults` says so. Fails unless a write to the store succeeds.
pub fn open(
    dir: &Path,
    reserve_bytes: u64,
    faults: Arc<StoreFaults>,
) -> Result<(sled::Db, LogStore, StateMachineStore, Arc<Reserve>), ControllerError> {
    std::fs::create_dir_all(dir).map_err(|source| ControllerError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let reserve = Arc::new(Reserve::open(dir, reserve_bytes));
    reserve.ensure_room();
    let db = sled::Config::new().path(dir.join("raft.sled")).open()?;
    let gate = Arc::new(WriteGate {
        reserve: reserve.clone(),
        faults,
    });
    // A store that cannot take a write is not opened: a controller that
    // started over after a store failure stays down until it can.
    gate.begin()?;
    db.insert(PROBE, &std::process::id().to_be_bytes()[..])?;
    db.flush()?;
    let log = LogStore::open(&db, gate.clone())?;
    let sm = StateMachineStore::open(&db, gate)?;
    Ok((db, log, sm, reserve))
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let (_db, log, sm, _) = open(dir.path(), 0, Arc::default()).expect("open store");
            Ok((dir, log, sm))
        }
    }

    fn entry(index: u64, command: Command) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: openraft::EntryPayload::Normal(command),
        }
    }

    fn register(node_id: u64) -> Command {
        Command::RegisterNode {
            node_id,
            address: format!("n{node_id}:7402"),
            incarnation: 1,
            directory_id: format!("dir-{node_id}"),
            rack: String::new(),
            max_partitions: 0,
        }
    }

    fn create(name: &str) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions: 2,
            replication_factor: 1,
            configs: Default::default(),
            topic_id: Some(format!("id-{name}")),
        }
    }

    #[tokio::test]
    async fn applied_metadata_is_published_and_reloaded_after_reopen() {
        use openraft::storage::RaftStateMachine;

        let dir = tempfile::tempdir().unwrap();
        let before = {
            let (_db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            let mut rx = sm.subscribe();
            let replies = sm
                .apply([
                    entry(1, register(1)),
                    entry(2, create("a")),
                    entry(3, create("b")),
                    entry(4, Command::DeleteTopic { name: "a".into() }),
                    entry(5, create("b")),
                ])
                .await
                .unwrap();
            assert!(matches!(replies[1], CommandResponse::Topic(_)));
            assert!(matches!(replies[4], CommandResponse::Rejected { .. }));
            assert!(rx.has_changed().unwrap());
            let published = rx.borrow_and_update().clone();
            assert_eq!(published.version, 5);
            assert_eq!(published.topics.keys().collect::<Vec<_>>(), ["b"]);
            published
        };
        let (_db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        assert_eq!(*sm.current(), *before);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5));
    }

    #[tokio::test]
    async fn installed_snapshot_replaces_state_and_survives_reopen() {
        use openraft::RaftSnapshotBuilder;
        use openraft::storage::RaftStateMachine;

        let source_dir = tempfile::tempdir().unwrap();
        let (_db, _log, mut source, _) = open(source_dir.path(), 0, Arc::default()).unwrap();
        source
            .apply([entry(1, register(1)), entry(2, create("kept"))])
            .await
            .unwrap();
        let snapshot = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            sm.apply([entry(1, register(9)), entry(2, create("dropped"))])
                .await
                .unwrap();
            sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            assert_eq!(*sm.current(), *source.current());
        }
        let (_db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        assert_eq!(*sm.current(), *source.current());
        assert!(sm.current().topics.contains_key("kept"));
        assert!(!sm.current().nodes.contains_key(&9));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
    }

    /// openraft's storage conformance suite (it runs its own runtimes).
    #[test]
    fn sled_store_passes_openraft_storage_suite() {
        Suite::test_all(SledBuilder).unwrap();
    }
}
