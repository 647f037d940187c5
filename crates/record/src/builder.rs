//! Building batches from records, and rebuilding them with fewer records.

use bytes::Bytes;

use crate::RecordError;
use crate::codec::compress;
use crate::header::{
    ATTR_COMPRESSION_MASK, BatchHeader, CRC, Compression, HEADER_SIZE, LOG_OVERHEAD, MAGIC,
    NO_PRODUCER_ID, NO_TIMESTAMP, compute_crc,
};
use crate::records::{
    DecodedRecord, Header, check_frame, check_timestamp, decoded, open_batch, walk_records,
};
use crate::varint::{put_varint, put_varlong, varint_len, varlong_len};

/// A record to be appended: key, value, headers and a CreateTime timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Record key (`None` = null).
    pub key: Option<Bytes>,
    /// Record value (`None` = null, a tombstone in compacted logs).
    pub value: Option<Bytes>,
    /// Record headers.
    pub headers: Vec<Header>,
    /// Creation time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Builds one RecordBatch v2 from records.
///
/// The batch is built with `baseOffset` 0 and `partitionLeaderEpoch` -1;
/// the log assigns both on append. Offset deltas are 0..n-1 and the base
/// timestamp is the first record's timestamp.
///
/// Timestamps must be -1 (none) or non-negative
/// ([`crate::timestamp_in_range`]), and each record's distance from the
/// first record's timestamp must fit an `i64`. [`BatchBuilder::try_push`]
/// refuses other records; [`BatchBuilder::push`] accepts them but marks the
/// builder invalid: [`BatchBuilder::try_build`] then returns the error and
/// [`BatchBuilder::build`] a batch that [`crate::validate_batch`] rejects.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    /// `HEADER_SIZE` bytes left for the header, then the encoded records:
    /// an uncompressed batch is finished in place, without a copy.
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    /// The first record refused by `push`.
    error: Option<RecordError>,
}

impl BatchBuilder {
    /// Starts an empty batch using `compression` for the records section.
    pub fn new(compression: Compression) -> BatchBuilder {
        BatchBuilder::with_capacity(compression, 0)
    }

    /// Starts an empty batch whose buffer holds `bytes` of encoded batch
    /// (header included) before it grows: a producer that knows about how
    /// large its batches get saves the copies of a growing buffer.
    pub fn with_capacity(compression: Compression, bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_SIZE));
        buf.resize(HEADER_SIZE, 0);
        BatchBuilder {
            compression,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
            base_sequence: -1,
            buf,
            count: 0,
            base_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
            error: None,
        }
    }

    /// Sets the idempotent producer id, epoch and first sequence number.
    pub fn with_producer(
        mut self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    ) -> BatchBuilder {
        self.producer_id = producer_id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Appends a record; its offset delta is the number of records pushed
    /// before it. A record with an out-of-range timestamp is still counted,
    /// but makes the batch invalid (see the type docs); use
    /// [`BatchBuilder::try_push`] to refuse it instead.
    pub fn push(&mut self, record: &Record) {
        if let Err(e) = self.try_push(record) {
            self.error.get_or_insert(e);
            // Keep the record count right; the batch is invalid anyway.
            self.encode(record, 0);
        }
    }

    /// Appends a record, or refuses it (leaving the builder unchanged) if
    /// its timestamp is out of range or too far from the first record's.
    pub fn try_push(&mut self, record: &Record) -> Result<(), RecordError> {
        let ts = record.timestamp_ms;
        check_timestamp(ts, "record timestamp")?;
        let base = if self.count == 0 {
            ts
        } else {
            self.base_timestamp
        };
        let delta = ts.checked_sub(base).ok_or_else(|| {
            RecordError::InvalidTimestamps(format!(
                "record timestamp {ts} is too far from the batch's first timestamp {base}"
            ))
        })?;
        if self.count == 0 {
            self.base_timestamp = ts;
            self.max_timestamp = ts;
        }
        self.max_timestamp = self.max_timestamp.max(ts);
        self.encode(record, delta);
        Ok(())
    }

    fn encode(&mut self, record: &Record, timestamp_delta: i64) {
        let headers_len = varint_len(record.headers.len() as i32)
            + record
                .headers
                .iter()
                .map(|h| bytes_len(Some(h.key.as_bytes())) + bytes_len(h.value.as_deref()))
                .sum::<usize>();
        let out = &mut self.buf;
        let key = record.key.as_deref();
        let value = record.value.as_deref();
        let body = record_body_len(timestamp_delta, self.count, key, value, headers_len);
        out.reserve(varint_len(body as i32) + body);
        put_record_start(out, body, timestamp_delta, self.count, key, value);
        put_varint(out, record.headers.len() as i32);
        for h in &record.headers {
            put_bytes(out, Some(h.key.as_bytes()));
            put_bytes(out, h.value.as_deref());
        }
        self.count += 1;
    }

    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch if built without compression (an upper bound for
    /// compressible data), in bytes.
    pub fn estimated_size(&self) -> usize {
        self.buf.len()
    }

    /// Encodes the batch, or returns why a pushed record was refused (see
    /// [`BatchBuilder::push`]). An empty builder gives a batch that
    /// [`crate::validate_batch`] rejects.
    pub fn try_build(&self) -> Result<Bytes, RecordError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(self.build()),
        }
    }

    /// Encodes the batch: header with CRC filled, then the (possibly
    /// compressed) records. An empty builder, or one that was pushed a
    /// record with an out-of-range timestamp, gives a batch that
    /// [`crate::validate_batch`] rejects (the latter with
    /// [`RecordError::InvalidTimestamps`], as the first timestamp is then
    /// written as `i64::MIN`).
    pub fn build(&self) -> Bytes {
        Bytes::from(
            self.frame()
                .encode(0, -1, self.compression, &self.buf[HEADER_SIZE..]),
        )
    }

    /// Like [`BatchBuilder::build`], consuming the builder: without
    /// compression the header is written in front of the records already
    /// in the buffer, so the batch is not copied.
    pub fn finish(mut self) -> Bytes {
        if self.compression != Compression::None {
            return self.build();
        }
        let frame = self.frame();
        let records = self.buf.len() - HEADER_SIZE;
        frame.put_header(&mut self.buf[..HEADER_SIZE], 0, -1, records);
        let crc = compute_crc(&self.buf);
        self.buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(self.buf)
    }

    fn frame(&self) -> Frame {
        Frame {
            attributes: i16::from(self.compression.codec_id()),
            last_offset_delta: (self.count - 1).max(0),
            first_timestamp: if self.error.is_some() {
                i64::MIN
            } else {
                self.base_timestamp
            },
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count: self.count,
        }
    }
}

