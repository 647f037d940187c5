//! `streambus-bench subscribers`: a StreamBus server's resident memory
//! against the number of concurrent subscribers, half of them stalled (each
//! reads one response, then never reads again), and what the stalled ones
//! cost the throughput of the others, against a baseline without stalled
//! subscribers measured in the same run. Every subscriber and producer
//! has its own HTTP/2 connection (the streams of one connection share its
//! flow-control window). See `docs/bench-tool.md`.

mod load;
mod table;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use streambus_client::{Client, ProducerConfig, Record};
use tokio::time::Instant;
use tonic::transport::Endpoint;

pub use load::{FirstResponses, Produced, Readers, Watched};

use crate::machine::Machine;
use crate::procfs::{self, Memory, Process};
use crate::scrape::{self, Budgets};
use crate::workload::Payload;

/// How long the server's CPU use is measured with only idle subscriptions
/// open.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(5);
/// How long the gateway's budget may take to drain after clients left.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// Connections opened to check that `--server-pid` serves the gateway.
const PID_PROBE_CONNECTIONS: usize = 16;
/// Open files the server and the bench need beyond their connections.
const SPARE_FILES: u64 = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway, `host:port`.
    pub gateway: String,
    /// The server's HTTP listener (`/metrics`), `host:port`.
    pub metrics: String,
    /// The server process whose memory is measured.
    pub server_pid: u32,
    /// Concurrent subscribers per step.
    pub counts: Vec<usize>,
    /// Active readers per step; `None`: the half of the subscribers that
    /// is not stalled.
    pub active: Option<usize>,
    /// Records the active readers of a phase read together, split evenly
    /// between them.
    pub records: u64,
    /// Bytes of records written to the topic before the steps.
    pub fill_bytes: u64,
    /// Payload bytes per record.
    pub record_bytes: usize,
    /// Partitions of the topics.
    pub partitions: u32,
    /// Records per second of each producer (one producer per ten
    /// subscribers, at least one); 0: no producers.
    pub producer_rate: u32,
    /// Idle connections and idle subscriptions to measure; 0: skip.
    pub idle: usize,
    /// Pause before each memory reading, once the gateway's budget is
    /// unused.
    pub settle: Duration,
    /// How long a stalled subscriber waits for its one response.
    pub first_response_timeout: Duration,
    /// How long the readers of a phase may take.
    pub phase_timeout: Duration,
    /// Rounds per step, each a baseline phase and then a loaded one.
    pub rounds: usize,
}

