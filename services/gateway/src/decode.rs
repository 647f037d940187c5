//! Decoding stored batches for consumers that asked for records
//! (`encoded = false`), within the gateway-wide decompression budget
//! (`gateway.decompression_budget_bytes`).
//!
//! A compressed batch may expand up to `streambus_record::MAX_DECOMPRESSED_SIZE`;
//! without a shared budget, N concurrent fetches could each expand that
//! much at once. Before decoding, the gateway reserves an upper bound of
//! the bytes the decode will hold (the decompressed records sections plus
//! the decoded records), computed from the batch headers and, for LZ4, the
//! frame's block headers, without decompressing anything.

use std::time::Duration;

use bytes::Bytes;
use streambus_proto::v1::{ConsumedRecord, Header};
use streambus_proto::{Error, Reason};
use streambus_record::{BatchHeader, BatchIter, HEADER_SIZE, decompressed_bound};
use streambus_service::budget::MemoryBudget;

/// What one decoded record costs besides its bytes.
const RECORD_STRUCT_BYTES: usize = std::mem::size_of::<ConsumedRecord>();

/// An upper bound of the memory decoding one batch holds: the records
/// section (a copy when uncompressed, the expansion when compressed) plus
/// the decoded records.
pub fn decode_cost(header: &BatchHeader, batch: &[u8]) -> usize {
    let body = batch.get(HEADER_SIZE..).unwrap_or_default();
    let section = match header.compression() {
        Ok(codec) => decompressed_bound(codec, body),
        // Unknown codec: decoding fails before allocating.
        Err(_) => 0,
    };
    section.saturating_add(header.record_count.max(0) as usize * RECORD_STRUCT_BYTES)
}

/// Decodes the records at or after `from` in concatenated batches.
pub fn decode(batches: &[u8], from: i64) -> Result<Vec<ConsumedRecord>, Error> {
    let mut out = Vec::new();
    for item in BatchIter::new(batches) {
        let (_, batch) = item.map_err(|e| {
            Error::new(
                Reason::CorruptLog,
                format!("stored batch does not decode: {e}"),
            )
        })?;
        let records = streambus_record::decode_records(batch).map_err(|e| {
            Error::new(
                Reason::CorruptLog,
                format!("stored batch does not decode: {e}"),
            )
        })?;
        out.extend(records.into_iter().filter(|r| r.offset >= from).map(|r| {
            ConsumedRecord {
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
            }
        }));
    }
    Ok(out)
}

/// Records decoded within the budget.
#[derive(Debug)]
pub struct Decoded {
    /// The records at or after the requested offset.
    pub records: Vec<ConsumedRecord>,
    /// Set when only a prefix of the batches fit in the budget: where the
    /// next read must start (the rest is read again by the next fetch).
    pub truncated_at: Option<i64>,
}

