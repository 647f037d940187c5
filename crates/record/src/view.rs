//! Borrowed access to a batch's records: the batch is checked and walked
//! once, and each record is then read in place, with no allocation per
//! record (a consumer that only looks at keys and values never copies or
//! allocates them).

use std::borrow::Cow;

use bytes::Bytes;

use crate::error::RecordError;
use crate::header::BatchHeader;
use crate::records::{DecodedRecord, Header, RawRecord, decoded, open_shared_batch, walk_records};
use crate::varint::get_varint;

/// One batch's records, checked as [`crate::validate_batch`] checks them,
/// kept as positions in its records section.
#[derive(Debug, Clone)]
pub struct RecordsView {
    header: BatchHeader,
    /// The uncompressed records section: a slice of the batch, or the
    /// decompressed bytes.
    section: Bytes,
    records: Vec<RawRecord>,
}

impl RecordsView {
    /// Checks one complete batch held in a shared buffer and indexes its
    /// records. An uncompressed batch's records stay in `batch`.
    pub fn decode(batch: &Bytes) -> Result<RecordsView, RecordError> {
        let checked = open_shared_batch(batch)?;
        let claimed = checked.header.record_count.max(0) as usize;
        // `recordCount` is the sender's claim: reserve no more than the
        // section can hold (a record takes at least 7 bytes).
        let mut records = Vec::with_capacity(claimed.min(checked.section.len() / 7 + 1));
        walk_records(&checked.header, &checked.section, |rec| {
            records.push(rec.clone())
        })?;
        Ok(RecordsView {
            header: checked.header,
            section: checked.section,
            records,
        })
    }

    /// The batch's header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record (never, once decoded).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record `index`, borrowed.
    pub fn get(&self, index: usize) -> Option<RecordView<'_>> {
        let raw = self.records.get(index)?;
        let section = &self.section;
        Some(RecordView {
            offset: self.header.base_offset + i64::from(raw.offset_delta),
            timestamp_ms: if self.header.is_log_append_time() {
                self.header.max_timestamp
            } else {
                raw.timestamp_ms
            },
            key: raw.key.clone().map(|r| &section[r]),
            value: raw.value.clone().map(|r| &section[r]),
            view: self,
            raw,
        })
    }

    /// The records from `index` on, borrowed, in offset order.
    pub fn iter_from(&self, index: usize) -> impl ExactSizeIterator<Item = RecordView<'_>> + '_ {
        (index.min(self.len())..self.len()).map(|i| self.get(i).expect("in range"))
    }

    /// The first index whose record satisfies `pred`, as records are
    /// visited in order (`len()` if none does).
    pub fn position(&self, mut pred: impl FnMut(&RecordView<'_>) -> bool) -> usize {
        self.iter_from(0)
            .position(|r| pred(&r))
            .unwrap_or(self.len())
    }
}

/// One record of a [`RecordsView`], borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// `baseOffset + offsetDelta`.
    pub offset: i64,
    /// `firstTimestamp + timestampDelta` (CreateTime), or the batch's
    /// `maxTimestamp` (LogAppendTime).
    pub timestamp_ms: i64,
    /// Key (`None` = null).
    pub key: Option<&'a [u8]>,
    /// Value (`None` = null).
    pub value: Option<&'a [u8]>,
    view: &'a RecordsView,
    raw: &'a RawRecord,
}

impl<'a> RecordView<'a> {
    /// The headers, in order, read in place.
    pub fn headers(&self) -> HeaderViews<'a> {
        let buf: &'a [u8] = &self.view.section;
        let mut pos = self.raw.headers_at;
        let remaining = get_varint(buf, &mut pos).expect("checked") as usize;
        HeaderViews {
            buf,
            pos,
            remaining,
        }
    }

    /// The key as a shared buffer (a slice of the batch, not a copy).
    pub fn key_bytes(&self) -> Option<Bytes> {
        self.key.map(|k| self.view.section.slice_ref(k))
    }

    /// The value as a shared buffer (a slice of the batch, not a copy).
    pub fn value_bytes(&self) -> Option<Bytes> {
        self.value.map(|v| self.view.section.slice_ref(v))
    }

    /// The record owned: key, value and header values share the batch's
    /// buffer; header keys are allocated.
    pub fn to_decoded(&self) -> DecodedRecord {
        decoded(&self.view.header, &self.view.section, self.raw)
    }
}

/// One header of a [`RecordView`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderView<'a> {
    /// Key bytes (UTF-8 by convention).
    pub key: &'a [u8],
    /// Value (`None` = null).
    pub value: Option<&'a [u8]>,
}

