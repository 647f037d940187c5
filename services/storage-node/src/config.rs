//! Storage node settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Settings of one storage node. Every field has a dev-friendly default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageNodeConfig {
    /// This node's id: explicit, stable across restarts, unique in the
    /// cluster. Never derived from a hostname.
    pub node_id: u64,
    /// Where the StorageService listens.
    pub listen_addr: SocketAddr,
    /// The address other services use to reach this node; empty = listen_addr.
    pub advertised_addr: String,
    /// Partition directories live here.
    pub data_dir: PathBuf,
    /// Controller addresses (host:port); any of them, the leader is found.
    pub controllers: Vec<String>,
    /// How often the node renews its lease with the controller.
    pub heartbeat_interval_ms: u64,
    /// How often retention, compaction and age-based segment rolls run.
    pub maintenance_interval_ms: u64,
    /// How often offline partition replicas are opened again.
    pub reopen_interval_ms: u64,
    /// Upper bound for a fetch's long-poll wait.
    pub max_fetch_wait_ms: u64,
    /// Upper bound for one fetch response.
    pub max_fetch_bytes: u32,
    /// Bytes all appends together may hold decompressing batches to
    /// validate them (at least one largest batch, 128 MiB); a part of
    /// `memory_budget_bytes`.
    pub decompression_budget_bytes: u64,
    /// Bytes of record data the node may hold at once: fetch responses
    /// being read for consumers and followers, batches being appended, and
    /// decompression. Consumer fetches may use half of it and appends a
    /// quarter, so followers always have room (replication first). 0 = derived from the machine: 1/64
    /// of the memory (the cgroup limit when lower), between 256 MiB and
    /// 1 GiB.
    pub memory_budget_bytes: u64,
    /// The rack (failure domain) this node is in; replicas of a partition
    /// are placed in different racks when there are enough. Empty = none.
    pub rack: String,
    /// How long an in-sync follower may go without catching up to the
    /// leader's log end before the leader removes it from the ISR.
    pub replica_lag_time_max_ms: u64,
    /// How long an `acks=all` append waits for the in-sync replicas before
    /// it fails with `TIMEOUT` (the batch may still be committed later).
    pub ack_timeout_ms: u64,
    /// How long a follower's fetch waits at the leader for new data.
    pub replica_fetch_wait_ms: u64,
    /// Produce is refused with `DISK_FULL` while the data directory's file
    /// system has fewer bytes available than this.
    pub disk_min_free_bytes: u64,
    /// Produce is refused with `DISK_FULL` while the data directory's file
    /// system is more than this percent used (1 to 100; 100 = no limit).
    pub disk_max_used_percent: u8,
    /// The most partition replicas this node may host (its partition
    /// budget, declared to the controller, which refuses topics and
    /// partitions past it with `PARTITION_LIMIT_REACHED`). 0 = derived
    /// from the node's limits: see [`derived_max_partitions`].
    pub max_partitions: u64,
    /// At most this many partition-log files (segments, indexes,
    /// checkpoints) are open at once, however many partitions the node
    /// hosts: idle ones are closed and opened again when used (see
    /// [`streambus_log::HandleCache`]). 0 = derived: half of the process's
    /// soft open-file limit (`RLIMIT_NOFILE`, which `streambus` raises to
    /// the hard limit at start), leaving the rest to sockets, the
    /// controller's Raft store in `dev` and everything else. Otherwise at
    /// least 16 and below the soft limit.
    pub max_open_files: u64,
    /// Consumer groups this node coordinates (those of the `__groups`
    /// partitions it leads): a member that sends no heartbeat for this
    /// long is removed and its partitions go to the others.
    pub group_session_timeout_ms: u64,
    /// How often group members are told to heartbeat.
    pub group_heartbeat_interval_ms: u64,
    /// How long a member may take to release partitions moving to another
    /// member, unless it asks for another limit when it joins.
    pub group_rebalance_timeout_ms: u64,
    /// Members per group.
    pub group_max_members: u32,
    /// An empty group and its committed offsets are deleted after this
    /// long without members (Kafka's `offsets.retention.minutes`).
    pub group_retention_ms: u64,
}

/// Memory counted per hosted partition replica (indexes, replica state).
pub const MEMORY_PER_PARTITION: u64 = 256 * 1024;
/// The derived partition budget is never more than this.
pub const MAX_DERIVED_PARTITIONS: u64 = 100_000;

/// The partition budget when `max_partitions` is 0: one partition per
/// [`MEMORY_PER_PARTITION`] of memory, at most [`MAX_DERIVED_PARTITIONS`],
/// at least 1. Open files do not bound it: the logs share a bounded
/// file-handle cache (`max_open_files`). Memory that cannot be read does
/// not bound it.
pub fn derived_max_partitions(memory: Option<u64>) -> u64 {
    memory
        .map_or(u64::MAX, |m| m / MEMORY_PER_PARTITION)
        .clamp(1, MAX_DERIVED_PARTITIONS)
}

