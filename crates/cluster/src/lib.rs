//! What the StreamBus services share about the cluster, so that no service
//! links another service's internals:
//!
//! - [`client::ControllerClient`]: how storage nodes, gateways and tools
//!   talk to the controllers.
//! - [`topic_config`]: the per-topic configuration rules (parsing,
//!   defaults, validation against the partition log's own limits, and the
//!   translation into [`streambus_log::LogConfig`]). The controller refuses
//!   exactly what a storage node could not open.
//! - [`acl_wire`]: ACLs between their model and their wire form.
//! - [`view::ClusterView`]: the metadata snapshot clients hold, with
//!   topics and partitions shared between versions.

pub mod acl_wire;
pub mod client;
pub mod topic_config;
pub mod view;

pub use client::ControllerClient;
pub use topic_config::TopicConfig;
pub use view::{ClusterView, TopicView};

/// Largest metadata message (a full cluster snapshot) sent or accepted
/// between controllers and their clients.
pub const MAX_METADATA_MESSAGE_BYTES: usize = 64 << 20;

/// A random 128-bit id in hex: topic ids, the cluster id, data directory ids.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
