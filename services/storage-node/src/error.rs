//! Storage node errors and their mapping to the shared reasons.

use streambus_log::LogError;
use streambus_proto::{Error, Reason};

/// Turns a log error into the error a client sees.
pub fn log_error(topic: &str, partition: u32, e: LogError) -> Error {
    let tp = format!("{topic}/{partition}");
    match e {
        LogError::OffsetBelowStart { offset, log_start } => Error::new(
            Reason::OffsetOutOfRange,
            format!("offset {offset} is below the log start offset {log_start} of {tp}"),
        ),
        LogError::OffsetAboveEnd { offset, end } => Error::new(
            Reason::OffsetOutOfRange,
            format!("offset {offset} is above the log end offset {end} of {tp}"),
        ),
        LogError::BatchTooLarge { size, max } => Error::new(
            Reason::RecordTooLarge,
            format!("batch of {size} bytes exceeds max.message.bytes {max} of {tp}"),
        ),
        LogError::InvalidBatch(e) => {
            Error::new(Reason::CorruptBatch, format!("invalid batch for {tp}: {e}"))
        }
        e @ LogError::Corrupt { .. } => Error::new(Reason::CorruptLog, format!("{tp}: {e}")),
        e @ LogError::StaleLeaderEpoch { .. } => {
            Error::new(Reason::NotLeader, format!("{tp}: {e}"))
        }
        e @ LogError::NonContiguous { .. } => {
            Error::new(Reason::OffsetOutOfRange, format!("{tp}: {e}"))
        }
        e @ LogError::OutOfOrderSequence { .. } => {
            Error::new(Reason::OutOfOrderSequence, format!("{tp}: {e}"))
        }
        e @ LogError::ProducerFenced { .. } => {
            Error::new(Reason::ProducerFenced, format!("{tp}: {e}"))
        }
        other => Error::new(Reason::StorageError, format!("{tp}: {other}")),
    }
}

/// Errors that stop a storage node from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum StorageNodeError {
    /// The gRPC listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The controller refused this node (another live node has its id,
    /// its data directory belongs to another cluster, or a newer process
    /// registered its id).
    #[error("refused by the controller: {0}")]
    Refused(streambus_proto::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The heartbeat thread or its runtime could not start.
    #[error("cannot start the heartbeat thread: {0}")]
    HeartbeatThread(std::io::Error),
}
