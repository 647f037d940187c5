//! The producer's sender task: takes ready batches from the accumulator,
//! writes them to one `ProduceStream`, matches acknowledgements by
//! `sequence`, and re-opens the stream when it breaks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Transport;
use futures::StreamExt;
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use streambus_proto::v1::{self, ProduceStreamRequest, ProduceStreamResponse};
use streambus_proto::{Error, Reason};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::Shared;
use super::accumulator::Batch;

/// How long opening the stream may take before it counts as broken.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

struct Stream {
    requests: mpsc::Sender<ProduceStreamRequest>,
    responses: Streaming<ProduceStreamResponse>,
}

enum Event {
    Response(Option<Result<ProduceStreamResponse, tonic::Status>>),
    Wake,
}

struct Sender {
    shared: Arc<Shared>,
    client: ProduceServiceClient<Transport>,
    stream: Option<Stream>,
    in_flight: HashMap<u64, Batch>,
    next_sequence: u64,
    /// After a broken stream: not re-opened before this.
    reopen_at: Option<Instant>,
    /// After a failed `InitProducer`: not asked again before this.
    init_at: Option<Instant>,
}

pub(crate) async fn run(shared: Arc<Shared>, client: ProduceServiceClient<Transport>) {
    let mut sender = Sender {
        shared,
        client,
        stream: None,
        in_flight: HashMap::new(),
        next_sequence: 0,
        reopen_at: None,
        init_at: None,
    };
    sender.run().await;
    tracing::debug!("producer stopped");
}

impl Sender {
    async fn run(&mut self) {
        let max_in_flight = self.shared.config.max_in_flight;
        let mut batches = Vec::new();
        loop {
            let now = Instant::now();
            self.expire_in_flight(now);
            let acc = &self.shared.acc;
            let needs_producer = acc.needs_producer() && !acc.is_idle();
            if needs_producer && self.init_at.is_none_or(|t| t <= now) {
                self.init_producer().await;
            }
            let may_send = self.stream.is_some() || self.reopen_at.is_none_or(|t| t <= now);
            let (ready, done) = {
                let acc = &self.shared.acc;
                let ready = if may_send {
                    let room = max_in_flight.saturating_sub(self.in_flight.len());
                    acc.ready(now, room, &mut batches)
                } else {
                    Default::default()
                };
                (ready, acc.is_drained())
            };
            if ready.expired > 0 {
                self.shared.progress.send_replace(());
            }
            if done {
                return;
            }
            if !batches.is_empty() {
                self.write(&mut batches).await;
            }
            let mut wake_at = ready.next_wake;
            if self.stream.is_none() {
                wake_at = min_instant(wake_at, self.reopen_at);
            }
            if needs_producer {
                wake_at = min_instant(wake_at, self.init_at);
            }
            let deadline = self.in_flight.values().map(|b| b.deadline).min();
            wake_at = min_instant(wake_at, deadline);
            let event = {
                let stream = &mut self.stream;
                let wake = &self.shared.wake;
                let response = async {
                    match stream.as_mut() {
                        Some(s) => s.responses.next().await,
                        None => std::future::pending().await,
                    }
                };
                let timer = async {
                    match wake_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = response => Event::Response(r),
                    () = wake.notified() => Event::Wake,
                    () = timer => Event::Wake,
                }
            };
            if let Event::Response(response) = event {
                self.on_response(response);
            }
        }
    }