impl<'a> HeaderView<'a> {
    /// The key as text; bytes that are not UTF-8 are replaced.
    pub fn key_str(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.key)
    }

    /// The header owned.
    pub fn to_header(&self) -> Header {
        Header {
            key: self.key_str().into_owned(),
            value: self.value.map(Bytes::copy_from_slice),
        }
    }
}

/// Iterator over a record's headers (see [`RecordView::headers`]).
#[derive(Debug, Clone)]
pub struct HeaderViews<'a> {
    buf: &'a [u8],
    pos: usize,
    remaining: usize,
}

impl<'a> Iterator for HeaderViews<'a> {
    type Item = HeaderView<'a>;

    fn next(&mut self) -> Option<HeaderView<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Every length was checked when the batch was walked.
        let klen = get_varint(self.buf, &mut self.pos).expect("checked") as usize;
        let key = &self.buf[self.pos..self.pos + klen];
        self.pos += klen;
        let vlen = get_varint(self.buf, &mut self.pos).expect("checked");
        let value = (vlen >= 0).then(|| {
            let v = &self.buf[self.pos..self.pos + vlen as usize];
            self.pos += vlen as usize;
            v
        });
        Some(HeaderView { key, value })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for HeaderViews<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, Compression, Record, decode_shared_records, set_base_offset};

    fn batch(compression: Compression, log_append_time: bool) -> Bytes {
        let mut b = BatchBuilder::new(compression);
        for i in 0..20 {
            b.push(&Record {
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: (i % 5 != 0).then(|| Bytes::from(vec![i as u8; 300 + i])),
                headers: (0..i % 4)
                    .map(|h| Header {
                        key: format!("h{h}"),
                        value: (h != 1).then(|| Bytes::from(format!("v{i}.{h}"))),
                    })
                    .collect(),
                timestamp_ms: 1_700_000_000_000 + i as i64,
            });
        }
        let mut bytes = b.build().to_vec();
        set_base_offset(&mut bytes, 1000);
        if log_append_time {
            use crate::header::{ATTRIBUTES, CRC, MAX_TIMESTAMP};
            let attributes = i16::from_be_bytes([bytes[ATTRIBUTES], bytes[ATTRIBUTES + 1]]);
            let attributes = attributes | crate::ATTR_LOG_APPEND_TIME;
            bytes[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
            bytes[MAX_TIMESTAMP..MAX_TIMESTAMP + 8]
                .copy_from_slice(&1_800_000_000_000i64.to_be_bytes());
            let crc = crate::compute_crc(&bytes);
            bytes[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        }
        Bytes::from(bytes)
    }

    #[test]
    fn views_read_what_the_owned_decoder_reads() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            for log_append_time in [false, true] {
                let bytes = batch(compression, log_append_time);
                let owned = decode_shared_records(&bytes).unwrap();
                let view = RecordsView::decode(&bytes).unwrap();
                assert_eq!(view.len(), owned.len());
                for (r, o) in view.iter_from(0).zip(&owned) {
                    assert_eq!(r.offset, o.offset);
                    assert_eq!(r.timestamp_ms, o.timestamp_ms);
                    assert_eq!(r.key, o.key.as_deref());
                    assert_eq!(r.value, o.value.as_deref());
                    assert_eq!(r.key_bytes(), o.key);
                    let headers: Vec<Header> = r.headers().map(|h| h.to_header()).collect();
                    assert_eq!(headers, o.headers);
                    assert_eq!(r.headers().len(), o.headers.len());
                    assert_eq!(&r.to_decoded(), o);
                }
                assert_eq!(view.iter_from(18).count(), 2);
                assert_eq!(view.iter_from(99).count(), 0);
                assert_eq!(view.position(|r| r.offset >= 1005), 5);
                assert_eq!(view.position(|_| false), 20);
            }
        }
    }

    #[test]
    fn values_of_an_uncompressed_batch_are_slices_of_it() {
        let bytes = batch(Compression::None, false);
        let view = RecordsView::decode(&bytes).unwrap();
        let r = view.get(1).unwrap();
        let value = r.value.unwrap();
        let range = bytes.as_ptr_range();
        assert!(range.contains(&value.as_ptr()), "not copied");
        assert!(range.contains(&r.value_bytes().unwrap().as_ptr()));
    }

    #[test]
    fn a_corrupt_batch_is_refused() {
        let mut bytes = batch(Compression::None, false).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(RecordsView::decode(&Bytes::from(bytes)).is_err());
    }
}
