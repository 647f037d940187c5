//! One partition replica hosted on this node: its log and its leadership.

use std::path::PathBuf;
use std::sync::Arc;

use streambus_cluster::topic_config::{FsyncSetting, TopicConfig};
use streambus_log::Log;
use tokio::sync::watch;

/// Identifies a partition: topic name and partition number.
pub type PartitionKey = (String, u32);

/// Leadership of a replica as the metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// Leader node id (0 = none).
    pub leader: u64,
    /// Leader epoch, stamped into every batch this node appends as leader.
    pub leader_epoch: u64,
}

/// A partition replica.
pub struct Replica {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The topic incarnation this replica belongs to.
    pub topic_id: String,
    /// The partition's directory.
    pub dir: PathBuf,
    /// The log.
    pub log: Arc<Log>,
    /// Topic settings at open time.
    pub config: TopicConfig,
    leadership: std::sync::Mutex<Leadership>,
    /// High watermark: records below it are visible to consumers.
    hw: watch::Sender<i64>,
}

impl Replica {
    /// Wraps an opened log.
    pub fn new(
        key: PartitionKey,
        topic_id: String,
        dir: PathBuf,
        log: Log,
        config: TopicConfig,
        leadership: Leadership,
    ) -> Replica {
        let log = Arc::new(log);
        let r = Replica {
            topic: key.0,
            partition: key.1,
            topic_id,
            dir,
            log,
            config,
            leadership: std::sync::Mutex::new(leadership),
            hw: watch::channel(0).0,
        };
        r.advance_high_watermark();
        r
    }

    /// Whether acknowledged appends are fsynced before the ack.
    pub fn fsync_always(&self) -> bool {
        self.config.fsync_policy == FsyncSetting::Always
    }

    /// Current leadership.
    pub fn leadership(&self) -> Leadership {
        self.leadership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Updates leadership from metadata.
    pub fn set_leadership(&self, l: Leadership) {
        *self.leadership.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }

    /// The high watermark.
    ///
    /// With one replica it is the log end offset, except under fsync
    /// `always`, where it is the durable offset: consumers never see a
    /// record that a crash could still take away.
    pub fn high_watermark(&self) -> i64 {
        *self.hw.borrow()
    }

    /// Recomputes the high watermark from the log and wakes waiting fetches.
    pub fn advance_high_watermark(&self) {
        let hw = if self.fsync_always() {
            self.log.durable_offset()
        } else {
            self.log.end_offset()
        };
        self.hw.send_if_modified(|cur| {
            if *cur != hw {
                *cur = hw;
                true
            } else {
                false
            }
        });
    }

    /// Subscribes to high watermark changes.
    pub fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.hw.subscribe()
    }
}
