//! `streambus-operator`: run the operator, or print the CRDs.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use streambus_operator::context::Settings;
use streambus_operator::run::{Options, run};
use streambus_service::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "streambus-operator",
    version,
    about = "The StreamBus Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile StreamBusCluster and StreamBusTopic resources (the default)
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML
    Crds,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics
    #[arg(
        long,
        env = "STREAMBUS_OPERATOR_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: std::net::SocketAddr,
    /// How often every resource is reconciled without a change (drift made
    /// outside Kubernetes is corrected then), e.g. 60s, 5m
    #[arg(long, env = "STREAMBUS_OPERATOR_RESYNC", default_value = "60s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// A StreamBus cluster not managed by this operator, as NAME=GATEWAY
    /// (repeatable, or comma-separated in the environment): topics labelled
    /// streambus.io/cluster=NAME are managed through that gateway
    #[arg(long = "external-cluster", env = "STREAMBUS_OPERATOR_EXTERNAL_CLUSTERS", value_delimiter = ',', value_parser = parse_external)]
    external_clusters: Vec<(String, String)>,
    /// The gateway address of a StreamBusCluster this operator manages, as
    /// NAMESPACE/NAME=HOST:PORT, instead of its client Service (for an
    /// operator running outside the Kubernetes network, e.g. through a
    /// port-forward)
    #[arg(long = "cluster-gateway", env = "STREAMBUS_OPERATOR_CLUSTER_GATEWAYS", value_delimiter = ',', value_parser = parse_external)]
    cluster_gateways: Vec<(String, String)>,
    /// How long a restarted controller or storage node pod must have been
    /// ready before a rolling restart deletes the next one
    #[arg(long, env = "STREAMBUS_OPERATOR_RESTART_SETTLE", default_value = "10s", value_parser = humantime::parse_duration)]
    restart_settle: Duration,
    /// Namespace of the leader election Lease
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader election Lease
    #[arg(
        long,
        env = "STREAMBUS_OPERATOR_LEASE",
        default_value = "streambus-operator"
    )]
    lease_name: String,
    /// This replica's identity in the Lease and in events
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// text or json
    #[arg(long, env = "STREAMBUS_OPERATOR_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// A tracing filter (RUST_LOG wins when set)
    #[arg(
        long,
        env = "STREAMBUS_OPERATOR_LOG_LEVEL",
        default_value = "info,kube=warn"
    )]
    log_level: String,
}

fn parse_external(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, addr)) if !name.is_empty() && !addr.is_empty() => {
            Ok((name.to_string(), addr.to_string()))
        }
        _ => Err(format!("{s:?}: expected NAME=HOST:PORT")),
    }
}

fn instance_name(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "streambus-operator".to_string());
        format!("{host}-{}", std::process::id())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let a = match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::Crds => {
            print!("{}", streambus_operator::crd::crds_yaml());
            return ExitCode::SUCCESS;
        }
        Command::Run(a) => a,
    };
    telemetry::init(a.log_format, &a.log_level, None);
    let external_clusters: BTreeMap<String, String> = a.external_clusters.into_iter().collect();
    let options = Options {
        settings: Settings {
            resync: a.resync,
            external_clusters,
            cluster_gateways: a.cluster_gateways.into_iter().collect(),
            restart_settle: a.restart_settle,
            instance: instance_name(a.instance),
        },
        http_addr: a.http_addr,
        lease_namespace: a.lease_namespace,
        lease_name: a.lease_name,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