impl Default for StorageNodeConfig {
    fn default() -> StorageNodeConfig {
        StorageNodeConfig {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7402)),
            advertised_addr: String::new(),
            data_dir: PathBuf::from("data/storage"),
            controllers: vec!["127.0.0.1:7401".to_string()],
            heartbeat_interval_ms: 1000,
            maintenance_interval_ms: 60_000,
            reopen_interval_ms: 5_000,
            max_fetch_wait_ms: 30_000,
            max_fetch_bytes: 16 * 1024 * 1024,
            decompression_budget_bytes: 256 * 1024 * 1024,
            memory_budget_bytes: 0,
            rack: String::new(),
            replica_lag_time_max_ms: 10_000,
            ack_timeout_ms: 8_000,
            replica_fetch_wait_ms: 500,
            disk_min_free_bytes: 256 * 1024 * 1024,
            disk_max_used_percent: 98,
            max_partitions: 0,
            max_open_files: 0,
            group_session_timeout_ms: 45_000,
            group_heartbeat_interval_ms: 1_000,
            group_rebalance_timeout_ms: 60_000,
            group_max_members: 1_000,
            group_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl StorageNodeConfig {
    /// The memory budget in bytes: the setting, or derived from the machine.
    pub fn memory_budget(&self) -> usize {
        match self.memory_budget_bytes {
            0 => streambus_service::budget::derived_budget(
                streambus_service::budget::machine_memory(),
            ),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// The partition budget: the setting, or derived from the limits.
    pub fn max_partitions(&self) -> u64 {
        match self.max_partitions {
            0 => derived_max_partitions(streambus_service::budget::machine_memory()),
            n => n,
        }
    }

    /// Checks the settings that have a lower bound.
    pub fn validate(&self) -> Result<(), String> {
        let min = streambus_record::MAX_DECOMPRESSED_SIZE as u64;
        if self.decompression_budget_bytes < min {
            return Err(format!(
                "storage_node.decompression_budget_bytes must be at least {min} (one largest batch), got {}",
                self.decompression_budget_bytes
            ));
        }
        if self.decompression_budget_bytes > 1 << 32 {
            return Err(format!(
                "storage_node.decompression_budget_bytes must be at most {}, got {}",
                1u64 << 32,
                self.decompression_budget_bytes
            ));
        }
        if self.memory_budget_bytes != 0
            && self.memory_budget_bytes < min.max(u64::from(self.max_fetch_bytes) * 4)
        {
            return Err(format!(
                "storage_node.memory_budget_bytes must be 0 (derived from the machine) or at least {} (one largest batch, and four largest fetches), got {}",
                min.max(u64::from(self.max_fetch_bytes) * 4),
                self.memory_budget_bytes
            ));
        }
        if self.max_open_files != 0 && self.max_open_files < crate::open_files::MIN_MAX_OPEN_FILES {
            return Err(format!(
                "storage_node.max_open_files must be 0 (derived from the open-file limit) or at least {}, got {}",
                crate::open_files::MIN_MAX_OPEN_FILES,
                self.max_open_files
            ));
        }
        if !(1..=100).contains(&self.disk_max_used_percent) {
            return Err(format!(
                "storage_node.disk_max_used_percent must be between 1 and 100, got {}",
                self.disk_max_used_percent
            ));
        }
        for (name, v) in [
            ("replica_lag_time_max_ms", self.replica_lag_time_max_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("replica_fetch_wait_ms", self.replica_fetch_wait_ms),
        ] {
            if !(10..=3_600_000).contains(&v) {
                return Err(format!(
                    "storage_node.{name} must be between 10 and 3600000 ms, got {v}"
                ));
            }
        }
        if !(100..=3_600_000).contains(&self.group_session_timeout_ms) {
            return Err(format!(
                "storage_node.group_session_timeout_ms must be between 100 and 3600000 ms, got {}",
                self.group_session_timeout_ms
            ));
        }
        if self.group_heartbeat_interval_ms < 10
            || self.group_heartbeat_interval_ms >= self.group_session_timeout_ms
        {
            return Err(format!(
                "storage_node.group_heartbeat_interval_ms must be at least 10 ms and below group_session_timeout_ms ({}), got {}",
                self.group_session_timeout_ms, self.group_heartbeat_interval_ms
            ));
        }
        if !(100..=3_600_000).contains(&self.group_rebalance_timeout_ms) {
            return Err(format!(
                "storage_node.group_rebalance_timeout_ms must be between 100 and 3600000 ms, got {}",
                self.group_rebalance_timeout_ms
            ));
        }
        if self.group_max_members == 0 {
            return Err("storage_node.group_max_members must be at least 1".into());
        }
        if self.group_retention_ms < 1_000 {
            return Err(format!(
                "storage_node.group_retention_ms must be at least 1000 ms, got {}",
                self.group_retention_ms
            ));
        }
        Ok(())
    }

    /// The group coordinator's limits.
    pub fn group_limits(&self) -> streambus_group::Limits {
        streambus_group::Limits {
            session_timeout_ms: self.group_session_timeout_ms,
            heartbeat_interval_ms: self.group_heartbeat_interval_ms,
            default_rebalance_timeout_ms: self.group_rebalance_timeout_ms,
            max_members: self.group_max_members as usize,
        }
    }

    /// The address advertised to the controller.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        if self.advertised_addr.is_empty() {
            bound.to_string()
        } else {
            self.advertised_addr.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_partition_budget_follows_memory() {
        const GIB: u64 = 1 << 30;
        // 1 GiB holds 4,096 partitions at 256 KiB each.
        assert_eq!(derived_max_partitions(Some(GIB)), 4_096);
        // 24 GiB: 98,304.
        assert_eq!(derived_max_partitions(Some(24 * GIB)), 98_304);
        // Unreadable, or huge: the ceiling; tiny: at least one.
        assert_eq!(derived_max_partitions(None), MAX_DERIVED_PARTITIONS);
        assert_eq!(
            derived_max_partitions(Some(u64::MAX)),
            MAX_DERIVED_PARTITIONS
        );
        assert_eq!(derived_max_partitions(Some(1024)), 1);
        // A setting wins over the derivation.
        let config = StorageNodeConfig {
            max_partitions: 7,
            ..StorageNodeConfig::default()
        };
        assert_eq!(config.max_partitions(), 7);
        assert!(StorageNodeConfig::default().max_partitions() >= 1);
    }
}
