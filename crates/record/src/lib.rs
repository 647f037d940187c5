//! Kafka RecordBatch v2 (magic 2) encoding, byte for byte.
//!
//! One format is used on the wire and on disk: the bytes a producer sends
//! are the bytes the log writes and the bytes a fetch returns. See
//! `docs/record-format.md` for the layout.
//!
//! ```
//! use bytes::Bytes;
//! use streambus_record::{decode_records, validate_batch, BatchBuilder, Compression, Record};
//!
//! let mut b = BatchBuilder::new(Compression::Lz4);
//! b.push(&Record { key: Some(Bytes::from_static(b"k")), value: Some(Bytes::from_static(b"v")), headers: vec![], timestamp_ms: 1 });
//! let batch = b.build();
//! let header = validate_batch(&batch).unwrap();
//! assert_eq!(header.record_count, 1);
//! assert_eq!(decode_records(&batch).unwrap()[0].value.as_deref(), Some(&b"v"[..]));
//! ```

mod builder;
mod codec;
mod error;
mod header;
mod iter;
mod records;
mod varint;
mod view;

pub use builder::{BatchBuilder, Record, recompress, retain_records};
pub use codec::{
    MAX_DECOMPRESSED_SIZE, decompressed_bound, lz4_decompressed_bound, snappy_decompressed_bound,
    zstd_decompressed_bound,
};
pub use error::RecordError;
pub use header::{
    ATTR_COMPRESSION_MASK, ATTR_CONTROL, ATTR_LOG_APPEND_TIME, ATTR_TRANSACTIONAL, BatchHeader,
    Compression, HEADER_SIZE, LOG_OVERHEAD, MAGIC, NO_PRODUCER_ID, NO_TIMESTAMP, PRODUCER_WINDOW,
    compute_crc, sequence_add, set_base_offset, set_partition_leader_epoch, set_producer,
};
pub use iter::BatchIter;
pub use records::{
    DecodedRecord, Header, decode_records, decode_shared_records, timestamp_in_range,
    validate_batch,
};
pub use varint::{get_varint, get_varlong, put_varint, put_varlong};
pub use view::{HeaderView, HeaderViews, RecordView, RecordsView};

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod tests;