/// Parses a list of subscriber counts: `10,100,1000` (`_` allowed as a
/// digit separator). Each count is at least 2 (one stalled, one active).
pub fn parse_counts(s: &str) -> Result<Vec<usize>, String> {
    let counts = s
        .split(',')
        .map(|c| {
            let c = c.trim().replace('_', "");
            match c.parse::<usize>() {
                Ok(n) if n >= 2 => Ok(n),
                Ok(n) => Err(format!(
                    "{n}: a count is at least 2 (one stalled, one active)"
                )),
                Err(_) => Err(format!("{c:?} is not a number")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if counts.is_empty() {
        return Err("no counts".to_string());
    }
    Ok(counts)
}

/// The clients of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Concurrent subscribers (stalled plus active).
    pub subscribers: usize,
    /// Stalled: half of them.
    pub stalled: usize,
    /// Active readers.
    pub active: usize,
    /// Producers running meanwhile: one per ten subscribers, at least one
    /// (none when they have no rate).
    pub producers: usize,
}

impl Plan {
    /// `subscribers` of which half stall; `active` overrides the number of
    /// readers.
    pub fn new(subscribers: usize, active: Option<usize>, producer_rate: u32) -> Plan {
        let stalled = subscribers / 2;
        let active = active.unwrap_or(subscribers - stalled);
        Plan {
            subscribers: stalled + active,
            stalled,
            active,
            producers: if producer_rate == 0 {
                0
            } else {
                (subscribers / 10).max(1)
            },
        }
    }
}

/// Records each of `active` readers reads for `records` in all.
pub fn records_per_reader(records: u64, active: usize) -> u64 {
    records.div_ceil(active.max(1) as u64)
}

/// The median of `values` (the upper one of an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The filled topic.
#[derive(Debug, Clone, Serialize)]
pub struct Fill {
    /// The topic the readers read.
    pub topic: String,
    /// Records written.
    pub records: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Time to write and acknowledge them (s).
    pub seconds: f64,
}

/// What idle connections and idle subscriptions cost the server.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// Connections opened, then one subscription on each.
    pub units: usize,
    /// The server before.
    pub before: Memory,
    /// With the connections open (no stream on them).
    pub with_connections: Memory,
    /// With one subscription to an empty topic on each connection.
    pub with_subscriptions: Memory,
    /// Open files the server gained with the connections.
    pub server_files_added: i64,
    /// `VmRSS` gained per connection (bytes).
    pub per_connection_bytes: f64,
    /// `VmRSS` gained per subscription, beyond its connection (bytes).
    pub per_subscription_bytes: f64,
    /// The server's CPU use with only the idle subscriptions open (cores).
    pub subscriptions_server_cpu_cores: f64,
    /// The budgets with the idle subscriptions open.
    pub budgets_with_subscriptions: Budgets,
    /// One reader of the filled topic before the idle connections opened.
    pub probe_alone: Readers,
    /// The same reader with the idle subscriptions open.
    pub probe_with_subscriptions: Readers,
}

/// The stalled subscribers of a loaded phase, once they had their one
/// response.
#[derive(Debug, Clone, Serialize)]
pub struct StalledState {
    /// How long they waited for it.
    pub first_responses: FirstResponses,
    /// The server with them open, before the readers start.
    pub memory: Memory,
    /// The budgets then.
    pub budgets: Budgets,
}

/// One phase: readers (with stalled subscribers, or without for the
/// baseline) and producers.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// The stalled subscribers (none in a baseline).
    pub stalled: Option<StalledState>,
    /// The active readers.
    pub readers: Readers,
    /// The producers.
    pub produced: Option<Produced>,
    /// The server at the end, all clients still open.
    pub memory_end: Memory,
    /// Peak `VmRSS` of the phase: `VmHWM` when it could be reset at the
    /// start, else the largest sample.
    pub peak_rss_bytes: u64,
    /// Whether `VmHWM` was reset at the start of the phase.
    pub peak_reset: bool,
    /// Sampled while the phase ran.
    pub watched: Watched,
    /// The server's CPU use while the readers ran (cores).
    pub server_cpu_cores: f64,
    /// This process's CPU use while the readers ran (cores).
    pub bench_cpu_cores: f64,
}

/// One round of a step: the baseline, then the same with the stalled
/// subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The active readers and producers alone.
    pub baseline: Phase,
    /// The same with the stalled subscribers open.
    pub loaded: Phase,
    /// Readers' records/s with stalled subscribers over without.
    pub throughput_ratio: f64,
}

