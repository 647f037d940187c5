//! Runs a workload against one driver: creates the topics, starts the
//! consumers and the paced producers, prints a line per interval, and
//! returns the [`Report`].
//!
//! Every producer has an acknowledgement collector task beside it, so an
//! acknowledgement is timed when it arrives even while the producer itself
//! waits in `send`. Every task records into its own histograms
//! ([`TaskRecorder`]); the reporter merges them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::driver::{AckFuture, Driver, Producer};
use crate::procfs::Process;
use crate::progress::Progress;
use crate::rate::{Pacer, publish_delay};
use crate::report::{Counts, CpuSample, CpuUse, IntervalLine, Report, Results};
use crate::stats::{Latencies, Metric, TaskRecorder};
use crate::workload::{KeyDistribution, Workload};

/// Microseconds since the Unix epoch (the clock every timestamp header
/// uses; producers and consumers run in this process).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How a run prints, and what else it measures.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print nothing while running (tests).
    pub quiet: bool,
    /// The server process whose CPU time is measured beside the benchmark
    /// process's own (any system: StreamBus, Kafka, NATS).
    pub server_pid: Option<u32>,
}

/// Reads the CPU time of this process and of the server.
struct CpuMeter {
    client: Option<Process>,
    server: Option<Process>,
}

impl CpuMeter {
    fn new(server_pid: Option<u32>) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            client: Process::current().ok(),
            server: server_pid
                .map(|pid| {
                    Process::open(pid)
                        .with_context(|| format!("the server process (--server-pid {pid})"))
                })
                .transpose()?,
        })
    }

    /// `None` where `/proc` cannot tell (not Linux).
    fn sample(&self) -> Option<CpuSample> {
        let client_s = self.client.as_ref()?.cpu_seconds().ok()?;
        Some(CpuSample {
            client_s,
            server_s: self.server.as_ref().and_then(|p| p.cpu_seconds().ok()),
        })
    }
}

fn cpu_between(
    before: Option<CpuSample>,
    after: Option<CpuSample>,
    messages: u64,
) -> Option<CpuUse> {
    CpuUse::between(before?, after?, messages)
}

/// Counters shared by every task.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    counters: Counters,
    measuring: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 20 {
            errors.push(e);
        }
    }
}

/// Runs `workload` against `driver`.
pub async fn run(
    driver: Arc<dyn Driver>,
    workload: &Workload,
    options: RunOptions,
) -> anyhow::Result<Report> {
    workload.validate()?;
    let started_at = wall_us();
    let run_id = format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
    let topics: Vec<String> = (0..workload.topics)
        .map(|t| format!("bench-{run_id}-{t}"))
        .collect();
    let say = |line: &str| {
        if !options.quiet {
            println!("{line}");
        }
    };
    say(&format!(
        "{}: workload {} ({} topic(s) x {} partitions, {} B messages, {} producer(s), {} consumer(s), rate {}, durability {}, acks {:?})",
        driver.name(),
        workload.name,
        workload.topics,
        workload.partitions_per_topic,
        workload.message_size,
        workload.total_producers(),
        workload.topics * workload.consumers_per_topic,
        match workload.producer_rate {
            0 => "max".to_string(),
            r => format!("{r} msg/s"),
        },
        workload.durability.as_str(),
        workload.acks,
    ));
    for topic in &topics {
        driver.create_topic(topic, workload).await?;
    }

    let result = run_on_topics(driver.clone(), workload, &topics, options, started_at).await;
    for topic in &topics {
        if let Err(e) = driver.delete_topic(topic, workload).await {
            eprintln!("warning: could not delete {topic}: {e:#}");
        }
    }
    result
}

