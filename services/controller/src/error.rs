//! Errors of the controller crate (server lifecycle and storage). Request
//! errors are `streambus_proto::Error`s with a stable reason.

use std::path::PathBuf;

/// Why the controller could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration is inconsistent.
    #[error("invalid controller config: {0}")]
    Config(String),
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The sled database failed.
    #[error("controller store: {0}")]
    Store(#[from] sled::Error),
    /// Stored data could not be decoded.
    #[error("corrupt controller store: {0}")]
    Corrupt(String),
    /// Binding or serving the gRPC listener failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Network I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// openraft failed to start, initialize or shut down.
    #[error("raft: {0}")]
    Raft(String),
}
