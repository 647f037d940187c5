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
    /// Appends to storage nodes the whole gateway may have in flight, over
    /// every request and stream and every acks mode (an `ACKS_NONE` write
    /// counts until the storage node answers). At the limit, produce
    /// streams stop reading and unary produce waits (until its timeout,
    /// then `OVERLOADED`).
    pub max_in_flight_writes: usize,
    /// Batch bytes the whole gateway may have in flight to storage nodes;
    /// the same rules as `max_in_flight_writes`.
    pub max_in_flight_bytes: usize,
    /// Batches one unary `Produce` request may carry.
    pub max_batches_per_request: usize,
    /// Records one unary `Produce` request (all its batches together) or
    /// one `ProduceStream` message may carry.
    pub max_records_per_request: usize,
    /// Bytes of record data the whole gateway may hold at once: responses
    /// of subscriptions and fetches waiting for their clients, produce
    /// batches in flight (`max_in_flight_bytes` is a part of it) and
    /// decompression (`decompression_budget_bytes` too). 0 = derived from
    /// the machine: 1/64 of the memory (the cgroup limit when lower),
    /// between 256 MiB and 1 GiB.
    pub memory_budget_bytes: usize,
    /// Bytes the whole gateway may hold decompressing stored batches to
    /// decode them for consumers (`encoded = false`). Past it a fetch waits
    /// briefly, then fails with `OVERLOADED`; a subscription waits and
    /// retries.
    pub decompression_budget_bytes: usize,
    /// How long one call to a storage node may take (on top of a
    /// long-poll's own wait) before it is abandoned with `TIMEOUT`, so a
    /// stuck storage node cannot hold producers or in-flight capacity.
    pub storage_call_timeout_ms: u64,
    /// How long the gateway may go without hearing from a controller
    /// before it reports itself not ready (`/readyz`, gRPC health).
    pub metadata_staleness_ms: u64,
    /// Partitions of the internal `__groups` topic (consumer groups and
    /// their committed offsets), when the first group call through this
    /// gateway creates it. Fixed once created.
    pub groups_topic_partitions: u32,
    /// Its replication factor, at most the live storage nodes then.
    pub groups_topic_replication_factor: u32,
    /// How clients authenticate (docs/security.md#authentication).
    pub auth: AuthConfig,
}

/// How clients authenticate to the gateway. With no method on, every
/// client is `User:ANONYMOUS`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A verified client certificate (`tls.client_auth` `optional` or
    /// `required`) authenticates its holder as `User:<common name>` (or its
    /// first URI, then DNS subject alternative name without one).
    pub mtls: bool,
    /// A file of bearer tokens, one `NAME TOKEN` per line (`#` comments):
    /// a call with `authorization: Bearer TOKEN` is `User:NAME`. Read
    /// again when it changes.
    pub token_file: String,
    /// With a method on, let calls without credentials in as
    /// `User:ANONYMOUS` (refused with `UNAUTHENTICATED` otherwise).
    /// Credentials that do not verify are refused either way.
    pub allow_anonymous: bool,
    /// Enforce the cluster's ACLs on every call: a call no ACL allows is
    /// refused with `PERMISSION_DENIED`. Off: every principal may do
    /// everything.
    pub acls: bool,
    /// Principals (`User:<name>`) allowed everything, whatever the ACLs
    /// say.
    pub superusers: Vec<String>,
    /// Kubernetes ServiceAccount tokens, verified with the API server's
    /// TokenReview.
    pub kubernetes: KubernetesAuthConfig,
}

/// Bearer tokens verified by the Kubernetes API server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesAuthConfig {
    /// A bearer token the token file does not hold is sent to the API
    /// server's TokenReview; one it authenticates is `User:<its
    /// username>` (`User:system:serviceaccount:<namespace>:<name>`).
    pub enabled: bool,
    /// Audiences the token must be for (empty: the API server's own).
    pub audiences: Vec<String>,
    /// How long an answer is kept per token.
    pub cache_ttl_ms: u64,
}

impl Default for KubernetesAuthConfig {
    fn default() -> KubernetesAuthConfig {
        KubernetesAuthConfig {
            enabled: false,
            audiences: Vec::new(),
            cache_ttl_ms: 10_000,
        }
    }
}

