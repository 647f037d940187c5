//! Reading records: [`Client::subscribe`] (a stream) and [`Client::fetch`]
//! (one request).
//!
//! Both ask the gateway for encoded batches (the bytes as stored) and decode
//! them here. A response may start with records below the position asked
//! for (batches are returned whole); those are skipped.
//!
//! A subscription resumes by itself: when its stream breaks with a
//! retriable error, or ends (a gateway restarting), it subscribes again
//! after a jittered backoff, through the same client (any gateway it
//! balances over), from the next offset of every partition it had, so the
//! application sees neither a gap nor a duplicate.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::client::Transport;
use bytes::Bytes;
use futures::Stream;
use streambus_proto::v1;
use streambus_proto::v1::consume_service_client::ConsumeServiceClient;
use streambus_record::Header;
use tokio::sync::watch;
use tonic::Streaming;

use crate::batch::{ConsumedBatch, decode_batches};
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
        let mut positions = Positions::new(options.start);
        if options.start == StartFrom::Latest {
            // "Latest" is pinned now, per partition: a resumed
            // subscription must not skip what arrived while it was away.
            for o in self.partition_offsets(&options.topic).await? {
                if options.partition.is_none_or(|p| p == o.partition) {
                    positions.next.insert(o.partition, o.high_watermark);
                }
            }
        }
        let request = v1::SubscribeRequest {
            topic: options.topic.clone(),
            partition: options.partition,
            start: Some(v1::StartPosition {
                position: Some(position),
            }),
            max_bytes: options.max_bytes,
            max_wait_ms: duration_ms(options.max_wait),
            encoded: true,
            resume_offsets: positions.next.clone(),
        };
        // A gateway that is just restarting (or one of several that is
        // down) must not fail the subscription before it started.
        let deadline = tokio::time::Instant::now() + INITIAL_SUBSCRIBE_RETRY;
        let mut failures = 0;
        let responses = loop {
            match self.consume.clone().subscribe(request.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(status) if resumable(&status) && tokio::time::Instant::now() < deadline => {
                    failures += 1;
                    tracing::debug!(error = %status, "subscribe failed; trying again");
                    tokio::time::sleep(resubscribe_backoff(failures, jitter())).await;
                }
                Err(status) => return Err(status.into()),
            }
        };
        Ok(Subscription {
            consume: self.consume.clone(),
            request,
            state: State::Streaming(Box::new(responses)),
            buffered: VecDeque::new(),
            buffered_records: 0,
            positions,
            failures: 0,
            reconnects: watch::channel(Reconnects::default()).0,
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
/// It rides through gateway restarts and other retriable failures (see the
/// module docs) and ends only with a non-retriable error, which it yields
/// last.
pub struct Subscription {
    consume: ConsumeServiceClient<Transport>,
    /// What was asked; resubscriptions add the positions reached.
    request: v1::SubscribeRequest,
    state: State,
    buffered: VecDeque<ConsumedBatch>,
    /// Records in `buffered`.
    buffered_records: usize,
    positions: Positions,
    /// Failed attempts since the last response (for the backoff).
    failures: u32,
    reconnects: watch::Sender<Reconnects>,
}

type Resubscribe =
    Pin<Box<dyn Future<Output = Result<Streaming<v1::SubscribeResponse>, tonic::Status>> + Send>>;

enum State {
    Streaming(Box<Streaming<v1::SubscribeResponse>>),
    Resubscribing(Resubscribe),
    Done,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.request.topic)
            .field("positions", &self.positions.next)
            .field("buffered", &self.buffered_records)
            .finish_non_exhaustive()
    }
}

/// How often a subscription had to reconnect, and why the last time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconnects {
    /// Resubscriptions started so far.
    pub count: u64,
    /// The error that caused the latest one.
    pub last_error: Option<String>,
}

/// How long `subscribe` keeps trying while gateways are unreachable.
const INITIAL_SUBSCRIBE_RETRY: Duration = Duration::from_secs(30);

