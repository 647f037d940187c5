//! The operator process: HTTP endpoints, leader election, and the two
//! reconcilers while this replica leads.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use streambus_service::{HttpState, Readiness};
use tokio::sync::watch;

use crate::context::{Context, Settings};
use crate::lease::Election;
use crate::metrics::Metrics;

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: Settings,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_addr: std::net::SocketAddr,
    /// The Lease's namespace and name.
    pub lease_namespace: String,
    pub lease_name: String,
}

/// Runs until SIGTERM/SIGINT (exit 0) or until leadership is lost (an
/// error: the process must exit so that it never reconciles beside a new
/// leader).
pub async fn run(options: Options) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot configure the Kubernetes client: {e}"))?;
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut readiness = Readiness::new();
    let api_ready = readiness.component("kubernetes-api");
    let listener = tokio::net::TcpListener::bind(options.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "http endpoints listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let http = tokio::spawn(streambus_service::http::serve(
        listener,
        HttpState {
            registry: Arc::new(registry),
            readiness,
        },
        http_stop,
    ));

    let election = Election {
        namespace: options.lease_namespace.clone(),
        name: options.lease_name.clone(),
        identity: options.settings.instance.clone(),
        lease_duration: Duration::from_secs(15),
        retry: Duration::from_secs(2),
    };
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let elector = tokio::spawn(election.run(client.clone(), leader_tx, api_ready, stop_rx.clone()));

    let ctx = Arc::new(Context::new(client, options.settings, metrics.clone()));
    let signal = streambus_service::shutdown::signal();
    tokio::pin!(signal);
    tokio::pin!(elector);
    tracing::info!(lease = %options.lease_name, "waiting for the leader lease");
    let outcome: anyhow::Result<()> = tokio::select! {
        () = &mut signal => Ok(()),
        r = &mut elector => Err(anyhow::anyhow!(elector_outcome(r))),
        // The guard `wait_for` returns must not outlive this line: the
        // elector writes the channel at every renewal.
        r = async { leader_rx.wait_for(|l| *l).await.map(|_| ()) } => match r {
            Ok(_) => {
                metrics.leader.set(1);
                tracing::info!("leading: reconciling StreamBusCluster and StreamBusTopic resources");
                let stop = |rx: watch::Receiver<bool>| async move {
                    let mut rx = rx;
                    let _ = rx.wait_for(|s| *s).await;
                };
                let topics = tokio::spawn(crate::topic::run(ctx.clone(), stop(stop_rx.clone())));
                let clusters = tokio::spawn(crate::cluster::run(ctx.clone(), stop(stop_rx.clone())));
                let outcome = tokio::select! {
                    () = &mut signal => Ok(()),
                    r = &mut elector => Err(anyhow::anyhow!(elector_outcome(r))),
                };
                let _ = stop_tx.send(true);
                let _ = topics.await;
                let _ = clusters.await;
                metrics.leader.set(0);
                outcome
            }
            Err(_) => Err(anyhow::anyhow!("leader election stopped")),
        },
    };
    let _ = stop_tx.send(true);
    if outcome.is_ok() {
        // Releases the lease so a standby takes over at once.
        let _ = elector.await;
    }
    let _ = http.await;
    outcome
}

fn elector_outcome(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "leader election stopped".to_string(),
        Ok(Err(e)) => format!("lost leadership: {e}"),
        Err(e) => format!("leader election failed: {e}"),
    }
}
