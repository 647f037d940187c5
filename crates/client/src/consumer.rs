//! Reading records: [`Client::subscribe`] (a stream) and [`Client::fetch`]
//! (one request).
//!
//! Both ask the gateway for encoded batches (the bytes as stored) and decode
//! them here. A response may start with records below the position asked
//! for (batches are returned whole); those are skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use streambus_proto::v1;
use streambus_record::{BatchIter, Header, decode_records};
use tonic::Streaming;

use crate::{Client, ClientError};

/// Where a subscription starts, in each partition it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The log start offset: every record still stored.
    Earliest,
    /// The high watermark at subscribe time: only new records.
    #[default]
    Latest,
    /// An absolute offset.
    Offset(i64),
    /// The first record with a timestamp at or after this (ms since the
    /// Unix epoch).
    Timestamp(i64),
}

/// What [`Client::subscribe`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The topic.
    pub topic: String,
    /// One partition, or `None` for every partition of the topic (then
    /// partitions added to the topic while the subscription runs are read
    /// too, from their log start).
    pub partition: Option<u32>,
    /// Where to start.
    pub start: StartFrom,
    /// Soft limit of bytes per response; 0 = the gateway's default (1 MiB).
    pub max_bytes: u32,
    /// How long the gateway waits for new records at the end of the log
    /// before answering with none; zero = its default (500 ms).
    pub max_wait: Duration,
}

impl SubscribeOptions {
    /// Every partition of `topic`, from the latest offset, default limits.
    pub fn new(topic: impl Into<String>) -> SubscribeOptions {
        SubscribeOptions {
            topic: topic.into(),
            partition: None,
            start: StartFrom::Latest,
            max_bytes: 0,
            max_wait: Duration::ZERO,
        }
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key (`None` = null).
    pub key: Option<Bytes>,
    /// Value (`None` = null).
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
}

/// The result of [`Client::fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// Records at or after the offset asked for.
    pub records: Vec<ConsumedRecord>,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's log start offset.
    pub log_start_offset: i64,
    /// The offset to fetch next.
    pub next_offset: i64,
}

impl Client {
    /// Subscribes to a topic (or one partition of it). The stream yields
    /// records in offset order per partition and ends after an error.
    ///
    /// Errors such as `UNKNOWN_TOPIC` are returned here when the gateway
    /// reports them before streaming.
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, ClientError> {
        let position = match options.start {
            StartFrom::Earliest => v1::start_position::Position::Earliest(v1::Empty {}),
            StartFrom::Latest => v1::start_position::Position::Latest(v1::Empty {}),
            StartFrom::Offset(offset) => v1::start_position::Position::Offset(offset),
            StartFrom::Timestamp(ms) => v1::start_position::Position::TimestampMs(ms),
        };
        let request = v1::SubscribeRequest {
            topic: options.topic.clone(),
            partition: options.partition,
            start: Some(v1::StartPosition {
                position: Some(position),
            }),
            max_bytes: options.max_bytes,
            max_wait_ms: duration_ms(options.max_wait),
            encoded: true,
        };
        let responses = self.consume.clone().subscribe(request).await?.into_inner();
        Ok(Subscription {
            responses,
            buffered: VecDeque::new(),
            positions: Positions::new(options.start),
            done: false,
        })
    }

    /// Fetches records of one partition from `offset`, waiting up to
    /// `max_wait` for some to arrive (zero: answer at once).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchResult, ClientError> {
        let response = self
            .consume
            .clone()
            .fetch(v1::FetchRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes,
                max_wait_ms: duration_ms(max_wait),
                encoded: true,
            })
            .await?
            .into_inner();
        let mut records = Vec::new();
        decode_response(
            partition,
            &response.encoded_batches,
            response.records,
            offset,
            &mut |r| records.push(r),
        )?;
        Ok(FetchResult {
            records,
            high_watermark: response.high_watermark,
            log_start_offset: response.log_start_offset,
            next_offset: response.next_offset.max(offset),
        })
    }
}

