//! The StreamBus controller: the Raft-replicated metadata authority.
//!
//! It holds topics, partition assignment and leadership, and storage-node
//! membership in an openraft group whose log and state machine live in sled
//! under `data_dir`. See `docs/controller.md`.
//!
//! - [`serve`] / [`serve_with_listener`] / [`serve_with_options`] run one
//!   controller until a shutdown future completes.
//! - `streambus_cluster::ControllerClient` is how other services talk to
//!   it, and `streambus_cluster::topic_config` holds the topic
//!   configuration rules it enforces.

mod balancer;
pub mod config;
pub mod error;
mod grpc;
mod leadership;
mod leases;
mod membership;
pub mod metadata;
pub mod metrics;
mod network;
mod raft_service;
mod server;
mod store;

pub use config::{ControllerConfig, Peer};
pub use error::ControllerError;
pub use metrics::Metrics;
pub use network::PeerDial;
pub use server::{ServeOptions, serve, serve_with_listener, serve_with_options};
pub use store::StoreFaults;
