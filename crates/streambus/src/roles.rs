//! `streambus controller | storage-node | gateway`: one role per process,
//! each with its own HTTP endpoint for health, readiness and metrics.

use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use streambus_service::{HttpState, Readiness};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dev::wait_true;
use crate::settings::Settings;

/// The server roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Raft metadata authority.
    Controller,
    /// Partition replicas on local disk.
    StorageNode,
    /// The public gRPC API.
    Gateway,
}

/// Runs one role until SIGINT/SIGTERM, then drains and returns.
pub async fn run(role: Role, settings: Settings) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let mut readiness = Readiness::new();
    let http_listener = TcpListener::bind(settings.http.listen_addr)
        .await
        .with_context(|| format!("cannot bind the http address {}", settings.http.listen_addr))?;
    let (stop, stopped) = watch::channel(false);
    let shutdown = {
        let stop = stop.clone();
        async move {
            streambus_service::shutdown::signal().await;
            let _ = stop.send(true);
        }
    };
    tokio::spawn(shutdown);

    let server = match role {
        Role::Controller => {
            let metrics = streambus_controller::Metrics::new(&mut registry);
            let ready = readiness.component("controller");
            let config = settings.controller.clone();
            let listener = TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| {
                    format!("cannot bind the controller address {}", config.listen_addr)
                })?;
            streambus_service::tls::warn_if_exposed(config.listen_addr, "controller");
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let options = streambus_controller::ServeOptions {
                    ready: Some(ready),
                    metrics: Some(Arc::new(metrics)),
                    ..streambus_controller::ServeOptions::default()
                };
                streambus_controller::serve_with_options(
                    config,
                    listener,
                    wait_true(stopped),
                    options,
                )
                .await
                .map_err(anyhow::Error::from)
            })
        }
        Role::StorageNode => {
            let metrics = streambus_storage_node::Metrics::new(&mut registry);
            let ready = readiness.component("storage-node");
            let config = settings.storage_node.clone();
            let listener = TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| {
                    format!(
                        "cannot bind the storage node address {}",
                        config.listen_addr
                    )
                })?;
            streambus_service::tls::warn_if_exposed(config.listen_addr, "storage node");
            let stopped = stopped.clone();
            tokio::spawn(async move {
                streambus_storage_node::serve_with_listener(
                    config,
                    listener,
                    metrics,
                    Some(ready),
                    wait_true(stopped),
                )
                .await
                .map_err(anyhow::Error::from)
            })
        }
        Role::Gateway => {
            let metrics = streambus_gateway::Metrics::new(&mut registry);
            let ready = readiness.component("gateway");
            let config = settings.gateway.clone();
            let listener = TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| {
                    format!("cannot bind the gateway address {}", config.listen_addr)
                })?;
            streambus_service::tls::warn_if_exposed(config.listen_addr, "gateway");
            let stopped = stopped.clone();
            tokio::spawn(async move {
                streambus_gateway::serve_with_listener(
                    config,
                    listener,
                    metrics,
                    Some(ready),
                    wait_true(stopped),
                )
                .await
                .map_err(anyhow::Error::from)
            })
        }
    };
    let (stop_http, http_stopped) = watch::channel(false);
    let http = tokio::spawn(streambus_service::http::serve_with(
        http_listener,
        HttpState {
            registry: Arc::new(registry),
            readiness,
        },
        settings.http.tls(),
        wait_true(http_stopped),
    ));
    let result = server.await.context("server task")?;
    let _ = stop.send(true);
    let _ = stop_http.send(true);
    let _ = http.await;
    result
}