/// A stream of records from [`Client::subscribe`]. Dropping it cancels the
/// subscription.
///
/// It ends after the first error; to go on, subscribe again from
/// [`Subscription::position`] of each partition.
#[derive(Debug)]
pub struct Subscription {
    responses: Streaming<v1::SubscribeResponse>,
    buffered: VecDeque<ConsumedRecord>,
    positions: Positions,
    done: bool,
}

impl Subscription {
    /// The offset the next record of `partition` will have at the least,
    /// once the partition was seen.
    pub fn position(&self, partition: u32) -> Option<i64> {
        self.positions.next.get(&partition).copied()
    }

    /// Records decoded and not yet yielded; when 0, the next poll may wait
    /// for the network (callers buffering output can flush then).
    pub fn buffered_len(&self) -> usize {
        self.buffered.len()
    }
}

impl Stream for Subscription {
    type Item = Result<ConsumedRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(record) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(record)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.responses).poll_next(cx)) {
                Some(Ok(response)) => {
                    if let Err(e) = this.positions.absorb(response, &mut this.buffered) {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status.into())));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// Per-partition positions of a subscription, to skip records below them.
#[derive(Debug)]
struct Positions {
    start: StartFrom,
    /// Next offset expected per partition seen so far.
    next: HashMap<u32, i64>,
    /// With [`StartFrom::Timestamp`]: partitions that yielded a record.
    started: HashSet<u32>,
}

impl Positions {
    fn new(start: StartFrom) -> Positions {
        Positions {
            start,
            next: HashMap::new(),
            started: HashSet::new(),
        }
    }

    /// Decodes one response into `out`, skipping records below the position.
    fn absorb(
        &mut self,
        response: v1::SubscribeResponse,
        out: &mut VecDeque<ConsumedRecord>,
    ) -> Result<(), ClientError> {
        let partition = response.partition;
        // A partition added after subscribing is read from its log start,
        // whatever the start position says.
        let start = if response.new_partition {
            StartFrom::Earliest
        } else {
            self.start
        };
        let floor = match (self.next.get(&partition), start) {
            (Some(next), _) => *next,
            (None, StartFrom::Offset(offset)) => offset,
            (None, _) => i64::MIN,
        };
        // From a timestamp, a partition's first batch may hold earlier records.
        let mut since = match start {
            StartFrom::Timestamp(ms) if !self.started.contains(&partition) => Some(ms),
            _ => None,
        };
        let mut next = floor.max(response.next_offset);
        decode_response(
            partition,
            &response.encoded_batches,
            response.records,
            floor,
            &mut |record| {
                if since.is_some_and(|ms| record.timestamp_ms < ms) {
                    return;
                }
                since = None;
                next = next.max(record.offset + 1);
                out.push_back(record);
            },
        )?;
        if since.is_none() {
            self.started.insert(partition);
        }
        self.next.insert(partition, next);
        Ok(())
    }
}

