//! Standard gRPC health checking and server reflection, mounted on every
//! service.

use tonic_health::server::HealthReporter;

/// Reflection over every StreamBus `.proto` (public and internal).
///
/// # Panics
/// Never in practice: the descriptor set is produced by the build script.
pub fn reflection_service() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(streambus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid")
}

/// A health service (`grpc.health.v1.Health`) and its reporter. The overall
/// status (`""`) starts NOT_SERVING; call [`set_serving`] when ready.
pub fn health_service() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Marks the whole server and the named services SERVING.
pub async fn set_serving(reporter: &HealthReporter, services: &[&str]) {
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for s in services {
        reporter
            .set_service_status(*s, tonic_health::ServingStatus::Serving)
            .await;
    }
}

/// Marks the whole server and the named services NOT_SERVING (draining).
pub async fn set_not_serving(reporter: &HealthReporter, services: &[&str]) {
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for s in services {
        reporter
            .set_service_status(*s, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// The connection stream for a tonic server on a pre-bound listener, with
/// `TCP_NODELAY` set on every accepted connection (without it, Nagle's
/// algorithm and delayed ACKs add tens of milliseconds to small writes).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Largest gRPC message StreamBus services send or accept (a fetch
/// response at most), on both the public and the internal APIs.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 stream flow-control window for StreamBus connections. The h2
/// default (64 KiB) makes a 256 KiB batch wait for several window updates
/// per hop; a larger window is still a hard bound per stream.
pub const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// HTTP/2 connection flow-control window (shared by a connection's streams).
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// A tonic server builder with StreamBus's transport settings.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
}