/// A step's rounds summed up: medians of rates, largest memory figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Median records/s of the readers, baseline.
    pub baseline_records_per_s: f64,
    /// Median MiB/s of the readers, baseline.
    pub baseline_mib_per_s: f64,
    /// Median records/s of the readers with the stalled subscribers.
    pub loaded_records_per_s: f64,
    /// Median MiB/s of the readers with the stalled subscribers.
    pub loaded_mib_per_s: f64,
    /// Median of the rounds' throughput ratios.
    pub ratio_median: f64,
    /// Lowest round's ratio.
    pub ratio_min: f64,
    /// Highest round's ratio.
    pub ratio_max: f64,
    /// Largest `VmRSS` with the stalled subscribers open, before readers.
    pub rss_with_stalled_bytes: u64,
    /// Largest peak `VmRSS` of the baseline phases.
    pub baseline_peak_rss_bytes: u64,
    /// Largest peak `VmRSS` of the loaded phases.
    pub loaded_peak_rss_bytes: u64,
    /// Largest gateway budget use scraped, baseline phases.
    pub baseline_gateway_max_used_bytes: u64,
    /// Largest gateway budget use scraped, loaded phases.
    pub loaded_gateway_max_used_bytes: u64,
    /// Most waiters for gateway memory at a scrape, any phase.
    pub gateway_max_waiters: u64,
    /// Stalled subscribers opened, all rounds.
    pub stalled_opened: usize,
    /// Of those, the ones that got their first response in time.
    pub stalled_answered: usize,
    /// Median of the rounds' median first-response waits (ms).
    pub stalled_first_response_p50_ms: f64,
    /// Longest first-response wait of a stalled subscriber (ms).
    pub stalled_first_response_max_ms: f64,
    /// Fewest readers that finished in a baseline phase.
    pub baseline_readers_finished: usize,
    /// Fewest readers that finished in a loaded phase.
    pub loaded_readers_finished: usize,
    /// Median producers' records/s, baseline phases.
    pub baseline_produced_records_per_s: Option<f64>,
    /// Median producers' records/s, loaded phases.
    pub loaded_produced_records_per_s: Option<f64>,
    /// The producers' target records/s.
    pub produce_target_records_per_s: Option<f64>,
    /// Median server CPU use while the readers ran, baseline (cores).
    pub baseline_server_cpu_cores: f64,
    /// Median server CPU use while the readers ran, loaded (cores).
    pub loaded_server_cpu_cores: f64,
}

impl Summary {
    fn of(rounds: &[Round]) -> Summary {
        let each = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let most = |f: &dyn Fn(&Round) -> u64| rounds.iter().map(f).max().unwrap_or(0);
        let ratios = || rounds.iter().map(|r| r.throughput_ratio);
        let stalled: Vec<&StalledState> = rounds
            .iter()
            .filter_map(|r| r.loaded.stalled.as_ref())
            .collect();
        let produced = |f: &dyn Fn(&Round) -> Option<&Produced>| -> Option<f64> {
            let rates: Vec<f64> = rounds
                .iter()
                .filter_map(f)
                .map(|p| p.records_per_s)
                .collect();
            (!rates.is_empty()).then(|| median(rates))
        };
        Summary {
            baseline_records_per_s: each(&|r| r.baseline.readers.records_per_s),
            baseline_mib_per_s: each(&|r| r.baseline.readers.mib_per_s),
            loaded_records_per_s: each(&|r| r.loaded.readers.records_per_s),
            loaded_mib_per_s: each(&|r| r.loaded.readers.mib_per_s),
            ratio_median: each(&|r| r.throughput_ratio),
            ratio_min: ratios().fold(f64::INFINITY, f64::min),
            ratio_max: ratios().fold(0.0, f64::max),
            rss_with_stalled_bytes: stalled
                .iter()
                .map(|s| s.memory.rss_bytes)
                .max()
                .unwrap_or(0),
            baseline_peak_rss_bytes: most(&|r| r.baseline.peak_rss_bytes),
            loaded_peak_rss_bytes: most(&|r| r.loaded.peak_rss_bytes),
            baseline_gateway_max_used_bytes: most(&|r| r.baseline.watched.gateway_max_used_bytes),
            loaded_gateway_max_used_bytes: most(&|r| r.loaded.watched.gateway_max_used_bytes),
            gateway_max_waiters: most(&|r| {
                r.baseline
                    .watched
                    .gateway_max_waiters
                    .max(r.loaded.watched.gateway_max_waiters)
            }),
            stalled_opened: stalled.iter().map(|s| s.first_responses.opened).sum(),
            stalled_answered: stalled.iter().map(|s| s.first_responses.answered).sum(),
            stalled_first_response_p50_ms: median(
                stalled.iter().map(|s| s.first_responses.p50_ms).collect(),
            ),
            stalled_first_response_max_ms: stalled
                .iter()
                .map(|s| s.first_responses.max_ms)
                .fold(0.0, f64::max),
            baseline_readers_finished: rounds
                .iter()
                .map(|r| r.baseline.readers.finished)
                .min()
                .unwrap_or(0),
            loaded_readers_finished: rounds
                .iter()
                .map(|r| r.loaded.readers.finished)
                .min()
                .unwrap_or(0),
            baseline_produced_records_per_s: produced(&|r| r.baseline.produced.as_ref()),
            loaded_produced_records_per_s: produced(&|r| r.loaded.produced.as_ref()),
            produce_target_records_per_s: rounds
                .first()
                .and_then(|r| r.baseline.produced.as_ref())
                .map(|p| p.target_records_per_s),
            baseline_server_cpu_cores: each(&|r| r.baseline.server_cpu_cores),
            loaded_server_cpu_cores: each(&|r| r.loaded.server_cpu_cores),
        }
    }
}

