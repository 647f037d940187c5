//! Consumed records a batch at a time, borrowed: [`ConsumedBatch`] holds
//! one stored batch of a partition (a slice of the gateway's response) and
//! yields [`RecordRef`]s that point into it, so reading a record allocates
//! nothing. [`RecordRef::to_owned`] gives a [`ConsumedRecord`] when one is
//! needed.

use std::collections::VecDeque;

use bytes::Bytes;
use streambus_proto::v1;
use streambus_record::{BatchIter, Header, HeaderView, HeaderViews, RecordView, RecordsView};

use crate::ClientError;
use crate::consumer::ConsumedRecord;

/// Records of one partition, in offset order: the part of one stored batch
/// at or after the subscription's position.
#[derive(Debug, Clone)]
pub struct ConsumedBatch {
    partition: u32,
    repr: Repr,
    /// Index of the first record not yet taken.
    next: usize,
}

#[derive(Debug, Clone)]
enum Repr {
    /// Read in place from the encoded batch.
    Encoded(RecordsView),
    /// Records a gateway sent decoded.
    Decoded(Vec<ConsumedRecord>),
}

impl ConsumedBatch {
    /// The partition the records were read from.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.total() - self.next
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records, borrowed, in offset order.
    pub fn records(&self) -> RecordRefs<'_> {
        RecordRefs {
            batch: self,
            next: self.next,
            end: self.total(),
        }
    }

    /// The offset of the last record, if any.
    pub fn last_offset(&self) -> Option<i64> {
        self.records().last().map(|r| r.offset)
    }

    fn total(&self) -> usize {
        match &self.repr {
            Repr::Encoded(view) => view.len(),
            Repr::Decoded(records) => records.len(),
        }
    }

    fn get(&self, index: usize) -> Option<RecordRef<'_>> {
        let src = match &self.repr {
            Repr::Encoded(view) => Src::View(view.get(index)?),
            Repr::Decoded(records) => Src::Decoded(records.get(index)?),
        };
        Some(RecordRef::new(self.partition, src))
    }

    /// Takes the first record, owned.
    pub(crate) fn pop_front(&mut self) -> Option<ConsumedRecord> {
        let record = self.get(self.next)?.to_owned();
        self.next += 1;
        Some(record)
    }

    /// Drops the records before the first that `keep` accepts.
    pub(crate) fn skip_until(&mut self, mut keep: impl FnMut(&RecordRef<'_>) -> bool) {
        while let Some(r) = self.get(self.next) {
            if keep(&r) {
                return;
            }
            self.next += 1;
        }
    }
}

impl IntoIterator for ConsumedBatch {
    type Item = ConsumedRecord;
    type IntoIter = IntoRecords;

    /// The records, owned (keys and values still share the response's
    /// buffer).
    fn into_iter(self) -> IntoRecords {
        IntoRecords { batch: self }
    }
}

/// The owned records of a [`ConsumedBatch`].
#[derive(Debug)]
pub struct IntoRecords {
    batch: ConsumedBatch,
}

impl Iterator for IntoRecords {
    type Item = ConsumedRecord;

    fn next(&mut self) -> Option<ConsumedRecord> {
        self.batch.pop_front()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.batch.len(), Some(self.batch.len()))
    }
}

impl ExactSizeIterator for IntoRecords {}

/// The borrowed records of a [`ConsumedBatch`].
#[derive(Debug, Clone)]
pub struct RecordRefs<'a> {
    batch: &'a ConsumedBatch,
    next: usize,
    end: usize,
}

impl<'a> Iterator for RecordRefs<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.next >= self.end {
            return None;
        }
        self.next += 1;
        self.batch.get(self.next - 1)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for RecordRefs<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        self.end -= 1;
        self.batch.get(self.end)
    }
}

impl ExactSizeIterator for RecordRefs<'_> {}

