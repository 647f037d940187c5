//! The clients of `streambus-bench subscribers`, each on its own HTTP/2
//! connection: stalled subscribers, active readers, producers at a fixed
//! rate, and the sampler watching the server while they run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use streambus_client::v1::consume_service_client::ConsumeServiceClient;
use streambus_client::{Client, ProducerConfig, Record, v1};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::procfs::{Memory, Process};
use crate::scrape::{self, Budgets};

/// Connections opened at once.
const CONNECT_PARALLELISM: usize = 50;
/// Largest response a subscriber accepts (the SDK's limit).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The gateway endpoint with the SDK's connection settings
/// (`streambus_client::Client::connect`: 2 MiB stream and 8 MiB
/// connection windows, `TCP_NODELAY`, keepalive), so a subscriber here
/// buffers on the client side what an SDK subscriber would.
pub fn endpoint(gateway: &str) -> anyhow::Result<Endpoint> {
    let uri = if gateway.contains("://") {
        gateway.to_string()
    } else {
        format!("http://{gateway}")
    };
    Ok(Endpoint::from_shared(uri.clone())
        .with_context(|| format!("{uri:?} is not a gateway address"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// A consume client on a connection of its own.
pub type Consumer = ConsumeServiceClient<Channel>;

/// Opens `n` connections (each one a new HTTP/2 connection), a few at a
/// time.
pub async fn connect_many(endpoint: &Endpoint, n: usize) -> anyhow::Result<Vec<Consumer>> {
    futures::stream::iter(0..n)
        .map(|_| async {
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {}", endpoint.uri()))?;
            Ok(ConsumeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
        })
        .buffer_unordered(CONNECT_PARALLELISM)
        .collect::<Vec<anyhow::Result<Consumer>>>()
        .await
        .into_iter()
        .collect()
}

/// A subscription to every partition of `topic` from its start, for
/// encoded batches (what the SDK asks for).
pub fn from_earliest(topic: &str) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        topic: topic.to_string(),
        partition: None,
        start: Some(v1::StartPosition {
            position: Some(v1::start_position::Position::Earliest(v1::Empty {})),
        }),
        max_bytes: 0,
        max_wait_ms: 0,
        encoded: true,
        resume_offsets: Default::default(),
    }
}

/// Records and bytes of a response's encoded batches.
fn counted(response: &v1::SubscribeResponse) -> (u64, u64) {
    let records = streambus_record::BatchIter::new(&response.encoded_batches)
        .filter_map(Result::ok)
        .map(|(header, _)| u64::try_from(header.record_count).unwrap_or(0))
        .sum();
    (records, response.encoded_batches.len() as u64)
}

/// Subscriptions that are open and never read (their connections with
/// them): what the server holds for them stays held until they are
/// dropped.
pub struct Held {
    streams: Vec<(Consumer, Streaming<v1::SubscribeResponse>)>,
}

impl Held {
    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.streams.len()
    }
}

/// Subscribes on each connection (one subscription each) and keeps the
/// streams without reading them. Returns once the gateway answered every
/// subscribe (its partition tasks then run).
pub async fn subscribe_idle(
    consumers: Vec<Consumer>,
    request: &v1::SubscribeRequest,
) -> anyhow::Result<Held> {
    let streams = futures::stream::iter(consumers)
        .map(|mut consumer| async move {
            let stream = consumer
                .subscribe(request.clone())
                .await
                .context("subscribing")?
                .into_inner();
            Ok((consumer, stream))
        })
        .buffer_unordered(CONNECT_PARALLELISM)
        .collect::<Vec<anyhow::Result<_>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Held { streams })
}

/// How long the stalled subscribers waited for their one response.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FirstResponses {
    /// Subscribers opened.
    pub opened: usize,
    /// Those that got their first response within the timeout.
    pub answered: usize,
    /// Median wait from subscribing to the first response, of those
    /// answered (ms).
    pub p50_ms: f64,
    /// Longest such wait (ms).
    pub max_ms: f64,
    /// Errors (a failed subscribe or a stream that ended), first few.
    pub errors: Vec<String>,
}

