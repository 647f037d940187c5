//! Gateway settings.

use std::net::SocketAddr;

use serde::Deserialize;

/// Settings of one gateway. Every field has a dev-friendly default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the public gRPC API listens.
    pub listen_addr: SocketAddr,
    /// Controller addresses (host:port).
    pub controllers: Vec<String>,
    /// Default produce timeout when the request sets none.
    pub request_timeout_ms: u64,
    /// Batches a produce stream may have in flight before the gateway
    /// stops reading from it.
    pub max_in_flight_per_stream: usize,
    /// Upper bound for a consume long-poll wait.
    pub max_fetch_wait_ms: u64,
    /// Responses a subscription may have queued per partition before the
    /// gateway stops fetching for it.
    pub subscribe_buffer: usize,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7400)),
            controllers: vec!["127.0.0.1:7401".to_string()],
            request_timeout_ms: 30_000,
            max_in_flight_per_stream: 64,
            max_fetch_wait_ms: 30_000,
            subscribe_buffer: 4,
        }
    }
}