/// Decodes `batches` like [`decode`], holding a reservation from `budget`
/// while it does (waiting at most `wait` for one). When the batches
/// together would need more than the whole budget, only the longest prefix
/// that fits (at least one batch) is decoded. Fails with `OVERLOADED` when
/// the budget stays spent for `wait`.
pub async fn decode_within(
    budget: &MemoryBudget,
    batches: Bytes,
    from: i64,
    wait: Duration,
) -> Result<Decoded, Error> {
    let mut cost = 0usize;
    let mut end = 0usize;
    let mut truncated_at = None;
    let mut iter = BatchIter::new(&batches);
    loop {
        match iter.next() {
            None => break,
            Some(Ok((header, batch))) => {
                let c = decode_cost(&header, batch);
                if end > 0 && cost.saturating_add(c) > budget.capacity() {
                    truncated_at = Some(header.base_offset);
                    break;
                }
                cost = cost.saturating_add(c);
                end = iter.position();
            }
            // Let `decode` report the corruption.
            Some(Err(_)) => {
                end = batches.len();
                break;
            }
        }
    }
    let permit = budget.acquire(cost.min(budget.capacity()), wait).await?;
    let prefix = batches.slice(..end);
    let records = tokio::task::spawn_blocking(move || {
        let r = decode(&prefix, from);
        drop(permit);
        r
    })
    .await
    .map_err(|e| Error::new(Reason::Internal, format!("decode task failed: {e}")))??;
    Ok(Decoded {
        records,
        truncated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_record::{BatchBuilder, Compression, Record};

    fn batch(compression: Compression, base: i64, n: usize, value_len: usize) -> Bytes {
        let mut b = BatchBuilder::new(compression);
        for i in 0..n {
            b.push(&Record {
                key: None,
                value: Some(Bytes::from(vec![(i % 251) as u8; value_len])),
                headers: vec![],
                timestamp_ms: 1,
            });
        }
        let mut bytes = b.build().to_vec();
        streambus_record::set_base_offset(&mut bytes, base);
        Bytes::from(bytes)
    }

    #[test]
    fn lz4_bound_covers_the_real_expansion() {
        // Highly compressible: 300 KiB of repeated bytes.
        let b = batch(Compression::Lz4, 0, 300, 1024);
        let (header, _) = BatchIter::new(&b).next().unwrap().unwrap();
        let bound = streambus_record::lz4_decompressed_bound(&b[HEADER_SIZE..]).unwrap();
        let actual: usize = streambus_record::decode_records(&b)
            .unwrap()
            .iter()
            .map(|r| r.value.as_ref().unwrap().len())
            .sum();
        assert!(bound >= actual, "bound {bound} < actual {actual}");
        // Tight within one 64 KiB block (Kafka's frame settings).
        assert!(bound <= actual + 64 * 1024 + 300 * 16, "bound {bound}");
        assert!(b.len() * 10 < bound, "the batch really is compressed");
        assert!(decode_cost(&header, &b) >= bound);
    }

    #[test]
    fn lz4_bound_refuses_what_is_not_a_frame() {
        assert_eq!(
            streambus_record::lz4_decompressed_bound(b"not lz4 at all"),
            None
        );
        let b = batch(Compression::Lz4, 0, 10, 100);
        let body = &b[HEADER_SIZE..];
        // Truncated inside a block.
        assert_eq!(
            streambus_record::lz4_decompressed_bound(&body[..body.len() - 8]),
            None
        );
        assert_eq!(streambus_record::lz4_decompressed_bound(&[]), Some(0));
    }

    #[test]
    fn uncompressed_cost_is_the_section_plus_records() {
        let b = batch(Compression::None, 0, 10, 100);
        let (header, _) = BatchIter::new(&b).next().unwrap().unwrap();
        assert_eq!(
            decode_cost(&header, &b),
            b.len() - HEADER_SIZE + 10 * RECORD_STRUCT_BYTES
        );
    }

    #[tokio::test]
    async fn decoding_holds_the_budget_and_gives_it_back() {
        let b = batch(Compression::Lz4, 5, 100, 1000);
        let budget = MemoryBudget::new("test", 1 << 20);
        let d = decode_within(&budget, b, 7, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(d.records.len(), 98);
        assert_eq!(d.records[0].offset, 7);
        assert_eq!(d.truncated_at, None);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_spent_budget_is_overloaded() {
        let b = batch(Compression::Lz4, 0, 100, 1000);
        let budget = MemoryBudget::new("gateway.decompression_budget_bytes", 1 << 20);
        let _held = budget.try_acquire((1 << 20) - 10).unwrap();
        let e = decode_within(&budget, b, 0, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(e.reason, Reason::Overloaded);
        assert!(e.message.contains("gateway.decompression_budget_bytes"));
    }

    #[tokio::test]
    async fn only_a_prefix_is_decoded_when_the_whole_does_not_fit() {
        let mut all = Vec::new();
        for i in 0..4 {
            all.extend_from_slice(&batch(Compression::Lz4, i * 100, 100, 1000));
        }
        let one = {
            let b = batch(Compression::Lz4, 0, 100, 1000);
            let (h, _) = BatchIter::new(&b).next().unwrap().unwrap();
            decode_cost(&h, &b)
        };
        // Room for two batches, not three.
        let budget = MemoryBudget::new("test", one * 2 + one / 2);
        let d = decode_within(&budget, Bytes::from(all), 0, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(d.records.len(), 200);
        assert_eq!(d.truncated_at, Some(200));
        assert_eq!(d.records.last().unwrap().offset, 199);
    }

    #[tokio::test]
    async fn corrupt_stored_data_is_corrupt_log() {
        let mut b = batch(Compression::Lz4, 0, 10, 100).to_vec();
        let n = b.len();
        b[n - 3] ^= 0xff;
        let budget = MemoryBudget::new("test", 1 << 20);
        let e = decode_within(&budget, Bytes::from(b), 0, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(e.reason, Reason::CorruptLog);
        assert_eq!(budget.in_use(), 0);
    }
}
