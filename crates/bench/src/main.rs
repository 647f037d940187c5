//! The `streambus-bench` binary: `run`, `table`, `workload` and
//! `subscribers`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use streambus_bench::driver::{self, Endpoints};
use streambus_bench::report::StoredReport;
use streambus_bench::runner::{self, RunOptions};
use streambus_bench::subscribers;
use streambus_bench::table;
use streambus_bench::workload::{Acks, Codec, Durability, KeyDistribution, Payload, Workload};

/// Benchmarks StreamBus, Apache Kafka and NATS JetStream with the same
/// workload and the same measurement code.
#[derive(Debug, Parser)]
#[command(name = "streambus-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a workload against one system and prints (and optionally
    /// writes) the results.
    Run {
        /// The system: streambus, kafka or nats.
        #[arg(long, short)]
        driver: String,
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Writes the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The server's process id: its CPU time is measured beside this
        /// process's own (CPU seconds per million messages).
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Prints the side-by-side table of reports of one workload, with
    /// ratios against Kafka.
    Table {
        /// The heading of the table.
        #[arg(long, default_value = "results")]
        title: String,
        /// Writes the Markdown table here (else prints it).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Writes the figures and ratios as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// JSON reports written by `run --json`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Prints the effective workload (file plus flags) as TOML.
    Workload {
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Measures a StreamBus server's resident memory against the number of
    /// concurrent subscribers, half of them stalled, and the throughput of
    /// the others against the same readers without stalled subscribers.
    Subscribers(SubscribersArgs),
    /// Consumer groups: offset commits per second across many groups, the
    /// rebalance when one of three members leaves, and a group member's
    /// read throughput against a plain subscription's.
    Groups(GroupsArgs),
}

#[derive(Debug, Args)]
struct GroupsArgs {
    /// The StreamBus gateway.
    #[arg(long, default_value = "127.0.0.1:7400")]
    gateway: String,
    /// Groups committing in the commit phase.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Commits in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long the commit phase runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    commit_duration: Duration,
    /// Records read in each throughput round.
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Partitions of the commit and throughput topics.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Rounds of the rebalance and throughput phases (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One flag value holding a list (`10,100,1000`): clap's derive takes a
/// field spelled `Vec<_>` as a flag given several times.
type Counts = Vec<usize>;

#[derive(Debug, Args)]
struct SubscribersArgs {
    /// The StreamBus gateway.
    #[arg(long, default_value = "127.0.0.1:7400")]
    gateway: String,
    /// The server's HTTP listener (`/metrics`), as `streambus dev` prints it.
    #[arg(long, default_value = "127.0.0.1:7480")]
    metrics: String,
    /// The pid of the server process whose memory is measured.
    #[arg(long)]
    server_pid: u32,
    /// Concurrent subscribers per step, half of them stalled.
    #[arg(long, value_parser = subscribers::parse_counts, default_value = "10,100,1000")]
    counts: Counts,
    /// Active readers per step (default: the half that is not stalled).
    #[arg(long)]
    active: Option<usize>,
    /// Records the active readers of a phase read together, split evenly
    /// between them.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes of records to write to the topic first.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    fill_bytes: u64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Partitions of the topics.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records per second of each producer (one per ten subscribers, at
    /// least one); 0: no producers.
    #[arg(long, default_value_t = 100)]
    producer_rate: u32,
    /// Idle connections, then idle subscriptions on them, to measure what
    /// each costs; 0: skip.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Pause before each memory reading, once the gateway's memory budget
    /// is unused again.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// How long a stalled subscriber waits for its one response.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    first_response_timeout: Duration,
    /// How long the readers of one phase may take.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
    /// Rounds per count, each a baseline phase and then one with the
    /// stalled subscribers; rates and ratios are the rounds' medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WorkloadArgs {
    /// A workload file (see bench/workloads/); flags override its fields.
    #[arg(long, short)]
    workload: Option<PathBuf>,
    /// Name in reports.
    #[arg(long)]
    name: Option<String>,
    /// Topics.
    #[arg(long)]
    topics: Option<u32>,
    /// Partitions per topic.
    #[arg(long)]
    partitions: Option<u32>,
    /// Payload bytes per message.
    #[arg(long)]
    message_size: Option<usize>,
    /// Producers per topic.
    #[arg(long)]
    producers: Option<u32>,
    /// Consumers per topic.
    #[arg(long)]
    consumers: Option<u32>,
    /// Messages per second across producers; 0 = maximum.
    #[arg(long)]
    rate: Option<u64>,
    /// Measured phase, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// all, leader or none.
    #[arg(long, value_parser = parse_acks)]
    acks: Option<Acks>,
    /// Replication factor.
    #[arg(long)]
    replication_factor: Option<u32>,
    /// fsync or page-cache.
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Producer batch size in bytes.
    #[arg(long)]
    batch_bytes: Option<usize>,
    /// Producer linger, e.g. 1ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    linger: Option<Duration>,
    /// Unacknowledged bytes per producer.
    #[arg(long)]
    max_outstanding_bytes: Option<usize>,
    /// Batches of one partition in flight per producer, 1 to 5.
    #[arg(long)]
    max_in_flight_per_partition: Option<usize>,
    /// none or random.
    #[arg(long, value_parser = parse_keys)]
    keys: Option<KeyDistribution>,
    /// Producer compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, value_parser = parse_codec)]
    compression: Option<Codec>,
    /// Message payloads: random (incompressible) or json (JSON-like events).
    #[arg(long, value_parser = parse_payload)]
    payload: Option<Payload>,
    /// Interval between printed lines, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    report_interval: Option<Duration>,
}

#[derive(Debug, Args)]
struct EndpointArgs {
    /// StreamBus gateway.
    #[arg(
        long,
        env = "STREAMBUS_BENCH_STREAMBUS",
        default_value = "127.0.0.1:7400"
    )]
    streambus: String,
    /// CA (PEM) of a StreamBus gateway on TLS; turns TLS on
    #[arg(long, value_name = "FILE")]
    streambus_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a StreamBus gateway that asks for one
    #[arg(long, value_name = "FILE", requires = "streambus_tls_key")]
    streambus_tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(long, value_name = "FILE", requires = "streambus_tls_cert")]
    streambus_tls_key: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMBUS_BENCH_KAFKA", default_value = "127.0.0.1:9092")]
    kafka: String,
    /// NATS server.
    #[arg(long, env = "STREAMBUS_BENCH_NATS", default_value = "127.0.0.1:4222")]
    nats: String,
    /// NATS HTTP monitoring (to read its fsync setting).
    #[arg(
        long,
        env = "STREAMBUS_BENCH_NATS_MONITOR",
        default_value = "127.0.0.1:8222"
    )]
    nats_monitor: String,
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::ALL
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| format!("{s:?}: use none, gzip, snappy, lz4 or zstd"))
}