/// Opens `n` stalled subscribers, each on its own connection: each reads
/// one response (waiting up to `timeout` for it) and then never reads
/// again. Subscribers whose first response did not come in time are kept
/// too (still subscribed, still unread).
pub async fn open_stalled(
    endpoint: &Endpoint,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<(Held, FirstResponses)> {
    let request = from_earliest(topic);
    let results = futures::stream::iter(0..n)
        .map(|_| {
            let request = request.clone();
            async move {
                let channel = endpoint.connect().await.context("connecting")?;
                let mut consumer =
                    ConsumeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                let started = Instant::now();
                let mut stream = consumer
                    .subscribe(request)
                    .await
                    .context("subscribing")?
                    .into_inner();
                let first = match tokio::time::timeout(timeout, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(Some(started.elapsed())),
                    Ok(Ok(None)) => Err(anyhow::anyhow!("the stream ended before a response")),
                    Ok(Err(status)) => Err(anyhow::Error::from(status).context("first response")),
                    Err(_) => Ok(None),
                };
                anyhow::Ok((consumer, stream, first))
            }
        })
        .buffer_unordered(CONNECT_PARALLELISM)
        .collect::<Vec<_>>()
        .await;
    let mut streams = Vec::with_capacity(n);
    let mut waits = Vec::new();
    let mut report = FirstResponses {
        opened: n,
        ..FirstResponses::default()
    };
    for r in results {
        match r {
            Ok((consumer, stream, first)) => {
                match first {
                    Ok(Some(wait)) => waits.push(wait.as_secs_f64() * 1000.0),
                    Ok(None) => {}
                    Err(e) => push_error(&mut report.errors, format!("{e:#}")),
                }
                streams.push((consumer, stream));
            }
            Err(e) => push_error(&mut report.errors, format!("{e:#}")),
        }
    }
    anyhow::ensure!(
        !streams.is_empty() || n == 0,
        "no stalled subscriber could subscribe: {}",
        report.errors.join("; ")
    );
    waits.sort_by(f64::total_cmp);
    report.answered = waits.len();
    report.p50_ms = waits.get(waits.len() / 2).copied().unwrap_or(0.0);
    report.max_ms = waits.last().copied().unwrap_or(0.0);
    Ok((Held { streams }, report))
}

fn push_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 && !errors.contains(&e) {
        errors.push(e);
    }
}

/// What the active readers of one phase did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readers {
    /// Readers started.
    pub readers: usize,
    /// Readers that read all their records before the phase timeout.
    pub finished: usize,
    /// Records each reader reads.
    pub records_per_reader: u64,
    /// Records read, all readers.
    pub records: u64,
    /// Bytes of record batches read, all readers.
    pub bytes: u64,
    /// From the common start (every reader connected) to the last reader
    /// done (or the timeout).
    pub seconds: f64,
    /// `records / seconds`.
    pub records_per_s: f64,
    /// `bytes / seconds`, in MiB/s.
    pub mib_per_s: f64,
    /// The first reader done (s from the start).
    pub fastest_s: f64,
    /// Readers that got a first response.
    pub answered: usize,
    /// Median wait from subscribing to the first response (ms).
    pub first_response_p50_ms: f64,
    /// Longest such wait (ms).
    pub first_response_max_ms: f64,
    /// Errors, first few.
    pub errors: Vec<String>,
}