/// Bytes `put_bytes(b)` writes.
fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => 1,
        Some(b) => varint_len(b.len() as i32) + b.len(),
    }
}

/// Length of a record's body (what its length prefix counts).
fn record_body_len(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers_len: usize,
) -> usize {
    1 + varlong_len(timestamp_delta)
        + varint_len(offset_delta)
        + bytes_len(key)
        + bytes_len(value)
        + headers_len
}

/// Writes a record's length prefix and its body up to the headers.
fn put_record_start(
    out: &mut Vec<u8>,
    body: usize,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    put_varint(out, body as i32);
    out.push(0); // record attributes: unused
    put_varlong(out, timestamp_delta);
    put_varint(out, offset_delta);
    put_bytes(out, key);
    put_bytes(out, value);
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// Appends one record (length prefix, then body) to `out`. `headers` is the
/// already encoded `headersCount` + headers.
fn encode_record(
    out: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[u8],
) {
    let body = record_body_len(timestamp_delta, offset_delta, key, value, headers.len());
    put_record_start(out, body, timestamp_delta, offset_delta, key, value);
    out.extend_from_slice(headers);
}

/// Header fields a builder chooses (the rest are fixed or assigned later).
struct Frame {
    attributes: i16,
    last_offset_delta: i32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: i32,
}

impl Frame {
    /// The fields of an existing batch's header.
    fn of(header: &BatchHeader) -> Frame {
        Frame {
            attributes: header.attributes,
            last_offset_delta: header.last_offset_delta,
            first_timestamp: header.first_timestamp,
            max_timestamp: header.max_timestamp,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            record_count: header.record_count,
        }
    }

    fn encode(
        &self,
        base_offset: i64,
        leader_epoch: i32,
        compression: Compression,
        records: &[u8],
    ) -> Vec<u8> {
        let body = match compression {
            Compression::None => None,
            c => Some(compress(c, records)),
        };
        let body: &[u8] = body.as_deref().unwrap_or(records);
        let mut out = vec![0; HEADER_SIZE];
        out.reserve_exact(body.len());
        self.put_header(&mut out, base_offset, leader_epoch, body.len());
        out.extend_from_slice(body);
        let crc = compute_crc(&out);
        out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Fills `HEADER_SIZE` bytes with the header of a batch whose records
    /// section is `body_len` bytes, CRC left 0.
    fn put_header(&self, out: &mut [u8], base_offset: i64, leader_epoch: i32, body_len: usize) {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&base_offset.to_be_bytes());
        put(&((HEADER_SIZE - LOG_OVERHEAD + body_len) as i32).to_be_bytes());
        put(&leader_epoch.to_be_bytes());
        put(&[MAGIC as u8]);
        put(&0u32.to_be_bytes());
        put(&self.attributes.to_be_bytes());
        put(&self.last_offset_delta.to_be_bytes());
        put(&self.first_timestamp.to_be_bytes());
        put(&self.max_timestamp.to_be_bytes());
        put(&self.producer_id.to_be_bytes());
        put(&self.producer_epoch.to_be_bytes());
        put(&self.base_sequence.to_be_bytes());
        put(&self.record_count.to_be_bytes());
        debug_assert_eq!(at, HEADER_SIZE);
    }
}

/// Rebuilds `batch` keeping only the records for which `keep` returns true
/// (used by log compaction).
///
/// The result keeps the original `baseOffset`, `lastOffsetDelta` (so the
/// offset after the batch is unchanged), `partitionLeaderEpoch`, attributes,
/// codec and producer fields; kept records keep their offset deltas, so
/// their offsets are preserved. For CreateTime batches the base timestamp
/// becomes the first kept record's timestamp and `maxTimestamp` the largest
/// kept one. Returns `Ok(None)` if no record is kept, and a copy of the
/// original bytes if every record is kept.
pub fn retain_records(
    batch: &[u8],
    mut keep: impl FnMut(&DecodedRecord) -> bool,
) -> Result<Option<Bytes>, RecordError> {
    let checked = open_batch(batch)?;
    let header = checked.header;
    let section = &checked.section;
    let mut kept = Vec::new();
    let mut total = 0usize;
    walk_records(&header, section, |rec| {
        total += 1;
        let d = decoded(&header, section, rec);
        if keep(&d) {
            kept.push((rec.clone(), d.timestamp_ms));
        }
    })?;
    if kept.is_empty() {
        return Ok(None);
    }
    if kept.len() == total {
        return Ok(Some(Bytes::copy_from_slice(batch)));
    }
    let log_append_time = header.is_log_append_time();
    let (first_ts, max_ts) = if log_append_time {
        (header.first_timestamp, header.max_timestamp)
    } else {
        (
            kept[0].1,
            kept.iter().map(|k| k.1).max().expect("non-empty"),
        )
    };
    let mut records = Vec::with_capacity(section.len());
    for (rec, ts) in &kept {
        let delta = if log_append_time {
            rec.timestamp_delta
        } else {
            ts.checked_sub(first_ts).ok_or_else(|| {
                RecordError::InvalidTimestamps(format!(
                    "kept record timestamp {ts} is too far from the first kept one {first_ts}"
                ))
            })?
        };
        encode_record(
            &mut records,
            delta,
            rec.offset_delta,
            rec.key.clone().map(|r| &section[r]),
            rec.value.clone().map(|r| &section[r]),
            &section[rec.headers_at..rec.raw.end],
        );
    }
    let frame = Frame {
        first_timestamp: first_ts,
        max_timestamp: max_ts,
        record_count: kept.len() as i32,
        ..Frame::of(&header)
    };
    let out = frame.encode(
        header.base_offset,
        header.partition_leader_epoch,
        checked.compression,
        &records,
    );
    debug_assert!(out.len() >= HEADER_SIZE);
    Ok(Some(Bytes::from(out)))
}

/// Rewrites `batch` with its records section compressed with `codec`
/// instead (a broker applying a topic's `compression.type`).
///
/// Every other header field is kept: base offset, partition leader epoch,
/// the attributes' other bits, offsets, timestamps, producer id, epoch and
/// sequence, record count; the records are byte for byte the same once
/// decompressed, and the CRC is computed for the new bytes. Returns
/// `Ok(None)` when the batch already uses `codec` (without decompressing
/// it); otherwise the batch is validated as by [`crate::validate_batch`]
/// first.
pub fn recompress(batch: &[u8], codec: Compression) -> Result<Option<Bytes>, RecordError> {
    if check_frame(batch)?.compression()? == codec {
        return Ok(None);
    }
    let checked = open_batch(batch)?;
    let header = checked.header;
    walk_records(&header, &checked.section, |_| {})?;
    let frame = Frame {
        attributes: (header.attributes & !ATTR_COMPRESSION_MASK) | i16::from(codec.codec_id()),
        ..Frame::of(&header)
    };
    Ok(Some(Bytes::from(frame.encode(
        header.base_offset,
        header.partition_leader_epoch,
        codec,
        &checked.section,
    ))))
}