fn parse_payload(s: &str) -> Result<Payload, String> {
    [Payload::Random, Payload::Json]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("{s:?}: use random or json"))
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "all" | "-1" => Ok(Acks::All),
        "leader" | "1" => Ok(Acks::Leader),
        "none" | "0" => Ok(Acks::None),
        _ => Err(format!("{s:?}: use all, leader or none")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "page-cache" => Ok(Durability::PageCache),
        _ => Err(format!("{s:?}: use fsync or page-cache")),
    }
}

fn parse_keys(s: &str) -> Result<KeyDistribution, String> {
    match s {
        "none" => Ok(KeyDistribution::None),
        "random" => Ok(KeyDistribution::Random),
        _ => Err(format!("{s:?}: use none or random")),
    }
}

impl WorkloadArgs {
    fn resolve(&self) -> anyhow::Result<Workload> {
        let mut w = match &self.workload {
            Some(path) => Workload::load(path)?,
            None => Workload::default(),
        };
        macro_rules! set {
            ($($flag:ident => $field:ident),* $(,)?) => {
                $(if let Some(v) = &self.$flag { w.$field = v.clone(); })*
            };
        }
        set!(
            name => name,
            topics => topics,
            partitions => partitions_per_topic,
            message_size => message_size,
            producers => producers_per_topic,
            consumers => consumers_per_topic,
            rate => producer_rate,
            duration => duration,
            warmup => warmup,
            acks => acks,
            replication_factor => replication_factor,
            durability => durability,
            batch_bytes => batch_max_bytes,
            linger => linger,
            max_outstanding_bytes => max_outstanding_bytes,
            max_in_flight_per_partition => max_in_flight_per_partition,
            keys => key_distribution,
            compression => compression,
            payload => payload,
            report_interval => report_interval,
        );
        w.validate()?;
        Ok(w)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            driver,
            workload,
            json,
            server_pid,
            endpoints,
        } => run(&driver, &workload, json, server_pid, endpoints),
        Command::Table {
            title,
            markdown,
            json,
            reports,
        } => table_command(&title, markdown, json, &reports),
        Command::Workload { workload } => workload.resolve().map(|w| print!("{}", w.to_toml())),
        Command::Subscribers(args) => subscribers_command(args),
        Command::Groups(args) => groups_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streambus-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    driver: &str,
    workload: &WorkloadArgs,
    json: Option<PathBuf>,
    server_pid: Option<u32>,
    e: EndpointArgs,
) -> anyhow::Result<()> {
    let workload = workload.resolve()?;
    let streambus_tls = if e.streambus_tls_ca.is_some() || e.streambus_tls_cert.is_some() {
        Some(streambus_client::TlsOptions::from_files(
            e.streambus_tls_ca.as_deref(),
            e.streambus_tls_cert.as_deref(),
            e.streambus_tls_key.as_deref(),
        )?)
    } else {
        None
    };
    let endpoints = Endpoints {
        streambus: e.streambus,
        streambus_tls,
        kafka: e.kafka,
        nats: e.nats,
        nats_monitor: e.nats_monitor,
    };
    let driver: Arc<dyn driver::Driver> = Arc::from(driver::build(driver, &endpoints)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = RunOptions {
        quiet: false,
        server_pid,
    };
    let report = runtime.block_on(runner::run(driver, &workload, options))?;
    println!();
    for line in report.results.summary_lines() {
        println!("{line}");
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if report.results.measured.acked == 0 {
        anyhow::bail!(
            "no message was acknowledged: {}",
            report
                .errors
                .first()
                .map_or("no error reported", String::as_str)
        );
    }
    Ok(())
}

fn table_command(
    title: &str,
    markdown: Option<PathBuf>,
    json: Option<PathBuf>,
    paths: &[PathBuf],
) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: StoredReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a streambus-bench report", path.display()))?;
        reports.push(report);
    }
    let (md, value) = table::compare(title, &reports);
    match markdown {
        Some(path) => {
            std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{md}"),
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn groups_command(a: GroupsArgs) -> anyhow::Result<()> {
    let options = streambus_bench::groups::Options {
        gateway: a.gateway,
        groups: a.groups.max(1),
        concurrency: a.concurrency.max(1),
        commit_duration: a.commit_duration,
        records: a.records,
        record_bytes: a.record_bytes,
        partitions: a.partitions.max(1),
        rounds: a.rounds.max(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(streambus_bench::groups::run(options))?;
    print!("{}", report.markdown());
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn subscribers_command(a: SubscribersArgs) -> anyhow::Result<()> {
    let options = subscribers::Options {
        gateway: a.gateway,
        metrics: a.metrics,
        server_pid: a.server_pid,
        counts: a.counts,
        active: a.active,
        records: a.records,
        fill_bytes: a.fill_bytes,
        record_bytes: a.record_bytes,
        partitions: a.partitions,
        producer_rate: a.producer_rate,
        idle: a.idle,
        settle: a.settle,
        first_response_timeout: a.first_response_timeout,
        phase_timeout: a.phase_timeout,
        rounds: a.rounds,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(subscribers::run(options))?;
    print!("{}", report.markdown());
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nreport: {}", path.display());
    }
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} problem(s) during the run (listed above)",
        report.errors.len()
    );
    Ok(())
}