impl AuthConfig {
    /// Whether any method is on.
    pub fn enabled(&self) -> bool {
        self.mtls || !self.token_file.is_empty() || self.kubernetes.enabled
    }
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
            max_in_flight_writes: 4096,
            max_in_flight_bytes: 256 * 1024 * 1024,
            max_batches_per_request: 1000,
            max_records_per_request: 100_000,
            decompression_budget_bytes: 256 * 1024 * 1024,
            memory_budget_bytes: 0,
            storage_call_timeout_ms: 10_000,
            metadata_staleness_ms: 10_000,
            groups_topic_partitions: 16,
            groups_topic_replication_factor: 3,
            auth: AuthConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// Checks the settings that have no usable zero or minimum.
    pub fn validate(&self) -> Result<(), String> {
        for s in &self.auth.superusers {
            if s.strip_prefix("User:")
                .is_none_or(|n| n.is_empty() || n == "*")
            {
                return Err(format!(
                    "gateway.auth.superusers: {s:?} is not a principal (User:<name>)"
                ));
            }
        }
        let positive = [
            ("max_in_flight_writes", self.max_in_flight_writes as u64),
            ("max_in_flight_bytes", self.max_in_flight_bytes as u64),
            (
                "max_batches_per_request",
                self.max_batches_per_request as u64,
            ),
            (
                "max_records_per_request",
                self.max_records_per_request as u64,
            ),
            (
                "decompression_budget_bytes",
                self.decompression_budget_bytes as u64,
            ),
            ("storage_call_timeout_ms", self.storage_call_timeout_ms),
            ("metadata_staleness_ms", self.metadata_staleness_ms),
            (
                "groups_topic_partitions",
                u64::from(self.groups_topic_partitions),
            ),
            (
                "groups_topic_replication_factor",
                u64::from(self.groups_topic_replication_factor),
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("gateway.{name} must be positive"));
            }
        }
        // One largest message must fit, or such a batch could never be sent.
        if self.max_in_flight_bytes < crate::MAX_MESSAGE_BYTES {
            return Err(format!(
                "gateway.max_in_flight_bytes ({}) must be at least the largest message ({} bytes)",
                self.max_in_flight_bytes,
                crate::MAX_MESSAGE_BYTES
            ));
        }
        if self.decompression_budget_bytes < streambus_record::MAX_DECOMPRESSED_SIZE {
            return Err(format!(
                "gateway.decompression_budget_bytes ({}) must be at least the largest decompressed batch ({} bytes)",
                self.decompression_budget_bytes,
                streambus_record::MAX_DECOMPRESSED_SIZE
            ));
        }
        let floor = crate::MAX_MESSAGE_BYTES.max(streambus_record::MAX_DECOMPRESSED_SIZE);
        if self.memory_budget_bytes != 0 && self.memory_budget_bytes < floor {
            return Err(format!(
                "gateway.memory_budget_bytes ({}) must be 0 (derived from the machine) or at least {floor} bytes (the largest message or decompressed batch)",
                self.memory_budget_bytes
            ));
        }
        Ok(())
    }

    /// The memory budget in bytes: the setting, or derived from the machine.
    pub fn memory_budget(&self) -> usize {
        if self.memory_budget_bytes != 0 {
            return self.memory_budget_bytes;
        }
        streambus_service::budget::derived_budget(streambus_service::budget::machine_memory())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_is_derived_from_the_machine_within_bounds() {
        let c = GatewayConfig {
            memory_budget_bytes: 1024,
            ..GatewayConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("memory_budget_bytes"));
        let c = GatewayConfig {
            memory_budget_bytes: 300 * 1024 * 1024,
            ..GatewayConfig::default()
        };
        c.validate().unwrap();
        assert_eq!(c.memory_budget(), 300 * 1024 * 1024);
        assert!(GatewayConfig::default().memory_budget() >= 256 * 1024 * 1024);
    }

    #[test]
    fn defaults_are_valid_and_zero_limits_are_not() {
        GatewayConfig::default().validate().unwrap();
        let c = GatewayConfig {
            max_batches_per_request: 0,
            ..GatewayConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .contains("max_batches_per_request")
        );
        let c = GatewayConfig {
            max_in_flight_bytes: 1024,
            ..GatewayConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("max_in_flight_bytes"));
        let c = GatewayConfig {
            decompression_budget_bytes: 1024,
            ..GatewayConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .contains("decompression_budget_bytes")
        );
    }
}