/// Runs `n` readers, each on its own connection, each reading
/// `per_reader` records of `topic` from its start, all starting together
/// once every connection is open. Readers still running after `timeout`
/// are stopped and counted as unfinished.
pub async fn read(
    endpoint: &Endpoint,
    topic: &str,
    n: usize,
    per_reader: u64,
    timeout: Duration,
) -> anyhow::Result<Readers> {
    let consumers = connect_many(endpoint, n).await?;
    let records = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let first_responses = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let request = from_earliest(topic);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for mut consumer in consumers {
        let (records, bytes, request) = (records.clone(), bytes.clone(), request.clone());
        let first_responses = first_responses.clone();
        tasks.spawn(async move {
            let mut stream = consumer.subscribe(request).await?.into_inner();
            let mut read = 0;
            let mut first = true;
            while read < per_reader {
                let response = stream
                    .message()
                    .await?
                    .context("the subscription ended early")?;
                if first {
                    first = false;
                    let wait = start.elapsed().as_secs_f64() * 1000.0;
                    if let Ok(mut waits) = first_responses.lock() {
                        waits.push(wait);
                    }
                }
                let (r, b) = counted(&response);
                read += r;
                records.fetch_add(r, Ordering::Relaxed);
                bytes.fetch_add(b, Ordering::Relaxed);
            }
            anyhow::Ok(start.elapsed())
        });
    }
    let mut out = Readers {
        readers: n,
        records_per_reader: per_reader,
        ..Readers::default()
    };
    let deadline = start + timeout;
    let mut fastest: Option<Duration> = None;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(Ok(done)))) => {
                out.finished += 1;
                fastest = Some(fastest.map_or(done, |f| f.min(done)));
            }
            Ok(Some(Ok(Err(e)))) => push_error(&mut out.errors, format!("{e:#}")),
            Ok(Some(Err(e))) => push_error(&mut out.errors, format!("reader task: {e}")),
            Ok(None) => break,
            Err(_) => {
                push_error(
                    &mut out.errors,
                    format!(
                        "{} of {n} readers had not read {per_reader} records after {timeout:?}",
                        n - out.finished
                    ),
                );
                tasks.abort_all();
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    out.records = records.load(Ordering::Relaxed);
    out.bytes = bytes.load(Ordering::Relaxed);
    out.seconds = elapsed;
    out.records_per_s = out.records as f64 / elapsed;
    out.mib_per_s = out.bytes as f64 / elapsed / (1024.0 * 1024.0);
    out.fastest_s = fastest.map_or(0.0, |f| f.as_secs_f64());
    let mut waits = first_responses
        .lock()
        .map(|w| w.clone())
        .unwrap_or_default();
    waits.sort_by(f64::total_cmp);
    out.answered = waits.len();
    out.first_response_p50_ms = waits.get(waits.len() / 2).copied().unwrap_or(0.0);
    out.first_response_max_ms = waits.last().copied().unwrap_or(0.0);
    Ok(out)
}

/// What the producers of one phase did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Produced {
    /// Producers (each its own connection and SDK producer).
    pub producers: usize,
    /// Records per second asked of all of them together.
    pub target_records_per_s: f64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records that failed.
    pub failed: u64,
    /// From start to stop (s).
    pub seconds: f64,
    /// `acked / seconds`.
    pub records_per_s: f64,
    /// Errors, first few.
    pub errors: Vec<String>,
}

/// Producers sending one record every `1 / rate` seconds each, until
/// stopped.
pub struct Producers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Vec<String>>,
    producers: usize,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    started: Instant,
    target: f64,
}