/// One step: a number of subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Its clients.
    pub plan: Plan,
    /// The server before the step, settled.
    pub memory_before: Memory,
    /// Its rounds, in order.
    pub rounds: Vec<Round>,
    /// The rounds summed up.
    pub summary: Summary,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The server measured.
    pub server: ServerInfo,
    /// The options.
    pub settings: serde_json::Value,
    /// The filled topic.
    pub fill: Fill,
    /// Idle connection and subscription costs.
    pub idle: Option<Idle>,
    /// One per count.
    pub steps: Vec<Step>,
    /// Problems seen (the command fails when there is any).
    pub errors: Vec<String>,
}

/// The server process.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// Its pid.
    pub pid: u32,
    /// Its command name.
    pub name: String,
    /// Its soft limit on open files (`None`: unlimited).
    pub open_files_limit: Option<u64>,
    /// Its memory at the start.
    pub memory_at_start: Memory,
    /// Its budgets at the start.
    pub budgets: Budgets,
}

struct Ctx {
    options: Options,
    server: Process,
    endpoint: Endpoint,
    client: Client,
    payload: Bytes,
    errors: Vec<String>,
}

/// Runs the benchmark; progress goes to stderr.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let server = Process::open(options.server_pid).context("--server-pid")?;
    let client = Client::connect(options.gateway.clone())
        .await
        .with_context(|| format!("no StreamBus gateway at {}", options.gateway))?;
    let budgets = budgets(&options.metrics).await.with_context(|| {
        format!(
            "--metrics {}: give the `http (health/metrics)` address `streambus dev` printed",
            options.metrics
        )
    })?;
    let endpoint = load::endpoint(&options.gateway)?;
    let plans: Vec<Plan> = options
        .counts
        .iter()
        .map(|&c| Plan::new(c, options.active, options.producer_rate))
        .collect();
    let fill_records = options.fill_bytes / options.record_bytes.max(1) as u64;
    for plan in &plans {
        let per_reader = records_per_reader(options.records, plan.active);
        anyhow::ensure!(
            per_reader <= fill_records,
            "{} readers would read {per_reader} records each, more than the {fill_records} \
             records of --fill-bytes {}: lower --records or raise --fill-bytes",
            plan.active,
            options.fill_bytes
        );
    }
    // Connections the server and this process hold at once, at most.
    let connections = plans
        .iter()
        .map(|p| p.subscribers + p.producers)
        .chain([options.idle])
        .max()
        .unwrap_or(0) as u64;
    let needed = connections + SPARE_FILES;
    let own_limit = procfs::raise_open_files_limit().context("raising the open-files limit")?;
    anyhow::ensure!(
        own_limit.is_none_or(|l| l >= needed),
        "this process may open {} files, the run needs about {needed}: raise the hard limit \
         (ulimit -Hn)",
        own_limit.unwrap_or(0)
    );
    let server_limit = server.open_files_limit()?;
    anyhow::ensure!(
        server_limit.is_none_or(|l| l >= needed),
        "the server (pid {}) may open {} files, the run needs about {needed}: start it with a \
         higher limit (ulimit -n)",
        server.pid(),
        server_limit.unwrap_or(0)
    );
    let mut ctx = Ctx {
        server: server.clone(),
        endpoint,
        client,
        payload: Bytes::from(Payload::Random.generate(options.record_bytes)),
        errors: Vec::new(),
        options,
    };
    check_pid_serves_gateway(&ctx).await?;
    let info = ServerInfo {
        pid: server.pid(),
        name: server.name().to_string(),
        open_files_limit: server_limit,
        memory_at_start: server.memory()?,
        budgets,
    };
    progress(&format!(
        "server pid {} ({}): VmRSS {}, gateway budget {}",
        info.pid,
        info.name,
        mib(info.memory_at_start.rss_bytes),
        mib(budgets.gateway.capacity_bytes)
    ));

    let prefix = format!(
        "subscribers-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let (idle_topic, produce_topic) = (format!("{prefix}-idle"), format!("{prefix}-produce"));
    for topic in [&prefix, &idle_topic, &produce_topic] {
        create_topic(&ctx, topic).await?;
    }
    let fill = fill(&ctx, &prefix, fill_records).await?;
    let idle = if ctx.options.idle > 0 {
        Some(measure_idle(&mut ctx, &idle_topic, &fill).await?)
    } else {
        None
    };
    let mut steps = Vec::new();
    for plan in plans {
        steps.push(step(&mut ctx, plan, &prefix, &produce_topic).await?);
    }
    for topic in [&prefix, &idle_topic, &produce_topic] {
        if let Err(e) = ctx.client.delete_topic(topic).await {
            ctx.errors.push(format!("deleting topic {topic}: {e}"));
        }
    }
    Ok(Report {
        machine: Machine::detect(),
        server: info,
        settings: settings(&ctx.options),
        fill,
        idle,
        steps,
        errors: ctx.errors,
    })
}