/// Decodes a response's encoded batches (or, from a gateway that sent
/// decoded records instead, those), yielding records at or above `floor`.
fn decode_response(
    partition: u32,
    encoded: &Bytes,
    decoded: Vec<v1::ConsumedRecord>,
    floor: i64,
    yield_record: &mut dyn FnMut(ConsumedRecord),
) -> Result<(), ClientError> {
    for batch in BatchIter::new(encoded) {
        let (header, bytes) = batch?;
        if header.is_control() || header.next_offset() <= floor {
            continue;
        }
        for r in decode_records(bytes)? {
            if r.offset >= floor {
                yield_record(ConsumedRecord {
                    partition,
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
        }
    }
    for r in decoded {
        if r.offset >= floor {
            yield_record(ConsumedRecord {
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
            });
        }
    }
    Ok(())
}

fn duration_ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_record::{BatchBuilder, Compression, Record, set_base_offset};

    fn batch(base_offset: i64, timestamps: &[i64]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for (i, ts) in timestamps.iter().enumerate() {
            b.push(&Record {
                key: None,
                value: Some(Bytes::from(format!("v{}", base_offset + i as i64))),
                headers: vec![Header {
                    key: "h".into(),
                    value: None,
                }],
                timestamp_ms: *ts,
            });
        }
        let mut bytes = b.build().to_vec();
        set_base_offset(&mut bytes, base_offset);
        bytes
    }

    fn response(partition: u32, batches: &[Vec<u8>], next_offset: i64) -> v1::SubscribeResponse {
        v1::SubscribeResponse {
            partition,
            records: Vec::new(),
            encoded_batches: Bytes::from(batches.concat()),
            high_watermark: next_offset,
            next_offset,
            new_partition: false,
        }
    }

    fn offsets(out: &VecDeque<ConsumedRecord>) -> Vec<i64> {
        out.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn records_below_the_start_offset_are_skipped() {
        let mut positions = Positions::new(StartFrom::Offset(12));
        let mut out = VecDeque::new();
        let resp = response(0, &[batch(10, &[1, 1, 1, 1]), batch(14, &[1, 1])], 16);
        positions.absorb(resp, &mut out).unwrap();
        assert_eq!(offsets(&out), vec![12, 13, 14, 15]);
        assert_eq!(out[0].value.as_deref(), Some(&b"v12"[..]));
        assert_eq!(out[0].headers[0].key, "h");
        // A later response repeating a batch does not yield it twice.
        out.clear();
        let resp = response(0, &[batch(14, &[1, 1]), batch(16, &[1])], 17);
        positions.absorb(resp, &mut out).unwrap();
        assert_eq!(offsets(&out), vec![16]);
    }

    #[test]
    fn partitions_are_tracked_separately() {
        let mut positions = Positions::new(StartFrom::Earliest);
        let mut out = VecDeque::new();
        positions
            .absorb(response(0, &[batch(0, &[1, 1])], 2), &mut out)
            .unwrap();
        positions
            .absorb(response(1, &[batch(0, &[1])], 1), &mut out)
            .unwrap();
        assert_eq!(offsets(&out), vec![0, 1, 0]);
        assert_eq!(positions.next[&0], 2);
        assert_eq!(positions.next[&1], 1);
    }

    #[test]
    fn timestamp_start_skips_earlier_records_of_the_first_batch() {
        let mut positions = Positions::new(StartFrom::Timestamp(100));
        let mut out = VecDeque::new();
        let resp = response(0, &[batch(0, &[50, 99, 100, 90, 120])], 5);
        positions.absorb(resp, &mut out).unwrap();
        // From the first record at or after the timestamp, everything.
        assert_eq!(offsets(&out), vec![2, 3, 4]);
        out.clear();
        positions
            .absorb(response(0, &[batch(5, &[10])], 6), &mut out)
            .unwrap();
        assert_eq!(offsets(&out), vec![5]);
    }

    #[test]
    fn a_partition_added_after_subscribing_is_read_from_its_start() {
        for start in [StartFrom::Offset(12), StartFrom::Timestamp(100)] {
            let mut positions = Positions::new(start);
            let mut out = VecDeque::new();
            let mut resp = response(4, &[batch(0, &[1, 2, 3])], 3);
            resp.new_partition = true;
            positions.absorb(resp, &mut out).unwrap();
            assert_eq!(offsets(&out), vec![0, 1, 2], "{start:?}");
        }
    }

    #[test]
    fn empty_response_advances_the_position() {
        let mut positions = Positions::new(StartFrom::Latest);
        let mut out = VecDeque::new();
        positions.absorb(response(3, &[], 42), &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(positions.next[&3], 42);
    }

    #[test]
    fn corrupt_batch_is_an_error() {
        let mut positions = Positions::new(StartFrom::Earliest);
        let mut bytes = batch(0, &[1]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let err = positions
            .absorb(response(0, &[bytes], 1), &mut VecDeque::new())
            .unwrap_err();
        assert!(matches!(err, ClientError::Decode(_)), "{err}");
    }

    #[test]
    fn decoded_records_are_accepted_too() {
        let mut out = Vec::new();
        let records = vec![
            v1::ConsumedRecord {
                offset: 4,
                timestamp_ms: 7,
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"v")),
                headers: vec![v1::Header {
                    key: "a".into(),
                    value: Some(Bytes::from_static(b"b")),
                }],
            },
            v1::ConsumedRecord {
                offset: 3,
                ..Default::default()
            },
        ];
        decode_response(1, &Bytes::new(), records, 4, &mut |r| out.push(r)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].headers[0].value.as_deref(), Some(&b"b"[..]));
    }
}
