//! The StreamBus gRPC contract: generated code for every `.proto` file under
//! `proto/streambus`, plus the closed set of error reasons shared by every
//! service and client ([`error`]).

pub mod codec;
pub mod error;
pub mod partitioner;

pub use error::{Error, Reason};

/// Generated code, nested as the protobuf packages are (the generated code
/// refers across packages with `super::`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    pub mod streambus {
        pub mod v1 {
            tonic::include_proto!("streambus.v1");
        }
        pub mod internal {
            pub mod v1 {
                tonic::include_proto!("streambus.internal.v1");
            }
        }
    }
}

/// The public API (`streambus.v1`): admin, produce, consume.
pub use pb::streambus::v1;

/// Service-to-service APIs (`streambus.internal.v1`): controller, Raft,
/// storage.
pub use pb::streambus::internal::v1 as internal;

/// Encoded `FileDescriptorSet` of every StreamBus `.proto`, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streambus_descriptor.bin"));