    /// Asks the gateway for a producer id for the batches to come. A
    /// retriable failure is tried again after the backoff (the batches wait,
    /// within their delivery timeout); any other fails the batches not yet
    /// sent.
    async fn init_producer(&mut self) {
        let init = self.client.init_producer(v1::InitProducerRequest {});
        let error = match tokio::time::timeout(OPEN_TIMEOUT, init).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let epoch = i16::try_from(r.producer_epoch).unwrap_or(i16::MAX);
                tracing::debug!(producer_id = r.producer_id, epoch, "idempotent producer id");
                self.shared.acc.set_producer(r.producer_id, epoch);
                self.init_at = None;
                return;
            }
            Ok(Err(status)) => Error::from_status(&status),
            Err(_) => Error::new(Reason::Timeout, "InitProducer timed out"),
        };
        self.init_at = Some(Instant::now() + self.shared.config.retry_backoff);
        if error.retriable() {
            tracing::debug!(error = %error, "cannot get a producer id yet");
            self.shared.acc.producer_unavailable(error);
            return;
        }
        tracing::warn!(error = %error, "the gateway gives no producer id (idempotence is on)");
        self.shared.acc.fail_unsent(Error::new(
            error.reason,
            format!(
                "cannot get an idempotent producer id (turn idempotence off for this gateway): {}",
                error.message
            ),
        ));
        self.shared.progress.send_replace(());
    }

    /// Writes `batches` to the stream, opening it first if needed.
    async fn write(&mut self, batches: &mut Vec<Batch>) {
        let acks = self.shared.config.acks as i32;
        let mut requests = Vec::with_capacity(batches.len());
        for mut batch in batches.drain(..) {
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            requests.push(ProduceStreamRequest {
                sequence,
                batch: Some(v1::ProduceBatch {
                    topic: batch.topic.to_string(),
                    partition: Some(batch.partition),
                    records: Vec::new(),
                    encoded_batch: batch.encoded(),
                    traceparent: batch.traceparent.clone().unwrap_or_default(),
                }),
                acks,
            });
            self.in_flight.insert(sequence, batch);
        }
        if let Some(stream) = &self.stream {
            for request in requests {
                // The channel holds max_in_flight requests and no more are in
                // flight, so it is never full; an error means the stream is gone.
                if stream.requests.try_send(request).is_err() {
                    let error = Error::new(Reason::Unavailable, "produce stream closed");
                    self.broken(error, true);
                    return;
                }
            }
            return;
        }
        // Queue the first requests before opening: a server may hold the
        // response headers until it has read a message.
        let (tx, rx) = mpsc::channel(self.shared.config.max_in_flight);
        for request in requests {
            tx.try_send(request)
                .expect("the channel has room for max_in_flight requests");
        }
        let open = self.client.produce_stream(ReceiverStream::new(rx));
        match tokio::time::timeout(OPEN_TIMEOUT, open).await {
            Ok(Ok(response)) => {
                self.reopen_at = None;
                self.stream = Some(Stream {
                    requests: tx,
                    responses: response.into_inner(),
                });
            }
            Ok(Err(status)) => {
                let retriable = crate::consumer::resumable(&status);
                let error = Error::from_status(&status);
                self.broken(error, retriable);
            }
            Err(_) => {
                let error = Error::new(Reason::Unavailable, "opening the produce stream timed out");
                self.broken(error, true);
            }
        }
    }

    fn on_response(&mut self, response: Option<Result<ProduceStreamResponse, tonic::Status>>) {
        let response = match response {
            Some(Ok(response)) => response,
            Some(Err(status)) => {
                // A reset connection (a gateway killed mid-stream) is as
                // retriable as a draining gateway's SHUTTING_DOWN.
                let retriable = crate::consumer::resumable(&status);
                let error = Error::from_status(&status);
                return self.broken(error, retriable);
            }
            None => {
                let error = Error::new(Reason::Unavailable, "the gateway ended the produce stream");
                return self.broken(error, true);
            }
        };
        let Some(batch) = self.in_flight.remove(&response.sequence) else {
            // A batch already failed by its delivery timeout.
            tracing::debug!(
                sequence = response.sequence,
                "late produce response ignored"
            );
            return;
        };
        let result = response.result.unwrap_or_default();
        let now = Instant::now();
        let acc = &self.shared.acc;
        if response.throttle_time_ms > 0 {
            // The gateway held this producer back for its quota, and did
            // not read the stream meanwhile: that time does not count
            // against the delivery timeout of what waits behind it.
            let by = Duration::from_millis(u64::from(response.throttle_time_ms));
            acc.extend_deadlines(by);
            for b in self.in_flight.values_mut() {
                b.deadline += by;
            }
        }
        match result.error {
            Some(detail) => {
                let error = Error::from_detail(&detail);
                if matches!(
                    error.reason,
                    Reason::UnknownPartition | Reason::UnknownTopic
                ) {
                    self.shared.forget_topic(&batch.topic);
                }
                if error.reason == Reason::OutOfOrderSequence {
                    acc.out_of_order(batch, error, now);
                } else {
                    acc.fail_or_retry(batch, error, detail.retriable, now);
                }
            }
            None => {
                let ack = result
                    .acks
                    .iter()
                    .find(|a| a.partition == batch.partition)
                    .or(result.acks.first());
                let base_offset = ack.map_or(-1, |a| a.base_offset);
                acc.complete(batch, Ok(base_offset));
            }
        }
        self.shared.progress.send_replace(());
    }

    /// The stream failed: every batch in flight is retried or failed, and
    /// the stream is re-opened after the backoff.
    fn broken(&mut self, error: Error, retriable: bool) {
        if !self.in_flight.is_empty() {
            tracing::warn!(error = %error, in_flight = self.in_flight.len(), "produce stream broke");
        }
        self.stream = None;
        self.reopen_at = Some(Instant::now() + self.shared.config.retry_backoff);
        let now = Instant::now();
        let acc = &self.shared.acc;
        let mut batches: Vec<Batch> = self.in_flight.drain().map(|(_, b)| b).collect();
        batches.sort_by_key(|b| b.id);
        for batch in batches {
            acc.fail_or_retry(batch, error.clone(), retriable, now);
        }
        self.shared.progress.send_replace(());
    }

    /// Fails batches whose delivery timeout passed while in flight (the
    /// server never answered); a late answer for them is ignored.
    fn expire_in_flight(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, b)| b.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        if expired.is_empty() {
            return;
        }
        let timeout = self.shared.config.delivery_timeout;
        let acc = &self.shared.acc;
        for sequence in expired {
            let batch = self.in_flight.remove(&sequence).expect("listed above");
            let error = Error::new(
                Reason::Timeout,
                format!("no acknowledgement within the delivery timeout of {timeout:?}"),
            );
            acc.complete(batch, Err(error));
        }
        self.shared.progress.send_replace(());
    }
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
