//! The one place where StreamBus errors become gRPC statuses and back.
//!
//! Every error a service returns carries a [`Reason`]: a stable string that
//! clients match on, a gRPC code, and a retry hint. The reason travels three
//! ways so any client can read it: as a `google.rpc.Status` with a
//! `streambus.v1.ErrorDetail` in `grpc-status-details-bin`, as the
//! `streambus-reason` metadata entry, and (for leader redirects) the
//! `streambus-leader` metadata entry.
//!
//! Reasons are never renamed or reused: retire one by leaving it in place.

use std::fmt;

use prost::Message;
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::v1::ErrorDetail;

/// Metadata key carrying the reason string.
pub const REASON_METADATA_KEY: &str = "streambus-reason";
/// Metadata key carrying a leader address hint.
pub const LEADER_METADATA_KEY: &str = "streambus-leader";

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => ($name:literal, $code:ident, $retriable:literal), )*) => {
        /// Why a request failed. The string form is stable; see `docs/errors.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in documentation order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable string clients match on.
            pub fn as_str(self) -> &'static str {
                match self { $( Reason::$variant => $name, )* }
            }

            /// The gRPC code this reason maps to.
            pub fn code(self) -> Code {
                match self { $( Reason::$variant => Code::$code, )* }
            }

            /// Whether the same request may succeed if retried later.
            pub fn retriable(self) -> bool {
                match self { $( Reason::$variant => $retriable, )* }
            }

            /// Parses the stable string form.
            pub fn parse(s: &str) -> Option<Reason> {
                match s { $( $name => Some(Reason::$variant), )* _ => None }
            }
        }
    };
}

