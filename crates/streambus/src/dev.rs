//! `streambus dev`: a controller, a storage node and a gateway in one
//! process, talking gRPC to each other over loopback exactly as they do
//! across machines.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use streambus_service::{HttpState, Readiness};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::settings::Settings;

/// Pre-bound listeners for every endpoint of a dev instance.
pub struct DevListeners {
    /// Controller gRPC.
    pub controller: TcpListener,
    /// Storage node gRPC.
    pub storage: TcpListener,
    /// Gateway gRPC (the public API).
    pub gateway: TcpListener,
    /// HTTP: health, readiness, metrics.
    pub http: TcpListener,
}

/// Where a dev instance listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevEndpoints {
    /// Controller gRPC.
    pub controller: SocketAddr,
    /// Storage node gRPC.
    pub storage: SocketAddr,
    /// Gateway gRPC.
    pub gateway: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
}

impl DevListeners {
    /// Binds the addresses in `settings`.
    pub async fn bind(settings: &Settings) -> anyhow::Result<DevListeners> {
        async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the {what} address {addr}"))?;
            if what != "http" {
                streambus_service::tls::warn_if_exposed(addr, what);
            }
            Ok(listener)
        }
        Ok(DevListeners {
            controller: bind(settings.controller.listen_addr, "controller").await?,
            storage: bind(settings.storage_node.listen_addr, "storage node").await?,
            gateway: bind(settings.gateway.listen_addr, "gateway").await?,
            http: bind(settings.http.listen_addr, "http").await?,
        })
    }

    /// Binds every endpoint to an ephemeral 127.0.0.1 port (tests).
    pub async fn ephemeral() -> anyhow::Result<DevListeners> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(DevListeners {
            controller: TcpListener::bind(any).await?,
            storage: TcpListener::bind(any).await?,
            gateway: TcpListener::bind(any).await?,
            http: TcpListener::bind(any).await?,
        })
    }

    /// The bound addresses.
    pub fn endpoints(&self) -> anyhow::Result<DevEndpoints> {
        Ok(DevEndpoints {
            controller: self.controller.local_addr()?,
            storage: self.storage.local_addr()?,
            gateway: self.gateway.local_addr()?,
            http: self.http.local_addr()?,
        })
    }
}

/// Points every role of `settings` at the others and at `data_dir`.
pub fn wire(settings: &mut Settings, endpoints: &DevEndpoints, data_dir: Option<&Path>) {
    let controller = endpoints.controller.to_string();
    settings.controller.listen_addr = endpoints.controller;
    settings.controller.advertised_addr = controller.clone();
    settings.controller.peers.clear();
    settings.controller.join = false;
    settings.storage_node.listen_addr = endpoints.storage;
    settings.storage_node.advertised_addr = endpoints.storage.to_string();
    settings.storage_node.controllers = vec![controller.clone()];
    settings.gateway.listen_addr = endpoints.gateway;
    settings.gateway.controllers = vec![controller];
    if let Some(dir) = data_dir {
        settings.controller.data_dir = dir.join("controller");
        settings.storage_node.data_dir = dir.join("storage");
    }
}