/// Backoff before resubscription attempt `failures` (1, 2, ...): 100 ms
/// doubling up to 5 s, times a jitter factor in `[0.5, 1]` (`jitter` in
/// `[0, 1]`), so clients of a restarted gateway do not all return at once.
pub fn resubscribe_backoff(failures: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(Duration::from_secs(5));
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Whether a broken subscription should be resumed rather than ended: a
/// retriable StreamBus reason, or a transport failure (a status without a
/// StreamBus reason, as when a connection is reset: h2 reports a gateway
/// killed mid-stream as `INTERNAL`).
pub fn resumable(status: &tonic::Status) -> bool {
    let from_server = status
        .metadata()
        .get(streambus_proto::error::REASON_METADATA_KEY)
        .is_some();
    if !from_server
        && matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::DeadlineExceeded
        )
    {
        return true;
    }
    streambus_proto::Error::from_status(status).retriable()
}

fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % 10_000) as f64 / 10_000.0
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
        self.buffered_records
    }

    /// The next batch of records: records of one partition, in offset
    /// order, borrowed from the response they came in (see
    /// [`ConsumedBatch::records`]), so reading them allocates nothing per
    /// record. `None` once the subscription ended; an error ends it, as
    /// with the record stream. Records already taken one at a time are
    /// not repeated. Mixes with the stream: both advance the same position.
    pub async fn next_batch(&mut self) -> Option<Result<ConsumedBatch, ClientError>> {
        match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
            Some(Ok(())) => {
                let batch = self.buffered.pop_front().expect("filled");
                self.buffered_records -= batch.len();
                Some(Ok(batch))
            }
            Some(Err(e)) => Some(Err(e)),
            None => None,
        }
    }

    /// Waits until a record is buffered (`Some(Ok(()))`), the subscription
    /// ended (`None`), or failed for good.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(), ClientError>>> {
        loop {
            if !self.buffered.is_empty() {
                return Poll::Ready(Some(Ok(())));
            }
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Resubscribing(fut) => match ready!(fut.as_mut().poll(cx)) {
                    Ok(stream) => self.state = State::Streaming(Box::new(stream)),
                    Err(status) if resumable(&status) => self.resubscribe(status.to_string()),
                    Err(status) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Err(status.into())));
                    }
                },
                State::Streaming(responses) => {
                    match ready!(Pin::new(&mut **responses).poll_next(cx)) {
                        Some(Ok(response)) => {
                            self.failures = 0;
                            match self.positions.absorb(response, &mut self.buffered) {
                                Ok(added) => self.buffered_records += added,
                                Err(e) => {
                                    self.state = State::Done;
                                    return Poll::Ready(Some(Err(e)));
                                }
                            }
                        }
                        Some(Err(status)) if resumable(&status) => {
                            self.resubscribe(
                                streambus_proto::Error::from_status(&status).to_string(),
                            );
                        }
                        Some(Err(status)) => {
                            self.state = State::Done;
                            return Poll::Ready(Some(Err(status.into())));
                        }
                        // A subscription has no end: the gateway went away.
                        None => self.resubscribe("the gateway ended the stream".into()),
                    }
                }
            }
        }
    }

    /// Watches reconnections (e.g. to tell a user the gateway went away).
    pub fn reconnects(&self) -> watch::Receiver<Reconnects> {
        self.reconnects.subscribe()
    }

    /// Starts resubscribing after `error`, from every position reached.
    fn resubscribe(&mut self, error: String) {
        self.failures += 1;
        let wait = resubscribe_backoff(self.failures, jitter());
        tracing::info!(topic = %self.request.topic, error = %error, ?wait, "subscription broke; resubscribing");
        self.reconnects.send_modify(|r| {
            r.count += 1;
            r.last_error = Some(error);
        });
        let mut request = self.request.clone();
        request.resume_offsets = self.positions.next.clone();
        let mut consume = self.consume.clone();
        self.state = State::Resubscribing(Box::pin(async move {
            tokio::time::sleep(wait).await;
            consume.subscribe(request).await.map(|r| r.into_inner())
        }));
    }
}

