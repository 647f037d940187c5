//! The fixed 61-byte RecordBatch v2 header.

use crate::RecordError;

/// Size of the fixed batch header that precedes the records.
pub const HEADER_SIZE: usize = 61;
/// The only supported batch format version.
pub const MAGIC: i8 = 2;
/// Bytes before `batchLength` counts: `baseOffset` (8) + `batchLength` (4).
pub const LOG_OVERHEAD: usize = 12;
/// `producerId` / `producerEpoch` / `baseSequence` value meaning "none".
pub const NO_PRODUCER_ID: i64 = -1;
/// Timestamp meaning "none".
pub const NO_TIMESTAMP: i64 = -1;

pub(crate) const BASE_OFFSET: usize = 0;
pub(crate) const BATCH_LENGTH: usize = 8;
pub(crate) const PARTITION_LEADER_EPOCH: usize = 12;
pub(crate) const MAGIC_OFFSET: usize = 16;
pub(crate) const CRC: usize = 17;
/// First byte covered by the CRC (`attributes`).
pub(crate) const ATTRIBUTES: usize = 21;
pub(crate) const LAST_OFFSET_DELTA: usize = 23;
pub(crate) const BASE_TIMESTAMP: usize = 27;
pub(crate) const MAX_TIMESTAMP: usize = 35;
pub(crate) const PRODUCER_ID: usize = 43;
pub(crate) const PRODUCER_EPOCH: usize = 51;
pub(crate) const BASE_SEQUENCE: usize = 53;
pub(crate) const RECORD_COUNT: usize = 57;

/// Attribute bits 0-2: compression codec.
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: timestamp type (0 CreateTime, 1 LogAppendTime).
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit 4: the batch is part of a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit 5: the batch is a control batch (transaction marker).
pub const ATTR_CONTROL: i16 = 0x20;

/// Compression codec of a batch's records section: Kafka's four codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records stored as is (codec 0).
    #[default]
    None,
    /// A gzip stream (codec 1), as Kafka writes it.
    Gzip,
    /// Snappy (codec 2) in the xerial framing Kafka's clients write; plain
    /// raw snappy is read too, as Kafka reads it.
    Snappy,
    /// LZ4 frame format (codec 3), as Kafka writes it.
    Lz4,
    /// Zstandard frames (codec 4).
    Zstd,
}

