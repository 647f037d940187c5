//! The SDK's error type.

use std::error::Error as _;
use std::fmt;

use streambus_proto::{Error, Reason};
use streambus_record::RecordError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a StreamBus error (a stable [`Reason`], a
    /// message and a retry hint). Transport failures seen while a call is
    /// under way arrive here too, as [`Reason::Unavailable`].
    #[error(transparent)]
    Server(#[from] Error),
    /// The connection to the gateway could not be set up. The message
    /// includes the transport error's causes.
    #[error("cannot connect to {addr}: {}", SourceChain(.cause))]
    Connect {
        /// The address dialled.
        addr: String,
        /// The transport failure.
        cause: tonic::transport::Error,
    },
    /// TLS options that cannot be used (a file that cannot be read, a
    /// certificate without its key).
    #[error("TLS: {message}")]
    InvalidTls {
        /// What is wrong.
        message: String,
    },
    /// The token given cannot be sent in a header.
    #[error("the token has characters an HTTP header cannot carry")]
    InvalidToken,
    /// The address given to [`crate::Client::connect`] is not a valid URI.
    #[error("invalid gateway address {addr:?}: {message}")]
    InvalidAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        message: String,
    },
    /// A record batch returned by the server does not decode.
    #[error("corrupt record batch from the server: {0}")]
    Decode(#[from] RecordError),
    /// The producer was closed before the record could be queued.
    #[error("the producer is closed")]
    Closed,
}

impl ClientError {
    /// The StreamBus reason, for errors that carry one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Server(e) => Some(e.reason),
            ClientError::Connect { .. } => Some(Reason::Unavailable),
            _ => None,
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn retriable(&self) -> bool {
        match self {
            ClientError::Server(e) => e.retriable(),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        ClientError::Server(Error::from_status(&status))
    }
}

/// Formats an error and its sources on one line (`a: b: c`), since tonic's
/// transport error alone only says "transport error".
struct SourceChain<'a>(&'a tonic::transport::Error);

impl fmt::Display for SourceChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            // hyper and tonic repeat some layers ("tcp connect error").
            let message = s.to_string();
            if message != last {
                write!(f, ": {message}")?;
            }
            last = message;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_displays_reason_and_message() {
        let status = Error::new(Reason::UnknownTopic, "topic \"x\" does not exist").to_status();
        let err = ClientError::from(status);
        assert_eq!(err.to_string(), "UNKNOWN_TOPIC: topic \"x\" does not exist");
        assert_eq!(err.reason(), Some(Reason::UnknownTopic));
        assert!(!err.retriable());
    }

    #[test]
    fn transport_status_is_retriable() {
        let err = ClientError::from(tonic::Status::unavailable("connection reset"));
        assert_eq!(err.reason(), Some(Reason::Unavailable));
        assert!(err.retriable());
    }
}
