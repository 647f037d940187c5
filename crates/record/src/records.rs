//! Walking, validating and decoding the records inside a batch.

use std::ops::Range;

use bytes::Bytes;

use crate::RecordError;
use crate::codec::decompress;
use crate::header::{BatchHeader, Compression, HEADER_SIZE, NO_TIMESTAMP, compute_crc};
use crate::varint::{get_varint, get_varlong};

/// One header of a record: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header key.
    pub key: String,
    /// Header value; `None` is encoded as length -1.
    pub value: Option<Bytes>,
}

/// A record decoded from a batch, with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// `baseOffset + offsetDelta`.
    pub offset: i64,
    /// `baseTimestamp + timestampDelta` (CreateTime), or the batch
    /// `maxTimestamp` for LogAppendTime batches.
    pub timestamp_ms: i64,
    /// Record key (`None` = null key).
    pub key: Option<Bytes>,
    /// Record value (`None` = null value, a tombstone in compacted logs).
    pub value: Option<Bytes>,
    /// Record headers in order.
    pub headers: Vec<Header>,
}

/// Whether `ts` is an acceptable timestamp: [`NO_TIMESTAMP`] (-1) or a
/// non-negative number of milliseconds since the Unix epoch. Kafka's
/// producer refuses negative timestamps ("Timestamp should always be
/// non-negative or null"), and -1 is the wire's "no timestamp".
pub fn timestamp_in_range(ts: i64) -> bool {
    ts == NO_TIMESTAMP || ts >= 0
}

pub(crate) fn check_timestamp(ts: i64, what: &str) -> Result<(), RecordError> {
    if timestamp_in_range(ts) {
        Ok(())
    } else {
        Err(RecordError::InvalidTimestamps(format!(
            "{what} {ts} is out of range (must be -1 for none, or at least 0)"
        )))
    }
}

/// `first + delta` for a record timestamp, refusing overflow and values out
/// of range.
pub(crate) fn record_timestamp(first: i64, delta: i64) -> Result<i64, RecordError> {
    let ts = first.checked_add(delta).ok_or_else(|| {
        RecordError::InvalidTimestamps(format!(
            "record timestamp overflows: firstTimestamp {first} + timestampDelta {delta}"
        ))
    })?;
    check_timestamp(ts, "record timestamp")?;
    Ok(ts)
}

/// Byte ranges of one record within a records section.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    /// The whole record including its length prefix.
    pub raw: Range<usize>,
    pub timestamp_delta: i64,
    /// `firstTimestamp + timestampDelta`, range-checked by [`walk_records`]
    /// (0 until then and for LogAppendTime batches).
    pub timestamp_ms: i64,
    pub offset_delta: i32,
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
    /// Position of `headersCount`.
    pub headers_at: usize,
}

fn take(
    buf: &[u8],
    pos: &mut usize,
    len: i32,
    end: usize,
    what: &str,
) -> Result<Option<Range<usize>>, RecordError> {
    if len == -1 {
        return Ok(None);
    }
    if len < 0 {
        return Err(RecordError::Malformed(format!(
            "negative {what} length {len}"
        )));
    }
    let stop = pos
        .checked_add(len as usize)
        .filter(|s| *s <= end)
        .ok_or_else(|| {
            RecordError::Malformed(format!("{what} of {len} bytes runs past the record"))
        })?;
    let _ = buf;
    let r = *pos..stop;
    *pos = stop;
    Ok(Some(r))
}

