//! The storage node's data directory: an exclusive lock, and a stamp
//! (`node.json`) naming the node, the directory and the cluster it belongs
//! to, so a directory is never served by two processes at once, by another
//! node id, or to another cluster.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StorageNodeError;

/// The stamp file.
pub const STAMP_FILE: &str = "node.json";
/// The lock file, held with an exclusive advisory lock while serving.
pub const LOCK_FILE: &str = ".lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    node_id: u64,
    directory_id: String,
    /// Empty until the first registration with a controller.
    #[serde(default)]
    cluster_id: String,
}

/// An opened, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    stamp: Stamp,
    /// Held for the life of the process; the lock goes with the file.
    _lock: File,
}

fn dir_error(path: &Path, source: std::io::Error) -> StorageNodeError {
    StorageNodeError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dir/name` atomically and durably.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl DataDir {
    /// Creates (if needed), locks and reads the stamp of `path` for node
    /// `node_id`. A directory locked by another process, or stamped for
    /// another node id, is refused.
    pub fn open(path: &Path, node_id: u64) -> Result<DataDir, StorageNodeError> {
        // Durably: a power loss must not take away a directory this node
        // already stamped and registered with.
        streambus_log::io::create_dir_all(&streambus_log::io::StdIo, path)
            .map_err(|e| dir_error(path, e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(|e| dir_error(path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StorageNodeError::Config(format!(
                    "data directory {} is in use by another storage node process",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(dir_error(path, e)),
        }
        let stamp_path = path.join(STAMP_FILE);
        let stamp = match std::fs::read(&stamp_path) {
            Ok(bytes) => {
                let stamp: Stamp = serde_json::from_slice(&bytes).map_err(|e| {
                    StorageNodeError::Config(format!(
                        "{} is not a valid stamp file: {e}",
                        stamp_path.display()
                    ))
                })?;
                if stamp.node_id != node_id {
                    return Err(StorageNodeError::Config(format!(
                        "data directory {} belongs to storage node {}, but this node is configured as node {node_id}",
                        path.display(),
                        stamp.node_id
                    )));
                }
                stamp
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let stamp = Stamp {
                    node_id,
                    directory_id: streambus_cluster::random_id(),
                    cluster_id: String::new(),
                };
                let bytes = serde_json::to_vec_pretty(&stamp).expect("a stamp serializes");
                write_atomic(path, STAMP_FILE, &bytes).map_err(|e| dir_error(path, e))?;
                stamp
            }
            Err(e) => return Err(dir_error(&stamp_path, e)),
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            stamp,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's random id, fixed when it was first used.
    pub fn directory_id(&self) -> &str {
        &self.stamp.directory_id
    }

    /// The cluster the directory belongs to; empty before the first
    /// registration.
    pub fn cluster_id(&self) -> &str {
        &self.stamp.cluster_id
    }

    /// Records the cluster id after the first registration. Refuses to
    /// change an existing one.
    pub fn stamp_cluster(&mut self, cluster_id: &str) -> Result<(), StorageNodeError> {
        if self.stamp.cluster_id == cluster_id || cluster_id.is_empty() {
            return Ok(());
        }
        if !self.stamp.cluster_id.is_empty() {
            return Err(StorageNodeError::Config(format!(
                "data directory {} belongs to cluster {}, not {cluster_id}",
                self.path.display(),
                self.stamp.cluster_id
            )));
        }
        let mut stamp = self.stamp.clone();
        stamp.cluster_id = cluster_id.to_string();
        let bytes = serde_json::to_vec_pretty(&stamp).expect("a stamp serializes");
        write_atomic(&self.path, STAMP_FILE, &bytes).map_err(|e| dir_error(&self.path, e))?;
        self.stamp = stamp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_stamped_and_keeps_its_id() {
        let tmp = tempfile::tempdir().unwrap();
        let id = {
            let mut d = DataDir::open(tmp.path(), 3).unwrap();
            assert_eq!(d.cluster_id(), "");
            assert_eq!(d.directory_id().len(), 32);
            d.stamp_cluster("c1").unwrap();
            d.directory_id().to_string()
        };
        let d = DataDir::open(tmp.path(), 3).unwrap();
        assert_eq!(d.directory_id(), id);
        assert_eq!(d.cluster_id(), "c1");
    }

    #[test]
    fn a_directory_of_another_node_id_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        drop(DataDir::open(tmp.path(), 3).unwrap());
        let err = DataDir::open(tmp.path(), 4).unwrap_err().to_string();
        assert!(err.contains("belongs to storage node 3"), "{err}");
    }

    #[test]
    fn a_locked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _held = DataDir::open(tmp.path(), 3).unwrap();
        let err = DataDir::open(tmp.path(), 3).unwrap_err().to_string();
        assert!(err.contains("in use by another"), "{err}");
    }

    #[test]
    fn the_cluster_id_never_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = DataDir::open(tmp.path(), 3).unwrap();
        d.stamp_cluster("c1").unwrap();
        let err = d.stamp_cluster("c2").unwrap_err().to_string();
        assert!(err.contains("belongs to cluster c1"), "{err}");
    }
}
