//! Errors returned while parsing, validating or decoding record batches.

use thiserror::Error;

/// Why a record batch was rejected.
///
/// Every variant describes a property of the bytes given; none of them is an
/// I/O error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The buffer ends before the structure being read does.
    #[error("truncated record batch: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed to read the structure.
        needed: usize,
        /// Bytes available in the buffer.
        available: usize,
    },
    /// The magic byte is not 2 (only RecordBatch v2 is supported).
    #[error("unsupported record batch magic {0} (only magic 2 is supported)")]
    BadMagic(i8),
    /// The CRC32C stored in the header does not match the bytes.
    #[error("record batch CRC mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    BadCrc {
        /// CRC stored in the batch header.
        expected: u32,
        /// CRC computed over attributes..end.
        actual: u32,
    },
    /// `12 + batchLength` does not match the size of the buffer holding one batch.
    #[error(
        "record batch length mismatch: header declares {declared} bytes, buffer holds {actual}"
    )]
    LengthMismatch {
        /// Total size declared by the header (`12 + batchLength`).
        declared: usize,
        /// Bytes actually given.
        actual: usize,
    },
    /// The number of records decoded differs from `recordCount`.
    #[error("record count mismatch: header declares {declared} records, found {actual}")]
    RecordCountMismatch {
        /// `recordCount` from the header.
        declared: i32,
        /// Records actually present.
        actual: i32,
    },
    /// The compression codec in the attributes is not supported by this build.
    #[error(
        "unsupported compression codec {0} (supported: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)"
    )]
    UnsupportedCompression(u8),
    /// The batch timestamps are inconsistent.
    #[error("invalid timestamps: {0}")]
    InvalidTimestamps(String),
    /// The batch is structurally invalid for another reason.
    #[error("malformed record batch: {0}")]
    Malformed(String),
    /// The compressed records section could not be decompressed.
    #[error("cannot decompress records: {0}")]
    Decompression(String),
}