/// Parses the record starting at `*pos` in `buf` and advances past it.
pub(crate) fn next_record(buf: &[u8], pos: &mut usize) -> Result<RawRecord, RecordError> {
    let start = *pos;
    let len = get_varint(buf, pos)?;
    if len < 0 {
        return Err(RecordError::Malformed(format!(
            "negative record length {len}"
        )));
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| {
            RecordError::Malformed(format!("record length {len} runs past the records section"))
        })?;
    let body = &buf[..end];
    if *pos >= end {
        return Err(RecordError::Malformed("empty record".into()));
    }
    *pos += 1; // attributes (unused, must be present)
    let timestamp_delta = get_varlong(body, pos)?;
    let offset_delta = get_varint(body, pos)?;
    let key_len = get_varint(body, pos)?;
    let key = take(body, pos, key_len, end, "key")?;
    let value_len = get_varint(body, pos)?;
    let value = take(body, pos, value_len, end, "value")?;
    let headers_at = *pos;
    let count = get_varint(body, pos)?;
    if count < 0 {
        return Err(RecordError::Malformed(format!(
            "negative header count {count}"
        )));
    }
    for _ in 0..count {
        let klen = get_varint(body, pos)?;
        if klen < 0 {
            return Err(RecordError::Malformed("null header key".into()));
        }
        let k = take(body, pos, klen, end, "header key")?.expect("non-null");
        if std::str::from_utf8(&body[k]).is_err() {
            return Err(RecordError::Malformed("header key is not UTF-8".into()));
        }
        let vlen = get_varint(body, pos)?;
        take(body, pos, vlen, end, "header value")?;
    }
    if *pos != end {
        return Err(RecordError::Malformed(format!(
            "record declares {len} bytes but its fields use {}",
            *pos - (end - len as usize)
        )));
    }
    Ok(RawRecord {
        raw: start..end,
        timestamp_delta,
        timestamp_ms: 0,
        offset_delta,
        key,
        value,
        headers_at,
    })
}

/// Parses the headers of a record already checked by [`next_record`].
fn parse_headers(section: &Bytes, mut pos: usize) -> Vec<Header> {
    let buf = &section[..];
    let count = get_varint(buf, &mut pos).expect("checked");
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let klen = get_varint(buf, &mut pos).expect("checked") as usize;
        let key = String::from_utf8_lossy(&buf[pos..pos + klen]).into_owned();
        pos += klen;
        let vlen = get_varint(buf, &mut pos).expect("checked");
        let value = if vlen < 0 {
            None
        } else {
            let v = section.slice(pos..pos + vlen as usize);
            pos += vlen as usize;
            Some(v)
        };
        headers.push(Header { key, value });
    }
    headers
}

/// A batch whose frame (magic, length, CRC) is checked and whose records
/// section is available uncompressed.
pub(crate) struct CheckedBatch {
    pub header: BatchHeader,
    pub compression: Compression,
    /// The uncompressed records section.
    pub section: Bytes,
}

