//! The HTTP side of every service: `/healthz` (cheap liveness), `/readyz`
//! (serving and caught up) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Readiness of one or more components; ready when all are.
#[derive(Clone, Default)]
pub struct Readiness {
    parts: Vec<(String, watch::Receiver<bool>)>,
}

impl Readiness {
    /// No components yet (ready).
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Adds a component and returns the sender it reports through.
    pub fn component(&mut self, name: &str) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        self.parts.push((name.to_string(), rx));
        tx
    }

    /// Names of the components that are not ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter(|(_, rx)| !*rx.borrow())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether every component is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// Waits until every component is ready.
    pub async fn wait_ready(&self) {
        for (_, rx) in &self.parts {
            let mut rx = rx.clone();
            // An error means the sender is gone: the component stopped.
            let _ = rx.wait_for(|r| *r).await;
        }
    }
}

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Every metric of the process.
    pub registry: Arc<Registry>,
    /// What `/readyz` reports.
    pub readiness: Readiness,
}

/// The HTTP router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let waiting = state.readiness.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// Serves the HTTP endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// [`serve`], over TLS with `tls` when given (HTTPS; no client certificate
/// asked for, so probes and scrapers get in as they do over HTTP).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: HttpState,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let addr = listener.local_addr()?;
    let conns = crate::grpc::tls_incoming(
        listener,
        tls,
        crate::tls::Exposure::Http,
        prometheus_client::metrics::counter::Counter::default(),
    );
    let listener = TlsListener {
        conns: Box::pin(conns),
        addr,
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Connections that completed their TLS handshake, as axum's listener.
struct TlsListener {
    conns: futures::stream::BoxStream<'static, std::io::Result<crate::grpc::Conn>>,
    addr: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = crate::grpc::Conn;
    type Addr = Option<std::net::SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        use tonic::transport::server::Connected;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.connect_info().remote_addr;
                    return (conn, peer);
                }
                // Out of file descriptors and the like: try again shortly.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting an HTTPS connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                // The listener is gone: nothing more comes.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Some(self.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readyz_follows_components_and_metrics_render() {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("test_events", "events", counter.clone());
        counter.inc();
        let mut readiness = Readiness::new();
        let ready = readiness.component("storage");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = HttpState {
            registry: Arc::new(registry),
            readiness,
        };
        let server = tokio::spawn(serve(listener, state, async {
            let _ = stop_rx.await;
        }));

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("storage"));
        ready.send(true).unwrap();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("test_events_total 1"), "{m}");

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