reasons! {
    /// A request field is missing or out of its documented range.
    InvalidArgument => ("INVALID_ARGUMENT", InvalidArgument, false),
    /// A topic name breaks the naming rules.
    InvalidTopicName => ("INVALID_TOPIC_NAME", InvalidArgument, false),
    /// A topic configuration key is unknown or its value invalid.
    InvalidConfig => ("INVALID_CONFIG", InvalidArgument, false),
    /// The topic does not exist.
    UnknownTopic => ("UNKNOWN_TOPIC", NotFound, false),
    /// The topic exists but has no such partition.
    UnknownPartition => ("UNKNOWN_PARTITION", NotFound, false),
    /// A topic with this name already exists.
    TopicAlreadyExists => ("TOPIC_ALREADY_EXISTS", AlreadyExists, false),
    /// A record or batch is larger than the topic allows.
    RecordTooLarge => ("RECORD_TOO_LARGE", InvalidArgument, false),
    /// A pre-encoded batch is malformed or fails its CRC.
    CorruptBatch => ("CORRUPT_BATCH", InvalidArgument, false),
    /// The offset is below the log start or above the log end.
    OffsetOutOfRange => ("OFFSET_OUT_OF_RANGE", OutOfRange, false),
    /// The node asked is not the partition leader (see the leader hint).
    NotLeader => ("NOT_LEADER", Unavailable, true),
    /// The controller asked is not the Raft leader (see the leader hint).
    NotControllerLeader => ("NOT_CONTROLLER_LEADER", Unavailable, true),
    /// Not enough live storage nodes for the replication factor.
    InsufficientNodes => ("INSUFFICIENT_NODES", FailedPrecondition, true),
    /// The request asks for something this version does not support.
    Unsupported => ("UNSUPPORTED", Unimplemented, false),
    /// Too much in flight; back off and retry.
    Overloaded => ("OVERLOADED", ResourceExhausted, true),
    /// The operation did not finish within its deadline.
    Timeout => ("TIMEOUT", DeadlineExceeded, true),
    /// A dependency (controller, storage node) cannot be reached.
    Unavailable => ("UNAVAILABLE", Unavailable, true),
    /// The server is shutting down.
    ShuttingDown => ("SHUTTING_DOWN", Unavailable, true),
    /// Stored data failed verification.
    CorruptLog => ("CORRUPT_LOG", DataLoss, false),
    /// A local disk operation failed.
    StorageError => ("STORAGE_ERROR", Internal, false),
    /// A bug or unexpected state.
    Internal => ("INTERNAL", Internal, false),
    /// The partition's replica on its leader cannot be served (its log
    /// failed to open or failed an fsync); the node keeps trying to open it.
    /// Not retried automatically: it needs an operator or a leader change.
    PartitionOffline => ("PARTITION_OFFLINE", Unavailable, false),
    /// Another live storage node, with another data directory, is
    /// registered with this node id.
    NodeIdConflict => ("NODE_ID_CONFLICT", FailedPrecondition, false),
    /// A storage node's data directory belongs to another cluster.
    ClusterIdMismatch => ("CLUSTER_ID_MISMATCH", FailedPrecondition, false),
    /// `acks=all` with fewer in-sync replicas than the topic's
    /// `min.insync.replicas` (before the append, or while waiting for the
    /// replicas after it).
    NotEnoughReplicas => ("NOT_ENOUGH_REPLICAS", Unavailable, true),
    /// An idempotent producer's batch does not continue its sequence for
    /// the partition: an earlier batch is missing. The producer must not
    /// retry it as is.
    OutOfOrderSequence => ("OUT_OF_ORDER_SEQUENCE", FailedPrecondition, false),
    /// An idempotent producer's epoch is older than the partition has seen:
    /// another instance took its producer id over.
    ProducerFenced => ("PRODUCER_FENCED", FailedPrecondition, false),
    /// The storage node's disk is past its usage watermark
    /// (`storage_node.disk_min_free_bytes` / `disk_max_used_percent`):
    /// produce to its partitions is refused until space is freed (delete a
    /// topic, lower retention); reads, replication and metadata go on.
    DiskFull => ("DISK_FULL", ResourceExhausted, true),
    /// Creating the topic or partitions would place more partition
    /// replicas on the storage nodes than their partition budgets
    /// (`storage_node.max_partitions`) allow.
    PartitionLimitReached => ("PARTITION_LIMIT_REACHED", ResourceExhausted, false),
    /// The group has no member with this id: it left, or its session ran
    /// out. It must rejoin (member epoch 0), owning nothing.
    UnknownMember => ("UNKNOWN_MEMBER", FailedPrecondition, false),
    /// The member's epoch is not its current one: another instance took
    /// its place, or it missed a rebalance. It must rejoin.
    FencedMemberEpoch => ("FENCED_MEMBER_EPOCH", FailedPrecondition, false),
    /// A commit names a partition the member does not own.
    PartitionNotAssigned => ("PARTITION_NOT_ASSIGNED", FailedPrecondition, false),
    /// The operation needs a group without live members (setting offsets
    /// as a tool, deleting the group).
    GroupNotEmpty => ("GROUP_NOT_EMPTY", FailedPrecondition, false),
    /// The group has as many members as the coordinator allows.
    GroupFull => ("GROUP_FULL", ResourceExhausted, false),
    /// No such group.
    UnknownGroup => ("UNKNOWN_GROUP", NotFound, false),
    /// The gateway requires authentication and the call carried no
    /// credentials it accepts: no client certificate or token, a token it
    /// does not know, or a method it does not use.
    Unauthenticated => ("UNAUTHENTICATED", Unauthenticated, false),
    /// The caller's principal may not do this: no ACL allows the
    /// operation on the resource, or one denies it. The message names the
    /// principal, the operation and the resource.
    PermissionDenied => ("PERMISSION_DENIED", PermissionDenied, false),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A StreamBus error: a reason, a message and an optional leader hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Error {
    /// The stable reason.
    pub reason: Reason,
    /// What went wrong, for humans.
    pub message: String,
    /// For leader redirects: where the leader is.
    pub leader_hint: Option<String>,
}

/// `google.rpc.Status`, as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

const DETAIL_TYPE_URL: &str = "type.googleapis.com/streambus.v1.ErrorDetail";

impl Error {
    /// An error with a reason and message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Error {
        Error {
            reason,
            message: message.into(),
            leader_hint: None,
        }
    }

    /// Adds a leader address hint.
    pub fn with_leader_hint(mut self, leader: impl Into<String>) -> Error {
        let leader = leader.into();
        self.leader_hint = (!leader.is_empty()).then_some(leader);
        self
    }

    /// Whether retrying may succeed.
    pub fn retriable(&self) -> bool {
        self.reason.retriable()
    }

    /// The in-band form used for per-batch produce errors.
    pub fn to_detail(&self) -> ErrorDetail {
        ErrorDetail {
            reason: self.reason.as_str().to_string(),
            message: self.message.clone(),
            retriable: self.reason.retriable(),
            leader_hint: self.leader_hint.clone().unwrap_or_default(),
            code: self.reason.code() as i32,
        }
    }

    /// Reads the in-band form. An unknown reason string (from a newer
    /// server) becomes [`Reason::Internal`] with the string in the message.
    pub fn from_detail(detail: &ErrorDetail) -> Error {
        match Reason::parse(&detail.reason) {
            Some(reason) => Error {
                reason,
                message: detail.message.clone(),
                leader_hint: (!detail.leader_hint.is_empty()).then(|| detail.leader_hint.clone()),
            },
            None => Error::new(
                Reason::Internal,
                format!("{}: {}", detail.reason, detail.message),
            ),
        }
    }

    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        let detail = self.to_detail();
        let status = RpcStatus {
            code: self.reason.code() as i32,
            message: self.message.clone(),
            details: vec![RpcAny {
                type_url: DETAIL_TYPE_URL.to_string(),
                value: detail.encode_to_vec(),
            }],
        };
        let mut metadata = MetadataMap::new();
        metadata.insert(
            REASON_METADATA_KEY,
            MetadataValue::from_static(self.reason.as_str()),
        );
        if let Some(leader) = &self.leader_hint
            && let Ok(value) = MetadataValue::try_from(leader.as_str())
        {
            metadata.insert(LEADER_METADATA_KEY, value);
        }
        tonic::Status::with_details_and_metadata(
            self.reason.code(),
            self.message.clone(),
            status.encode_to_vec().into(),
            metadata,
        )
    }

    /// Recovers the error from a status. Statuses that carry no StreamBus
    /// detail (transport failures, other servers) are mapped by code.
    pub fn from_status(status: &tonic::Status) -> Error {
        if let Ok(rpc) = RpcStatus::decode(status.details())
            && let Some(any) = rpc.details.iter().find(|a| a.type_url == DETAIL_TYPE_URL)
            && let Ok(detail) = ErrorDetail::decode(any.value.as_slice())
        {
            return Error::from_detail(&detail);
        }
        let reason = match status.code() {
            Code::InvalidArgument => Reason::InvalidArgument,
            Code::NotFound => Reason::UnknownTopic,
            Code::AlreadyExists => Reason::TopicAlreadyExists,
            Code::OutOfRange => Reason::OffsetOutOfRange,
            Code::DeadlineExceeded => Reason::Timeout,
            Code::ResourceExhausted => Reason::Overloaded,
            Code::Unimplemented => Reason::Unsupported,
            Code::DataLoss => Reason::CorruptLog,
            Code::Unauthenticated => Reason::Unauthenticated,
            Code::PermissionDenied => Reason::PermissionDenied,
            Code::Unavailable | Code::Cancelled | Code::Unknown => Reason::Unavailable,
            _ => Reason::Internal,
        };
        // A status the client's transport made (the connection failed)
        // carries the cause as its source: say it, the TLS alert of a
        // refused certificate, say, rather than only "transport error".
        let mut message = status.message().to_string();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Error::new(reason, message)
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        e.to_status()
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error::from_status(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_a_status() {
        for &reason in Reason::ALL {
            let err = Error::new(reason, "boom").with_leader_hint("127.0.0.1:1");
            let status = err.to_status();
            assert_eq!(status.code(), reason.code());
            assert_eq!(
                status.metadata().get(REASON_METADATA_KEY).unwrap(),
                reason.as_str()
            );
            assert_eq!(Error::from_status(&status), err);
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn reason_strings_are_unique() {
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn foreign_status_maps_by_code() {
        let err = Error::from_status(&tonic::Status::unavailable("connection refused"));
        assert_eq!(err.reason, Reason::Unavailable);
        assert!(err.retriable());
    }
}