/// Checks that `buf` holds exactly one batch with a valid CRC and returns its
/// header (no record parsing).
pub(crate) fn check_frame(buf: &[u8]) -> Result<BatchHeader, RecordError> {
    let header = BatchHeader::parse(buf)?;
    let declared = header.total_size();
    if buf.len() < declared {
        return Err(RecordError::Truncated {
            needed: declared,
            available: buf.len(),
        });
    }
    if buf.len() > declared {
        return Err(RecordError::LengthMismatch {
            declared,
            actual: buf.len(),
        });
    }
    let actual = compute_crc(buf);
    if actual != header.crc {
        return Err(RecordError::BadCrc {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

pub(crate) fn open_batch(buf: &[u8]) -> Result<CheckedBatch, RecordError> {
    open_batch_with(buf, Bytes::copy_from_slice)
}

/// [`open_batch`] of a shared buffer: an uncompressed records section is
/// a slice of it, not a copy.
pub(crate) fn open_shared_batch(buf: &Bytes) -> Result<CheckedBatch, RecordError> {
    open_batch_with(buf, |body| buf.slice_ref(body))
}

fn open_batch_with(
    buf: &[u8],
    uncompressed: impl FnOnce(&[u8]) -> Bytes,
) -> Result<CheckedBatch, RecordError> {
    let header = check_frame(buf)?;
    let compression = header.compression()?;
    let body = &buf[HEADER_SIZE..];
    let section = match compression {
        Compression::None => uncompressed(body),
        c => Bytes::from(decompress(c, body)?),
    };
    Ok(CheckedBatch {
        header,
        compression,
        section,
    })
}

/// Walks every record of a checked batch, enforcing count and offset rules,
/// and calls `f` for each.
pub(crate) fn walk_records(
    header: &BatchHeader,
    section: &[u8],
    mut f: impl FnMut(&RawRecord),
) -> Result<(), RecordError> {
    let mut pos = 0;
    let mut count: i32 = 0;
    let mut prev_delta: i64 = -1;
    let mut max_ts = i64::MIN;
    let create_time = !header.is_log_append_time();
    if create_time {
        check_timestamp(header.first_timestamp, "firstTimestamp")?;
    }
    check_timestamp(header.max_timestamp, "maxTimestamp")?;
    while pos < section.len() {
        if count == header.record_count {
            return Err(RecordError::RecordCountMismatch {
                declared: header.record_count,
                actual: count.saturating_add(1),
            });
        }
        let mut rec = next_record(section, &mut pos)?;
        let delta = i64::from(rec.offset_delta);
        if delta <= prev_delta {
            return Err(RecordError::Malformed(format!(
                "record offset deltas not increasing ({prev_delta} then {delta})"
            )));
        }
        if delta > i64::from(header.last_offset_delta) {
            return Err(RecordError::Malformed(format!(
                "record offset delta {delta} exceeds lastOffsetDelta {}",
                header.last_offset_delta
            )));
        }
        prev_delta = delta;
        if create_time {
            rec.timestamp_ms = record_timestamp(header.first_timestamp, rec.timestamp_delta)?;
            max_ts = max_ts.max(rec.timestamp_ms);
        }
        count += 1;
        f(&rec);
    }
    if count != header.record_count {
        return Err(RecordError::RecordCountMismatch {
            declared: header.record_count,
            actual: count,
        });
    }
    if count == 0 {
        return Err(RecordError::Malformed("record batch has no records".into()));
    }
    if create_time {
        if header.max_timestamp < header.first_timestamp {
            return Err(RecordError::InvalidTimestamps(format!(
                "maxTimestamp {} is before firstTimestamp {}",
                header.max_timestamp, header.first_timestamp
            )));
        }
        if max_ts != header.max_timestamp {
            return Err(RecordError::InvalidTimestamps(format!(
                "maxTimestamp {} differs from the largest record timestamp {max_ts}",
                header.max_timestamp
            )));
        }
    }
    Ok(())
}

/// Validates that `buf` holds exactly one complete, well-formed batch:
/// magic 2, `12 + batchLength == buf.len()`, CRC32C, a supported codec, and
/// records that decode (after decompression) to exactly `recordCount`
/// records with strictly increasing offset deltas no larger than
/// `lastOffsetDelta`. For CreateTime batches `maxTimestamp` must equal the
/// largest record timestamp and must not be before `firstTimestamp`, and
/// every timestamp (`firstTimestamp`, `maxTimestamp`, each
/// `firstTimestamp + timestampDelta`, computed without overflow) must be -1
/// or non-negative ([`timestamp_in_range`]); for LogAppendTime batches
/// `maxTimestamp` must be.
/// Batches with no records are rejected.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader, RecordError> {
    let header = check_frame(buf)?;
    let compression = header.compression()?;
    let body = &buf[HEADER_SIZE..];
    match compression {
        Compression::None => walk_records(&header, body, |_| {})?,
        c => walk_records(&header, &decompress(c, body)?, |_| {})?,
    }
    Ok(header)
}

/// Decodes every record of one complete batch (validated as by
/// [`validate_batch`]). Key, value and header values share one buffer.
pub fn decode_records(batch: &[u8]) -> Result<Vec<DecodedRecord>, RecordError> {
    decode_checked(open_batch(batch)?)
}

/// [`decode_records`] of a batch in a shared buffer (as received from the
/// network): the keys and values of an uncompressed batch are slices of
/// `batch`, so nothing is copied.
pub fn decode_shared_records(batch: &Bytes) -> Result<Vec<DecodedRecord>, RecordError> {
    decode_checked(open_shared_batch(batch)?)
}

fn decode_checked(checked: CheckedBatch) -> Result<Vec<DecodedRecord>, RecordError> {
    let header = checked.header;
    let section = &checked.section;
    // `recordCount` is the sender's claim: reserve no more than the section
    // can hold (a record takes at least 7 bytes: length, attributes,
    // timestamp delta, offset delta, key and value lengths, header count).
    let claimed = header.record_count.max(0) as usize;
    let mut out = Vec::with_capacity(claimed.min(section.len() / 7 + 1));
    walk_records(&header, section, |rec| {
        out.push(decoded(&header, section, rec))
    })?;
    Ok(out)
}

pub(crate) fn decoded(header: &BatchHeader, section: &Bytes, rec: &RawRecord) -> DecodedRecord {
    DecodedRecord {
        offset: header.base_offset + i64::from(rec.offset_delta),
        timestamp_ms: if header.is_log_append_time() {
            header.max_timestamp
        } else {
            rec.timestamp_ms
        },
        key: rec.key.clone().map(|r| section.slice(r)),
        value: rec.value.clone().map(|r| section.slice(r)),
        headers: parse_headers(section, rec.headers_at),
    }
}