/// Runs a dev instance until `shutdown` completes, then drains in order:
/// gateway (finish client requests), storage node (flush and fsync),
/// controller. `on_ready` is called once every role is ready.
pub async fn run(
    mut settings: Settings,
    listeners: DevListeners,
    data_dir: Option<&Path>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&DevEndpoints) + Send + 'static,
) -> anyhow::Result<()> {
    let endpoints = listeners.endpoints()?;
    wire(&mut settings, &endpoints, data_dir);

    let mut registry = Registry::default();
    let controller_metrics = streambus_controller::Metrics::new(&mut registry);
    let storage_metrics = streambus_storage_node::Metrics::new(&mut registry);
    let gateway_metrics = streambus_gateway::Metrics::new(&mut registry);
    let mut readiness = Readiness::new();
    let controller_ready = readiness.component("controller");
    let storage_ready = readiness.component("storage-node");
    let gateway_ready = readiness.component("gateway");

    // Shutdown cascades: signal -> gateway -> storage node -> controller.
    let (stop_gateway, gateway_stop) = watch::channel(false);
    let (stop_storage, storage_stop) = watch::channel(false);
    let (stop_controller, controller_stop) = watch::channel(false);
    let (stop_http, http_stop) = watch::channel(false);

    let controller = spawn_controller(
        settings.controller.clone(),
        listeners.controller,
        wait_true(controller_stop),
        streambus_controller::ServeOptions {
            ready: Some(controller_ready),
            metrics: Some(Arc::new(controller_metrics)),
            ..streambus_controller::ServeOptions::default()
        },
    )?;
    let storage = tokio::spawn(streambus_storage_node::serve_with_listener(
        settings.storage_node.clone(),
        listeners.storage,
        storage_metrics,
        Some(storage_ready),
        wait_true(storage_stop),
    ));
    let gateway = tokio::spawn(streambus_gateway::serve_with_listener(
        settings.gateway.clone(),
        listeners.gateway,
        gateway_metrics,
        Some(gateway_ready),
        wait_true(gateway_stop),
    ));
    let http = tokio::spawn(streambus_service::http::serve_with(
        listeners.http,
        HttpState {
            registry: Arc::new(registry),
            readiness: readiness.clone(),
        },
        settings.http.tls(),
        wait_true(http_stop),
    ));

    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            readiness.wait_ready().await;
            on_ready(&endpoints);
        });
    }

    // Stop on the signal, or as soon as any role stops on its own (a
    // failure: bind, data directory, ...), then drain in order.
    let (mut gateway, mut storage, mut controller) = (gateway, storage, controller);
    let (mut gateway_result, mut storage_result, mut controller_result) = (None, None, None);
    tokio::select! {
        () = shutdown => {}
        r = &mut gateway => gateway_result = Some(r),
        r = &mut storage => storage_result = Some(r),
        r = &mut controller => controller_result = Some(r),
    }
    let _ = stop_gateway.send(true);
    let gateway_result = match gateway_result {
        Some(r) => r,
        None => gateway.await,
    };
    let _ = stop_storage.send(true);
    let storage_result = match storage_result {
        Some(r) => r,
        None => storage.await,
    };
    let _ = stop_controller.send(true);
    let controller_result = match controller_result {
        Some(r) => r,
        None => controller.await,
    };
    let _ = stop_http.send(true);
    let _ = http.await;

    gateway_result.context("gateway task")?.context("gateway")?;
    storage_result
        .context("storage node task")?
        .context("storage node")?;
    controller_result
        .context("controller task")?
        .context("controller")?;
    Ok(())
}

/// Runs the controller on a runtime of its own, on its own thread: in one
/// process with a storage node and a gateway, a flood of their tasks (a
/// subscription to 10,000 partitions keeps that many fetches going) would
/// otherwise queue the controller's Raft ticks, commits and heartbeat
/// answers behind them, long enough for the node's lease to lapse and the
/// gateway to call the controller gone. The operating system shares the
/// CPU between threads; a runtime shares its workers between tasks in
/// turn.
fn spawn_controller(
    config: streambus_controller::ControllerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: streambus_controller::ServeOptions,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    // A listener belongs to the runtime that registered it.
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("controller".to_string())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("controller-worker")
                .enable_all()
                .build()
                .context("controller runtime")
                .and_then(|rt| {
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        streambus_controller::serve_with_options(
                            config, listener, shutdown, options,
                        )
                        .await
                        .map_err(anyhow::Error::from)
                    })
                });
            let _ = done.send(result);
        })
        .context("controller thread")?;
    Ok(tokio::spawn(async move {
        finished
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the controller thread ended")))
    }))
}

/// Completes when the flag turns true (or its sender is gone).
pub async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
