//! Shared test helpers: a dev instance in this process on ephemeral ports.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use streambus::dev::{self, DevEndpoints, DevListeners};
use streambus::settings::Settings;
use tokio::sync::oneshot;

/// A running in-process dev instance.
pub struct Dev {
    pub endpoints: DevEndpoints,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Dev {
    /// Starts a dev instance storing under `dir` and waits until ready.
    pub async fn start(dir: &Path) -> Dev {
        Dev::start_with(dir, |_| {}).await
    }

    /// [`Dev::start`] with settings changed by `tweak`.
    pub async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Dev {
        let listeners = DevListeners::ephemeral().await.unwrap();
        let endpoints = listeners.endpoints().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let dir = dir.to_path_buf();
        let mut settings = Settings::default();
        settings.controller.node_lease_ms = 3_000;
        tweak(&mut settings);
        let task = tokio::spawn(async move {
            dev::run(
                settings,
                listeners,
                Some(&dir),
                async {
                    let _ = stop_rx.await;
                },
                move |_| {
                    let _ = ready_tx.send(());
                },
            )
            .await
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .expect("dev instance ready within 30 s")
            .expect("dev instance stopped before it was ready");
        Dev {
            endpoints,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The public gateway address.
    pub fn gateway(&self) -> String {
        self.endpoints.gateway.to_string()
    }

    /// Drains and stops the instance; panics if any role failed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("dev instance stops within 30 s")
                .expect("dev task")
                .expect("dev instance shut down cleanly");
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an unlabelled metric on the dev instance's `/metrics`.
pub fn metric(http: impl std::fmt::Display, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(http.to_string()).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// Every sample of a labelled metric on the dev instance's `/metrics`:
/// (labels, value).
pub fn metric_samples(http: impl std::fmt::Display, name: &str) -> Vec<(String, f64)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(http.to_string()).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}{{")))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}