impl Compression {
    /// Every codec, in codec id order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Codec id stored in attribute bits 0-2.
    pub fn codec_id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name of the codec (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The codec named `name` (see [`Compression::name`]).
    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Parses the codec from batch attributes.
    ///
    /// The unassigned ids 5-7 are [`RecordError::UnsupportedCompression`].
    pub fn from_attributes(attributes: i16) -> Result<Compression, RecordError> {
        let id = (attributes & ATTR_COMPRESSION_MASK) as u8;
        Compression::ALL
            .into_iter()
            .find(|c| c.codec_id() == id)
            .ok_or(RecordError::UnsupportedCompression(id))
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The decoded fixed header of a RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (assigned by the log on append).
    pub base_offset: i64,
    /// Bytes after the `batchLength` field (total size minus 12).
    pub batch_length: i32,
    /// Leader epoch of the partition leader that appended the batch (-1 if unset).
    pub partition_leader_epoch: i32,
    /// Format version; always 2 for a parsed header.
    pub magic: i8,
    /// CRC32C over `attributes` to the end of the batch.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (base for the records' timestamp deltas).
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id (-1 if none).
    pub producer_id: i64,
    /// Idempotent producer epoch (-1 if none).
    pub producer_epoch: i16,
    /// Sequence number of the first record (-1 if none).
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

fn i16_at(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}
fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parses the fixed header at the start of `buf`.
    ///
    /// Checks only what the header alone can show: enough bytes for the
    /// header, magic 2, a `batchLength` large enough to hold the header,
    /// non-negative counts, and offsets from a non-negative `baseOffset`
    /// to a last offset below `i64::MAX` (so that [`BatchHeader::next_offset`]
    /// fits). It does not check the CRC or that `buf` holds the whole batch.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, RecordError> {
        if buf.len() < HEADER_SIZE {
            // Report the magic first if it is visible: a wrong format is a
            // clearer error than a short buffer.
            if buf.len() > MAGIC_OFFSET && buf[MAGIC_OFFSET] as i8 != MAGIC {
                return Err(RecordError::BadMagic(buf[MAGIC_OFFSET] as i8));
            }
            return Err(RecordError::Truncated {
                needed: HEADER_SIZE,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_OFFSET] as i8;
        if magic != MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        let header = BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length: i32_at(buf, BATCH_LENGTH),
            partition_leader_epoch: i32_at(buf, PARTITION_LEADER_EPOCH),
            magic,
            crc: i32_at(buf, CRC) as u32,
            attributes: i16_at(buf, ATTRIBUTES),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA),
            first_timestamp: i64_at(buf, BASE_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer_id: i64_at(buf, PRODUCER_ID),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH),
            base_sequence: i32_at(buf, BASE_SEQUENCE),
            record_count: i32_at(buf, RECORD_COUNT),
        };
        if (header.batch_length as i64) < (HEADER_SIZE - LOG_OVERHEAD) as i64 {
            return Err(RecordError::Malformed(format!(
                "batchLength {} is smaller than the header",
                header.batch_length
            )));
        }
        if header.last_offset_delta < 0 {
            return Err(RecordError::Malformed(format!(
                "negative lastOffsetDelta {}",
                header.last_offset_delta
            )));
        }
        if header.record_count < 0 {
            return Err(RecordError::Malformed(format!(
                "negative recordCount {}",
                header.record_count
            )));
        }
        // The offset after the batch must fit too (`next_offset`), so the
        // last offset is below i64::MAX.
        if header.base_offset < 0
            || header
                .base_offset
                .checked_add(i64::from(header.last_offset_delta) + 1)
                .is_none()
        {
            return Err(RecordError::Malformed(format!(
                "invalid baseOffset {} (lastOffsetDelta {})",
                header.base_offset, header.last_offset_delta
            )));
        }
        Ok(header)
    }

    /// Size of the whole batch in bytes: `12 + batchLength`.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record: `base_offset + last_offset_delta`.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset following the batch: `last_offset() + 1`.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Compression codec of the records section.
    pub fn compression(&self) -> Result<Compression, RecordError> {
        Compression::from_attributes(self.attributes)
    }

    /// Whether the batch is a control batch (transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Whether the batch is part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the timestamp type is LogAppendTime (else CreateTime).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }
}

/// Batches of one partition an idempotent producer may have in flight at
/// once, and so the batches a partition leader remembers per producer to
/// recognise retries (Kafka's limit for idempotence).
pub const PRODUCER_WINDOW: usize = 5;

/// `seq + n` in an idempotent producer's sequence space: sequence numbers
/// wrap from `i32::MAX` to 0 (as in Kafka).
pub fn sequence_add(seq: i32, n: i32) -> i32 {
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

/// Rewrites `baseOffset` in place. The CRC does not cover it, so the batch
/// stays valid.
///
/// # Panics
/// If `buf` is shorter than 8 bytes.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites `partitionLeaderEpoch` in place (not covered by the CRC).
///
/// # Panics
/// If `buf` is shorter than 16 bytes.
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: i32) {
    buf[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Rewrites the idempotent producer fields (producer id, epoch and base
/// sequence) of a whole batch in place and recomputes its CRC, which covers
/// them.
///
/// # Panics
/// If `buf` is shorter than a batch header.
pub fn set_producer(buf: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    buf[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    buf[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
    buf[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = compute_crc(buf);
    buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// CRC32C (Castagnoli) of the bytes the batch CRC covers (`attributes`..end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}