impl Producers {
    /// Starts `n` producers of `payload` into `topic`, `rate` records/s
    /// each, every one with its own SDK client (connection) and the SDK's
    /// default producer settings.
    pub async fn start(
        gateway: &str,
        topic: &str,
        n: usize,
        rate: u32,
        payload: Bytes,
    ) -> anyhow::Result<Producers> {
        let (stop, stopped) = watch::channel(false);
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(
                Client::connect(gateway.to_string())
                    .await
                    .with_context(|| format!("no StreamBus gateway at {gateway}"))?,
            );
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut tasks = JoinSet::new();
        for (i, client) in clients.into_iter().enumerate() {
            let (topic, payload) = (topic.to_string(), payload.clone());
            let (acked, failed, mut stopped) = (acked.clone(), failed.clone(), stopped.clone());
            tasks.spawn(async move {
                let producer = client.producer(ProducerConfig::default());
                let count = |r: Result<_, _>| match r {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                // Spread the producers' ticks over one interval.
                let first = Instant::now() + interval.mul_f64(i as f64 / n as f64);
                let mut ticks = tokio::time::interval_at(first, interval);
                let mut pending = FuturesUnordered::new();
                let mut errors = Vec::new();
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {
                            let record = Record {
                                value: Some(payload.clone()),
                                ..Record::default()
                            };
                            match producer.send(&topic, record, None).await {
                                Ok(delivery) => pending.push(delivery),
                                Err(e) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    push_error(&mut errors, e.to_string());
                                }
                            }
                        }
                        Some(r) = pending.next(), if !pending.is_empty() => {
                            count(r);
                        }
                        _ = stopped.changed() => break,
                    }
                }
                producer.close().await;
                while let Some(r) = pending.next().await {
                    count(r);
                }
                errors
            });
        }
        Ok(Producers {
            stop,
            tasks,
            producers: n,
            acked,
            failed,
            started: Instant::now(),
            target: n as f64 * f64::from(rate),
        })
    }

    /// Stops sending, waits for what was sent, and counts.
    pub async fn stop(mut self) -> Produced {
        let seconds = self.started.elapsed().as_secs_f64();
        let _ = self.stop.send(true);
        let mut errors = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(e) => e.into_iter().for_each(|e| push_error(&mut errors, e)),
                Err(e) => push_error(&mut errors, format!("producer task: {e}")),
            }
        }
        let acked = self.acked.load(Ordering::Relaxed);
        Produced {
            producers: self.producers,
            target_records_per_s: self.target,
            acked,
            failed: self.failed.load(Ordering::Relaxed),
            seconds,
            records_per_s: acked as f64 / seconds,
            errors,
        }
    }
}

/// The server as sampled while a phase ran: the largest resident memory
/// and budget use seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Watched {
    /// Largest `VmRSS` sampled (every 100 ms).
    pub max_rss_bytes: u64,
    /// Largest `RssAnon` sampled.
    pub max_anon_bytes: u64,
    /// Largest gateway budget use scraped (every 200 ms).
    pub gateway_max_used_bytes: u64,
    /// Most reservations waiting for gateway memory at a scrape.
    pub gateway_max_waiters: u64,
    /// Largest storage-node budget use scraped.
    pub storage_max_used_bytes: u64,
    /// Memory samples taken.
    pub samples: usize,
    /// Errors reading `/proc` or `/metrics`, first few.
    pub errors: Vec<String>,
}

impl Watched {
    fn memory(&mut self, m: Memory) {
        self.max_rss_bytes = self.max_rss_bytes.max(m.rss_bytes);
        self.max_anon_bytes = self.max_anon_bytes.max(m.anon_bytes);
        self.samples += 1;
    }

    fn budgets(&mut self, b: Budgets) {
        self.gateway_max_used_bytes = self.gateway_max_used_bytes.max(b.gateway.used_bytes);
        self.gateway_max_waiters = self.gateway_max_waiters.max(b.gateway.waiters);
        self.storage_max_used_bytes = self.storage_max_used_bytes.max(b.storage.used_bytes);
    }
}

/// Samples the server's memory and budgets in the background.
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Watched>,
}

impl Sampler {
    /// Starts sampling `server` and the `/metrics` at `metrics`.
    pub fn start(server: Process, metrics: String) -> Sampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut watched = Watched::default();
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for tick in 0u64.. {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => break,
                }
                match server.memory() {
                    Ok(m) => watched.memory(m),
                    Err(e) => push_error(&mut watched.errors, format!("{e:#}")),
                }
                if tick % 2 == 0 {
                    match scrape::scrape(&metrics).await.map(|t| Budgets::parse(&t)) {
                        Ok(Some(b)) => watched.budgets(b),
                        Ok(None) => push_error(
                            &mut watched.errors,
                            format!("no gateway budget at http://{metrics}/metrics"),
                        ),
                        Err(e) => push_error(&mut watched.errors, format!("{e:#}")),
                    }
                }
            }
            watched
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns what was seen.
    pub async fn stop(self) -> Watched {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
