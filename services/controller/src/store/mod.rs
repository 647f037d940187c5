//! Raft storage on sled: the log ([`LogStore`]) and the state machine
//! ([`StateMachineStore`]) live in one sled database under the controller's
//! data directory, in separate trees.

mod log_store;
mod state_machine;

use std::io::Cursor;
use std::path::Path;

use openraft::BasicNode;

pub use log_store::LogStore;
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

/// Opens (or creates) the sled database under `dir` and both stores on it.
pub fn open(dir: &Path) -> Result<(sled::Db, LogStore, StateMachineStore), ControllerError> {
    std::fs::create_dir_all(dir).map_err(|source| ControllerError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let db = sled::Config::new().path(dir.join("raft.sled")).open()?;
    let log = LogStore::open(&db)?;
    let sm = StateMachineStore::open(&db)?;
    Ok((db, log, sm))
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
            let (_db, log, sm) = open(dir.path()).expect("open store");
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
            let (_db, _log, mut sm) = open(dir.path()).unwrap();
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
        let (_db, _log, mut sm) = open(dir.path()).unwrap();
        assert_eq!(*sm.current(), *before);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5));
    }

    #[tokio::test]
    async fn installed_snapshot_replaces_state_and_survives_reopen() {
        use openraft::RaftSnapshotBuilder;
        use openraft::storage::RaftStateMachine;

        let source_dir = tempfile::tempdir().unwrap();
        let (_db, _log, mut source) = open(source_dir.path()).unwrap();
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
            let (_db, _log, mut sm) = open(dir.path()).unwrap();
            sm.apply([entry(1, register(9)), entry(2, create("dropped"))])
                .await
                .unwrap();
            sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            assert_eq!(*sm.current(), *source.current());
        }
        let (_db, _log, mut sm) = open(dir.path()).unwrap();
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