async fn run_on_topics(
    driver: Arc<dyn Driver>,
    workload: &Workload,
    topics: &[String],
    options: RunOptions,
    started_at: u64,
) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        measuring: AtomicBool::new(false),
        errors: std::sync::Mutex::new(Vec::new()),
    });
    let mut recorders: Vec<Arc<TaskRecorder>> = Vec::new();
    let (stop_consumers, consumers_stopped) = watch::channel(false);
    let (stop_producers, producers_stopped) = watch::channel(false);

    // Consumers first, from the beginning of the (new, empty) topics.
    let mut consumer_tasks = Vec::new();
    for topic in topics {
        for c in 0..workload.consumers_per_topic {
            let partitions = workload.partitions_of_consumer(c);
            let stream = driver.consumer(topic, partitions, workload).await?;
            let recorder = Arc::new(TaskRecorder::default());
            recorders.push(recorder.clone());
            consumer_tasks.push(tokio::spawn(consume(
                stream,
                recorder,
                shared.clone(),
                consumers_stopped.clone(),
            )));
        }
    }

    let payload = Bytes::from(workload.payload.generate(workload.message_size));
    let mut producer_tasks = Vec::new();
    for topic in topics {
        for _ in 0..workload.producers_per_topic {
            let producer = driver.producer(topic, workload).await?;
            let recorder = Arc::new(TaskRecorder::default());
            recorders.push(recorder.clone());
            producer_tasks.push(tokio::spawn(produce(
                producer,
                workload.clone(),
                payload.clone(),
                recorder,
                shared.clone(),
                producers_stopped.clone(),
            )));
        }
    }

    // Report every interval; switch phases at the warm-up and the end.
    let start = Instant::now();
    let warm_end = start + workload.warmup;
    let end = warm_end + workload.duration;
    let mut progress = Progress::new(workload.warmup + workload.duration, options.quiet);
    let mut intervals = Vec::new();
    let cpu = CpuMeter::new(options.server_pid)?;
    let mut last = (start, shared.counters.snapshot(), cpu.sample());
    let mut next_report = start + workload.report_interval;
    let mut next_tick = start + Duration::from_secs(1);
    let mut at_warm_end = None;
    let mut cpu_at_warm_end = None;
    if workload.warmup.is_zero() {
        shared.measuring.store(true, Ordering::Relaxed);
        at_warm_end = Some(shared.counters.snapshot());
        cpu_at_warm_end = cpu.sample();
    }
    loop {
        let wake = [next_report, next_tick, end]
            .into_iter()
            .chain((at_warm_end.is_none()).then_some(warm_end))
            .min()
            .expect("non-empty");
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if at_warm_end.is_none() && now >= warm_end {
            at_warm_end = Some(shared.counters.snapshot());
            cpu_at_warm_end = cpu.sample();
            shared.measuring.store(true, Ordering::Relaxed);
        }
        if now >= next_report || now >= end {
            let counts = shared.counters.snapshot();
            let cpu_now = cpu.sample();
            let mut merged = Latencies::default();
            for r in &recorders {
                r.drain_interval(&mut merged);
            }
            let line = IntervalLine::new(
                now - start,
                now - last.0,
                &last.1,
                &counts,
                workload,
                &merged,
                now <= warm_end,
            )
            .with_cpu(cpu_between(last.2, cpu_now, counts.acked - last.1.acked));
            progress.println(&line.to_string());
            intervals.push(line);
            last = (now, counts, cpu_now);
            next_report += workload.report_interval;
        }
        if now >= next_tick {
            progress.tick(now - start);
            next_tick += Duration::from_secs(1);
        }
        if now >= end {
            break;
        }
        let first_error = shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned();
        if let Some(e) = first_error
            && shared.counters.snapshot().sent == 0
        {
            anyhow::bail!("{} cannot produce: {e}", driver.name());
        }
    }
    let measured = end.saturating_duration_since(warm_end.max(start));
    let at_warm_end = at_warm_end.unwrap_or_default();
    let at_end = shared.counters.snapshot();
    let cpu_used = cpu_between(
        cpu_at_warm_end,
        cpu.sample(),
        at_end.acked - at_warm_end.acked,
    );
    shared.measuring.store(false, Ordering::Relaxed);
    progress.finish();

    // Drain: stop producing, wait for outstanding acknowledgements, then
    // for the consumers to read everything acknowledged.
    let _ = stop_producers.send(true);
    for t in producer_tasks {
        match tokio::time::timeout(Duration::from_secs(90), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => shared.error(format!("producer: {e:#}")),
            Ok(Err(e)) => shared.error(format!("producer task: {e}")),
            Err(_) => shared.error("a producer did not finish within 90 s".to_string()),
        }
    }
    let mut last_received = shared.counters.snapshot().received;
    let mut idle_since = Instant::now();
    loop {
        let c = shared.counters.snapshot();
        if c.received >= c.acked {
            break;
        }
        if c.received != last_received {
            last_received = c.received;
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(15) {
            shared.error(format!(
                "consumers stopped {} messages short of the {} acknowledged",
                c.acked - c.received,
                c.acked
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_consumers.send(true);
    for t in consumer_tasks {
        if let Ok(Err(e)) = t.await {
            shared.error(format!("consumer: {e:#}"));
        }
    }

    let mut total = Latencies::default();
    for r in &recorders {
        r.merge_total(&mut total);
    }
    let finished = shared.counters.snapshot();
    let results = Results::new(workload, measured, &at_warm_end, &at_end, &finished, &total)
        .with_cpu(cpu_used);
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Report::new(
        driver.as_ref(),
        workload,
        started_at,
        results,
        intervals,
        errors,
    ))
}

/// One message handed to the client, waiting for its acknowledgement.
struct InFlight {
    ack: AckFuture,
    sent: Instant,
    _permit: OwnedSemaphorePermit,
}

async fn produce(
    mut producer: Box<dyn Producer>,
    workload: Workload,
    payload: Bytes,
    recorder: Arc<TaskRecorder>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let outstanding = Arc::new(Semaphore::new(workload.max_outstanding_messages()));
    let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
    let collector = tokio::spawn(collect(rx, recorder.clone(), shared.clone()));
    let mut pacer = workload
        .rate_per_producer()
        .map(|rate| Pacer::new(rate, Instant::now()));
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut n: u64 = 0;
    let mut result = Ok(());
    while !*stop.borrow() {
        // The same outstanding bound for every system; waiting here at a
        // fixed rate shows as publish delay.
        let permit = outstanding.clone().acquire_owned().await?;
        let due = pacer.as_mut().map(Pacer::next_due);
        if let Some(due) = due {
            let wake = Pacer::wake_at(due);
            if wake > Instant::now() {
                tokio::time::sleep_until(wake).await;
            }
        }
        let sent = Instant::now();
        if let Some(due) = due {
            let delay = publish_delay(due, sent).as_micros() as u64;
            recorder.record(Metric::PublishDelay, delay, shared.measuring());
        }
        let key = match workload.key_distribution {
            KeyDistribution::None => None,
            KeyDistribution::Random => Some(Bytes::from(format!("{:016x}", rng.next_u64()))),
        };
        match producer.send(key, payload.clone(), wall_us()).await {
            Ok(ack) => {
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(InFlight {
                    ack,
                    sent,
                    _permit: permit,
                });
            }
            Err(e) => {
                shared.error(format!("send: {e:#}"));
                result = Err(e);
                break;
            }
        }
        n += 1;
        if n.is_multiple_of(128) {
            // Stay fair to the other tasks when the client never blocks.
            tokio::task::yield_now().await;
        }
    }
    // Every acknowledgement first (a client may drop pending ones when
    // closed), then close.
    drop(tx);
    collector.await?;
    let closed = producer.close().await;
    result.and(closed)
}

async fn collect(
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    recorder: Arc<TaskRecorder>,
    shared: Arc<Shared>,
) {
    let mut pending = FuturesUnordered::new();
    let handle = |r: anyhow::Result<()>, sent: Instant| {
        let latency = sent.elapsed().as_micros() as u64;
        match r {
            Ok(()) => {
                shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                recorder.record(Metric::Publish, latency, shared.measuring());
            }
            Err(e) => {
                shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                shared.error(format!("acknowledgement: {e:#}"));
            }
        }
    };
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some((r, sent)) = pending.next(), if !pending.is_empty() => handle(r, sent),
            m = rx.recv(), if open => match m {
                Some(InFlight { ack, sent, _permit }) => {
                    pending.push(ack.map(move |r| {
                        drop(_permit);
                        (r, sent)
                    }));
                }
                None => open = false,
            },
        }
    }
}

async fn consume(
    stream: futures::stream::BoxStream<'static, anyhow::Result<crate::driver::Received>>,
    recorder: Arc<TaskRecorder>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut stream = stream.take_until(Box::pin(stopped));
    while let Some(item) = stream.next().await {
        let m = item?;
        if let Some(sent) = m.sent_us {
            let e2e = wall_us().saturating_sub(sent);
            recorder.record(Metric::EndToEnd, e2e, shared.measuring());
        }
        shared.counters.received.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