fn settings(o: &Options) -> serde_json::Value {
    serde_json::json!({
        "gateway": o.gateway,
        "metrics": o.metrics,
        "counts": o.counts,
        "active": o.active,
        "records_per_phase": o.records,
        "fill_bytes": o.fill_bytes,
        "record_bytes": o.record_bytes,
        "partitions": o.partitions,
        "producer_rate_per_producer": o.producer_rate,
        "idle": o.idle,
        "settle_s": o.settle.as_secs_f64(),
        "first_response_timeout_s": o.first_response_timeout.as_secs_f64(),
        "phase_timeout_s": o.phase_timeout.as_secs_f64(),
        "rounds": o.rounds,
        "subscriber": "raw ConsumeService.Subscribe from the earliest offset, encoded batches, \
                       max_bytes 0 (the gateway's default), the SDK's connection settings \
                       (2 MiB stream / 8 MiB connection windows), one connection each",
        "producer": "SDK producer, default settings (acks all, linger 5 ms), keyless records, \
                     its own connection, into a topic of its own",
        "topics": "fsync.policy=never",
    })
}

fn progress(line: &str) {
    eprintln!("subscribers: {line}");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn budgets(metrics: &str) -> anyhow::Result<Budgets> {
    let text = scrape::scrape(metrics).await?;
    Budgets::parse(&text).with_context(|| {
        format!(
            "http://{metrics}/metrics has no streambus_gateway_memory_budget_bytes: not a \
             gateway's metrics"
        )
    })
}

async fn create_topic(ctx: &Ctx, topic: &str) -> anyhow::Result<()> {
    ctx.client
        .create_topic(
            topic,
            ctx.options.partitions,
            0,
            HashMap::from([("fsync.policy".to_string(), "never".to_string())]),
        )
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    Ok(())
}

/// Fails unless the server's open files grow with new gateway
/// connections: a wrong `--server-pid` would measure some other process.
/// Half of them is enough (the server opens and closes other files
/// meanwhile).
async fn check_pid_serves_gateway(ctx: &Ctx) -> anyhow::Result<()> {
    let before = ctx.server.open_files()?;
    let consumers = load::connect_many(&ctx.endpoint, PID_PROBE_CONNECTIONS).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = ctx.server.open_files()?;
        if now >= before + PID_PROBE_CONNECTIONS / 2 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "--server-pid {}: its open files went from {before} to {now} with \
             {PID_PROBE_CONNECTIONS} new connections to the gateway at {}; is it the process \
             serving the gateway?",
            ctx.server.pid(),
            ctx.options.gateway
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(consumers);
    Ok(())
}

/// Waits until the gateway's budget is unused again (every client gone),
/// then `settle` more, and reads the server's memory.
async fn settle(ctx: &mut Ctx) -> anyhow::Result<Memory> {
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let b = budgets(&ctx.options.metrics).await?;
        if b.gateway.used_bytes == 0 && b.gateway.waiters == 0 {
            break;
        }
        if Instant::now() >= deadline {
            ctx.errors.push(format!(
                "the gateway's budget still had {} bytes used and {} waiters {DRAIN_WAIT:?} \
                 after its clients left",
                b.gateway.used_bytes, b.gateway.waiters
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(ctx.options.settle).await;
    ctx.server.memory()
}

/// Records the probe reader reads, alone and beside idle subscriptions
/// (at most the filled topic's).
const PROBE_RECORDS: u64 = 100_000;

async fn measure_idle(ctx: &mut Ctx, topic: &str, filled: &Fill) -> anyhow::Result<Idle> {
    let n = ctx.options.idle;
    let timeout = ctx.options.phase_timeout;
    let (filled, probe) = (&filled.topic, PROBE_RECORDS.min(filled.records));
    let probe_alone = load::read(&ctx.endpoint, filled, 1, probe, timeout).await?;
    let before = settle(ctx).await?;
    let files_before = ctx.server.open_files()? as i64;
    let consumers = load::connect_many(&ctx.endpoint, n).await?;
    tokio::time::sleep(ctx.options.settle).await;
    let with_connections = ctx.server.memory()?;
    let server_files_added = ctx.server.open_files()? as i64 - files_before;
    let held = load::subscribe_idle(consumers, &load::from_earliest(topic)).await?;
    tokio::time::sleep(ctx.options.settle).await;
    let with_subscriptions = ctx.server.memory()?;
    let cpu = ctx.server.cpu_seconds()?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_CPU_WINDOW).await;
    let cores = (ctx.server.cpu_seconds()? - cpu) / started.elapsed().as_secs_f64();
    let budgets_with_subscriptions = budgets(&ctx.options.metrics).await?;
    let probe_with_subscriptions = load::read(&ctx.endpoint, filled, 1, probe, timeout).await?;
    drop(held);
    for (probe, when) in [
        (&probe_alone, "alone"),
        (&probe_with_subscriptions, "beside idle subscriptions"),
    ] {
        ctx.errors.extend(
            probe
                .errors
                .iter()
                .map(|e| format!("idle, probe reader {when}: {e}")),
        );
    }
    let per = |a: &Memory, b: &Memory| (a.rss_bytes as f64 - b.rss_bytes as f64) / n as f64;
    let idle = Idle {
        units: n,
        before,
        with_connections,
        with_subscriptions,
        server_files_added,
        per_connection_bytes: per(&with_connections, &before),
        per_subscription_bytes: per(&with_subscriptions, &with_connections),
        subscriptions_server_cpu_cores: cores,
        budgets_with_subscriptions,
        probe_alone,
        probe_with_subscriptions,
    };
    progress(&format!(
        "idle: {n} connections +{} ({:.1} KiB each), {n} subscriptions +{} ({:.1} KiB each), \
         server CPU {cores:.2} cores, gateway budget used {}; one reader's first response \
         {:.0} ms alone, {:.0} ms beside them",
        mib(with_connections.rss_bytes.saturating_sub(before.rss_bytes)),
        idle.per_connection_bytes / 1024.0,
        mib(with_subscriptions
            .rss_bytes
            .saturating_sub(with_connections.rss_bytes)),
        idle.per_subscription_bytes / 1024.0,
        mib(budgets_with_subscriptions.gateway.used_bytes),
        idle.probe_alone.first_response_max_ms,
        idle.probe_with_subscriptions.first_response_max_ms,
    ));
    Ok(idle)
}

/// Writes `records` records round robin over the topic's partitions with
/// one SDK producer and waits for every acknowledgement.
async fn fill(ctx: &Ctx, topic: &str, records: u64) -> anyhow::Result<Fill> {
    let started = Instant::now();
    let producer = ctx.client.producer(ProducerConfig::default());
    let partitions = u64::from(ctx.options.partitions.max(1));
    let mut deliveries = Vec::with_capacity(records as usize);
    for i in 0..records {
        let record = Record {
            value: Some(ctx.payload.clone()),
            ..Record::default()
        };
        let partition = Some((i % partitions) as u32);
        deliveries.push(
            producer
                .send(topic, record, partition)
                .await
                .with_context(|| format!("filling {topic}"))?,
        );
        if (i + 1) % (records / 10).max(1) == 0 {
            progress(&format!("filling {topic}: {} of {records} records", i + 1));
        }
    }
    producer.close().await;
    for d in deliveries {
        d.await.with_context(|| format!("filling {topic}"))?;
    }
    let fill = Fill {
        topic: topic.to_string(),
        records,
        bytes: records * ctx.options.record_bytes as u64,
        seconds: started.elapsed().as_secs_f64(),
    };
    progress(&format!(
        "filled {topic}: {} in {:.1} s",
        mib(fill.bytes),
        fill.seconds
    ));
    Ok(fill)
}

async fn step(ctx: &mut Ctx, plan: Plan, topic: &str, produce_topic: &str) -> anyhow::Result<Step> {
    let memory_before = settle(ctx).await?;
    progress(&format!(
        "{} subscribers ({} stalled, {} active), {} producers: VmRSS before {}",
        plan.subscribers,
        plan.stalled,
        plan.active,
        plan.producers,
        mib(memory_before.rss_bytes)
    ));
    let mut rounds = Vec::new();
    for round in 1..=ctx.options.rounds.max(1) {
        if round > 1 {
            settle(ctx).await?;
        }
        let baseline = phase(ctx, plan, round, topic, produce_topic, false).await?;
        settle(ctx).await?;
        let loaded = phase(ctx, plan, round, topic, produce_topic, true).await?;
        let throughput_ratio = loaded.readers.records_per_s / baseline.readers.records_per_s;
        progress(&format!(
            "{} subscribers, round {round}: throughput with stalled subscribers / without = \
             {throughput_ratio:.2}",
            plan.subscribers
        ));
        rounds.push(Round {
            baseline,
            loaded,
            throughput_ratio,
        });
    }
    Ok(Step {
        plan,
        memory_before,
        summary: Summary::of(&rounds),
        rounds,
    })
}

async fn phase(
    ctx: &mut Ctx,
    plan: Plan,
    round: usize,
    topic: &str,
    produce_topic: &str,
    with_stalled: bool,
) -> anyhow::Result<Phase> {
    let name = if with_stalled { "loaded" } else { "baseline" };
    let label = format!("{} subscribers, round {round}, {name}", plan.subscribers);
    let o = ctx.options.clone();
    let peak_reset = ctx.server.reset_peak();
    let sampler = load::Sampler::start(ctx.server.clone(), o.metrics.clone());
    let (held, stalled) = if with_stalled && plan.stalled > 0 {
        let (held, first_responses) =
            load::open_stalled(&ctx.endpoint, topic, plan.stalled, o.first_response_timeout)
                .await?;
        if first_responses.answered < first_responses.opened {
            ctx.errors.push(format!(
                "{label}: {} of {} stalled subscribers got no first response within {:?}",
                first_responses.opened - first_responses.answered,
                first_responses.opened,
                o.first_response_timeout
            ));
        }
        ctx.errors.extend(
            first_responses
                .errors
                .iter()
                .map(|e| format!("{label}, stalled: {e}")),
        );
        tokio::time::sleep(o.settle).await;
        let state = StalledState {
            memory: ctx.server.memory()?,
            budgets: budgets(&o.metrics).await?,
            first_responses,
        };
        progress(&format!(
            "{label}: {} stalled open ({} answered, first response p50 {:.0} ms, max {:.0} ms): \
             VmRSS {}, gateway budget used {}",
            held.len(),
            state.first_responses.answered,
            state.first_responses.p50_ms,
            state.first_responses.max_ms,
            mib(state.memory.rss_bytes),
            mib(state.budgets.gateway.used_bytes)
        ));
        (Some(held), Some(state))
    } else {
        (None, None)
    };
    let producers = if plan.producers > 0 {
        Some(
            load::Producers::start(
                &o.gateway,
                produce_topic,
                plan.producers,
                o.producer_rate,
                ctx.payload.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let me = Process::current()?;
    let (server_cpu, own_cpu) = (ctx.server.cpu_seconds()?, me.cpu_seconds()?);
    let started = Instant::now();
    let per_reader = records_per_reader(o.records, plan.active);
    let readers = load::read(
        &ctx.endpoint,
        topic,
        plan.active,
        per_reader,
        o.phase_timeout,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu_cores = (ctx.server.cpu_seconds()? - server_cpu) / seconds;
    let bench_cpu_cores = (me.cpu_seconds()? - own_cpu) / seconds;
    let memory_end = ctx.server.memory()?;
    let produced = match producers {
        Some(p) => Some(p.stop().await),
        None => None,
    };
    let watched = sampler.stop().await;
    drop(held);
    ctx.errors.extend(
        readers
            .errors
            .iter()
            .map(|e| format!("{label}, readers: {e}")),
    );
    if let Some(p) = &produced {
        ctx.errors
            .extend(p.errors.iter().map(|e| format!("{label}, producers: {e}")));
        if p.failed > 0 {
            ctx.errors
                .push(format!("{label}: {} produced records failed", p.failed));
        }
    }
    ctx.errors.extend(
        watched
            .errors
            .iter()
            .map(|e| format!("{label}, sampling: {e}")),
    );
    let peak_rss_bytes = if peak_reset {
        memory_end.peak_rss_bytes.max(watched.max_rss_bytes)
    } else {
        watched.max_rss_bytes
    };
    progress(&format!(
        "{label}: {} readers read {:.0} records/s ({:.1} MiB/s), {} finished in {:.1} s \
         (first response p50 {:.0} ms, max {:.0} ms); peak VmRSS {}, gateway budget used at \
         most {} ({} waiters at most){}",
        readers.readers,
        readers.records_per_s,
        readers.mib_per_s,
        readers.finished,
        readers.seconds,
        readers.first_response_p50_ms,
        readers.first_response_max_ms,
        mib(peak_rss_bytes),
        mib(watched.gateway_max_used_bytes),
        watched.gateway_max_waiters,
        produced.as_ref().map_or(String::new(), |p| format!(
            "; producers {:.0} records/s of {:.0}",
            p.records_per_s, p.target_records_per_s
        )),
    ));
    Ok(Phase {
        stalled,
        readers,
        produced,
        memory_end,
        peak_rss_bytes,
        peak_reset,
        watched,
        server_cpu_cores,
        bench_cpu_cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_a_comma_separated_list() {
        assert_eq!(parse_counts("10,100,1000"), Ok(vec![10, 100, 1000]));
        assert_eq!(parse_counts(" 10, 1_000 "), Ok(vec![10, 1000]));
        assert!(
            parse_counts("10,,100")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_counts("1").unwrap_err().contains("at least 2"));
        assert!(parse_counts("ten").is_err());
    }

    #[test]
    fn half_the_subscribers_stall_and_one_producer_per_ten() {
        assert_eq!(
            Plan::new(1000, None, 100),
            Plan {
                subscribers: 1000,
                stalled: 500,
                active: 500,
                producers: 100,
            }
        );
        // An odd count has one more reader than stalled subscribers.
        let p = Plan::new(11, None, 100);
        assert_eq!((p.stalled, p.active, p.producers), (5, 6, 1));
        // A fixed number of readers beside half of the count stalled.
        let p = Plan::new(100, Some(4), 100);
        assert_eq!((p.subscribers, p.stalled, p.active), (54, 50, 4));
        // No rate, no producers.
        assert_eq!(Plan::new(100, None, 0).producers, 0);
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![0.9, 0.5]), 0.9);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn the_records_of_a_phase_are_split_between_readers() {
        assert_eq!(records_per_reader(1_000_000, 5), 200_000);
        assert_eq!(records_per_reader(1_000_000, 3), 333_334);
        assert_eq!(records_per_reader(10, 0), 10);
    }
}