/// A consumed record, borrowed from its [`ConsumedBatch`].
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key (`None` = null).
    pub key: Option<&'a [u8]>,
    /// Value (`None` = null).
    pub value: Option<&'a [u8]>,
    src: Src<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Src<'a> {
    View(RecordView<'a>),
    Decoded(&'a ConsumedRecord),
}

impl<'a> RecordRef<'a> {
    fn new(partition: u32, src: Src<'a>) -> RecordRef<'a> {
        let (offset, timestamp_ms, key, value) = match src {
            Src::View(r) => (r.offset, r.timestamp_ms, r.key, r.value),
            Src::Decoded(r) => (
                r.offset,
                r.timestamp_ms,
                r.key.as_deref(),
                r.value.as_deref(),
            ),
        };
        RecordRef {
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            src,
        }
    }

    /// The headers, in order, borrowed.
    pub fn headers(&self) -> HeaderRefs<'a> {
        match self.src {
            Src::View(r) => HeaderRefs::View(r.headers()),
            Src::Decoded(r) => HeaderRefs::Decoded(r.headers.iter()),
        }
    }

    /// The record owned: key, value and header values share the response's
    /// buffer (no copy); header keys are allocated.
    pub fn to_owned(&self) -> ConsumedRecord {
        match self.src {
            Src::View(r) => {
                let d = r.to_decoded();
                ConsumedRecord {
                    partition: self.partition,
                    offset: d.offset,
                    timestamp_ms: d.timestamp_ms,
                    key: d.key,
                    value: d.value,
                    headers: d.headers,
                }
            }
            Src::Decoded(r) => r.clone(),
        }
    }
}

/// The headers of a [`RecordRef`].
#[derive(Debug, Clone)]
pub enum HeaderRefs<'a> {
    #[doc(hidden)]
    View(HeaderViews<'a>),
    #[doc(hidden)]
    Decoded(std::slice::Iter<'a, Header>),
}

impl<'a> Iterator for HeaderRefs<'a> {
    type Item = HeaderView<'a>;

    fn next(&mut self) -> Option<HeaderView<'a>> {
        match self {
            HeaderRefs::View(h) => h.next(),
            HeaderRefs::Decoded(h) => h.next().map(|h| HeaderView {
                key: h.key.as_bytes(),
                value: h.value.as_deref(),
            }),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            HeaderRefs::View(h) => h.size_hint(),
            HeaderRefs::Decoded(h) => h.size_hint(),
        }
    }
}

impl ExactSizeIterator for HeaderRefs<'_> {}

/// Decodes a response's encoded batches (or, from a gateway that sent
/// decoded records instead, those) into batches of the records at or
/// above `floor`, appended to `out`.
pub(crate) fn decode_batches(
    partition: u32,
    encoded: &Bytes,
    decoded: Vec<v1::ConsumedRecord>,
    floor: i64,
    out: &mut VecDeque<ConsumedBatch>,
) -> Result<(), ClientError> {
    for batch in BatchIter::new(encoded) {
        let (header, bytes) = batch?;
        if header.is_control() || header.next_offset() <= floor {
            continue;
        }
        let view = RecordsView::decode(&encoded.slice_ref(bytes))?;
        let next = view.position(|r| r.offset >= floor);
        if next < view.len() {
            out.push_back(ConsumedBatch {
                partition,
                repr: Repr::Encoded(view),
                next,
            });
        }
    }
    let records: Vec<ConsumedRecord> = decoded
        .into_iter()
        .filter(|r| r.offset >= floor)
        .map(|r| ConsumedRecord {
            partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|h| Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
        })
        .collect();
    if !records.is_empty() {
        out.push_back(ConsumedBatch {
            partition,
            repr: Repr::Decoded(records),
            next: 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_record::{BatchBuilder, Compression, Record, set_base_offset};

    fn encoded(base: i64, n: usize) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..n {
            b.push(&Record {
                key: None,
                value: Some(Bytes::from(format!("v{}", base + i as i64))),
                headers: vec![Header {
                    key: "h".into(),
                    value: None,
                }],
                timestamp_ms: 1,
            });
        }
        let mut bytes = b.build().to_vec();
        set_base_offset(&mut bytes, base);
        Bytes::from(bytes)
    }

    #[test]
    fn encoded_and_decoded_records_read_alike() {
        let bytes = Bytes::from([encoded(0, 4), encoded(4, 4)].concat());
        let decoded = vec![v1::ConsumedRecord {
            offset: 8,
            timestamp_ms: 1,
            key: None,
            value: Some(Bytes::from("v8")),
            headers: vec![v1::Header {
                key: "h".into(),
                value: None,
            }],
        }];
        let mut out = VecDeque::new();
        decode_batches(3, &bytes, decoded, 2, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        let lent: Vec<(i64, Vec<u8>)> = out
            .iter()
            .flat_map(|b| b.records())
            .map(|r| (r.offset, r.value.unwrap().to_vec()))
            .collect();
        let expected: Vec<(i64, Vec<u8>)> =
            (2..9).map(|o| (o, format!("v{o}").into_bytes())).collect();
        assert_eq!(lent, expected, "records below the floor are skipped");
        for batch in &out {
            assert_eq!(batch.partition(), 3);
            for r in batch.records() {
                let headers: Vec<HeaderView<'_>> = r.headers().collect();
                assert_eq!(
                    headers,
                    vec![HeaderView {
                        key: b"h",
                        value: None
                    }]
                );
                let owned = r.to_owned();
                assert_eq!((owned.partition, owned.offset), (3, r.offset));
                assert_eq!(
                    owned.headers,
                    vec![Header {
                        key: "h".into(),
                        value: None
                    }]
                );
            }
        }
        // Reversed and counted without decoding anything again.
        let last = out[0].records().next_back().unwrap();
        assert_eq!((last.offset, out[0].last_offset()), (3, Some(3)));
        let mut front = out.pop_front().unwrap();
        front.skip_until(|r| r.offset >= 3);
        assert_eq!(front.len(), 1);
        assert_eq!(front.pop_front().unwrap().offset, 3);
        assert!(front.is_empty() && front.pop_front().is_none());
    }
}
