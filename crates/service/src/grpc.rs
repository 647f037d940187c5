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
