//! What every StreamBus service shares: the HTTP endpoint (`/healthz`,
//! `/readyz`, `/metrics`), gRPC health and reflection, logging setup and
//! shutdown signals.

pub mod budget;
pub mod certs;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use http::{HttpState, Readiness};