impl Stream for Subscription {
    type Item = Result<ConsumedRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match ready!(this.poll_fill(cx)) {
            Some(Ok(())) => {
                let front = this.buffered.front_mut().expect("filled");
                let record = front.pop_front().expect("buffered batches are not empty");
                if front.is_empty() {
                    this.buffered.pop_front();
                }
                this.buffered_records -= 1;
                Poll::Ready(Some(Ok(record)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
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

    /// Decodes one response into batches appended to `out`, skipping
    /// records below the position; returns the records added.
    fn absorb(
        &mut self,
        response: v1::SubscribeResponse,
        out: &mut VecDeque<ConsumedBatch>,
    ) -> Result<usize, ClientError> {
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
        let mut batches = VecDeque::new();
        decode_batches(
            partition,
            &response.encoded_batches,
            response.records,
            floor,
            &mut batches,
        )?;
        let mut added = 0;
        for mut batch in batches {
            if let Some(ms) = since {
                batch.skip_until(|r| r.timestamp_ms >= ms);
            }
            let Some(last) = batch.last_offset() else {
                continue;
            };
            since = None;
            next = next.max(last + 1);
            added += batch.len();
            out.push_back(batch);
        }
        if since.is_none() {
            self.started.insert(partition);
        }
        self.next.insert(partition, next);
        Ok(added)
    }
}

/// Decodes a response's encoded batches (or, from a gateway that sent
/// decoded records instead, those), yielding records at or above `floor`.
pub(crate) fn decode_response(
    partition: u32,
    encoded: &Bytes,
    decoded: Vec<v1::ConsumedRecord>,
    floor: i64,
    yield_record: &mut dyn FnMut(ConsumedRecord),
) -> Result<(), ClientError> {
    let mut batches = VecDeque::new();
    decode_batches(partition, encoded, decoded, floor, &mut batches)?;
    for record in batches.into_iter().flatten() {
        yield_record(record);
    }
    Ok(())
}

fn duration_ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_proto::{Error, Reason};
    use streambus_record::{BatchBuilder, Compression, Record, set_base_offset};

    #[test]
    fn resubscribe_backoff_doubles_to_five_seconds_with_jitter() {
        assert_eq!(resubscribe_backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(resubscribe_backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(resubscribe_backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(resubscribe_backoff(30, 1.0), Duration::from_secs(5));
        assert_eq!(resubscribe_backoff(30, 0.0), Duration::from_millis(2500));
        for f in 1..40 {
            let d = resubscribe_backoff(f, jitter());
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
    }

    #[test]
    fn only_retriable_reasons_and_broken_connections_resume() {
        for r in [
            Reason::ShuttingDown,
            Reason::Unavailable,
            Reason::NotLeader,
            Reason::Timeout,
        ] {
            assert!(resumable(&Error::new(r, "x").to_status()), "{r}");
        }
        for r in [
            Reason::UnknownTopic,
            Reason::OffsetOutOfRange,
            Reason::CorruptLog,
        ] {
            assert!(!resumable(&Error::new(r, "x").to_status()), "{r}");
        }
        // A connection that broke carries no reason; h2 reports a reset
        // stream as INTERNAL.
        assert!(resumable(&tonic::Status::unknown("connection reset")));
        assert!(resumable(&tonic::Status::unavailable("refused")));
        assert!(resumable(&tonic::Status::internal(
            "h2 protocol error: http2 error"
        )));
        // A gateway's own INTERNAL carries its reason: final.
        assert!(!resumable(&Error::new(Reason::Internal, "bug").to_status()));
    }

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
            throttle_time_ms: 0,
        }
    }

    fn records(out: &VecDeque<ConsumedBatch>) -> Vec<ConsumedRecord> {
        out.iter().cloned().flatten().collect()
    }

    fn offsets(out: &VecDeque<ConsumedBatch>) -> Vec<i64> {
        records(out).iter().map(|r| r.offset).collect()
    }

    #[test]
    fn records_below_the_start_offset_are_skipped() {
        let mut positions = Positions::new(StartFrom::Offset(12));
        let mut out = VecDeque::new();
        let resp = response(0, &[batch(10, &[1, 1, 1, 1]), batch(14, &[1, 1])], 16);
        positions.absorb(resp, &mut out).unwrap();
        assert_eq!(offsets(&out), vec![12, 13, 14, 15]);
        assert_eq!(records(&out)[0].value.as_deref(), Some(&b"v12"[..]));
        assert_eq!(records(&out)[0].headers[0].key, "h");
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
