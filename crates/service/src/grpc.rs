//! Standard gRPC health checking and server reflection, mounted on every
//! service.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::server::Connected;
pub use tonic_health::server::HealthReporter;

/// Reflection over every StreamBus `.proto` (public and internal).
///
/// # Panics
/// Never in practice: the descriptor set is produced by the build script.
pub fn reflection_service() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(streambus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid")
}

/// A health service (`grpc.health.v1.Health`) and its reporter. The overall
/// status (`""`) starts NOT_SERVING; call [`set_serving`] when ready.
pub fn health_service() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Marks the whole server and the named services SERVING.
pub async fn set_serving(reporter: &HealthReporter, services: &[&str]) {
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for s in services {
        reporter
            .set_service_status(*s, tonic_health::ServingStatus::Serving)
            .await;
    }
}

/// Marks the whole server and the named services NOT_SERVING (draining).
pub async fn set_not_serving(reporter: &HealthReporter, services: &[&str]) {
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for s in services {
        reporter
            .set_service_status(*s, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// The connection stream for a tonic server on a pre-bound listener, with
/// `TCP_NODELAY` set on every accepted connection (without it, Nagle's
/// algorithm and delayed ACKs add tens of milliseconds to small writes).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Largest gRPC message StreamBus services send or accept (a fetch
/// response at most), on both the public and the internal APIs.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 stream flow-control window for StreamBus connections. The h2
/// default (64 KiB) makes a 256 KiB batch wait for several window updates
/// per hop; a larger window is still a hard bound per stream.
pub const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// HTTP/2 connection flow-control window (shared by a connection's streams).
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// The largest HTTP/2 frame a StreamBus server or internal client accepts
/// (`SETTINGS_MAX_FRAME_SIZE`; h2's default is 16 KiB): a 256 KiB batch
/// crosses a hop as one DATA frame rather than sixteen (docs/benchmarks.md).
pub const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// How often an idle HTTP/2 connection is pinged, by clients and servers.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a keepalive ping may go unanswered before the connection is
/// closed (a half-open connection is noticed within interval + timeout).
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long dialling a StreamBus peer may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Streams a peer may reset before the server accepted them, per
/// connection, before the server ends the connection (a defence against
/// rapid-reset floods). h2's default, 20, is far too low for a gateway
/// whose requests to thousands of partitions hit their deadline together:
/// one such burst ended the whole gateway-to-storage-node connection.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 4096;

/// Streams a client remembers after resetting them, so that frames the
/// peer had already sent for them are ignored. h2 counts a frame for a
/// reset stream it no longer remembers as an error of its own, and closes
/// the connection after [`MAX_LOCAL_ERROR_RESETS`] of them: with h2's
/// defaults, a subscription to 10,000 partitions ending at once killed the
/// gateway's connection to its storage node, and every request on it.
pub const RESET_STREAMS_REMEMBERED: usize = 16 * 1024;
/// Local error resets (see [`RESET_STREAMS_REMEMBERED`]) before h2 closes a
/// connection; between StreamBus services a burst of cancelled requests
/// is normal, not a misbehaving peer.
pub const MAX_LOCAL_ERROR_RESETS: usize = 64 * 1024;

/// A tonic server builder with StreamBus's transport settings: large
/// windows, `TCP_NODELAY`, and HTTP/2 keepalive so a vanished client's
/// connection (and whatever its streams hold) is released; and a server
/// span per call when tracing is on ([`crate::trace::ServerLayer`]).
pub fn server() -> tonic::transport::Server<
    tower::layer::util::Stack<crate::trace::ServerLayer, tower::layer::util::Identity>,
> {
    tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(crate::trace::ServerLayer)
}

/// A lazily connecting channel to a StreamBus service at `address`
/// (`host:port` or `http://host:port`), with the transport settings every
/// internal connection uses: connect timeout, `TCP_NODELAY`, large windows,
/// and HTTP/2 keepalive (also while idle), so a half-open connection fails
/// its calls within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] instead of
/// hanging them. Nothing is dialled until the first call.
///
/// When the process has TLS ([`crate::tls::install`]), the connection is
/// TLS as a cluster peer: the server must present a certificate from the
/// cluster CA valid for the address's host, and this process presents its
/// own (the files as they are when the connection is made).
pub fn channel(address: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    channel_with(address, crate::tls::installed().cloned())
}

/// [`channel`] with `tls` rather than the process's setup.
pub fn channel_with(
    address: &str,
    tls: Option<Arc<crate::tls::Tls>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = endpoint(uri)?;
    Ok(match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector { tls }),
    })
}

/// Dials a StreamBus peer over TLS with the current client configuration.
#[derive(Clone)]
struct TlsConnector {
    tls: Arc<crate::tls::Tls>,
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, std::io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no host in {uri}"),
                )
            })?;
            let port = uri.port_u16().unwrap_or(443);
            let stream = crate::tls::connect(&tls, host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The endpoint at `uri` with the transport settings of every internal
/// connection (see [`channel`]).
fn endpoint(uri: String) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .http2_max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .http2_max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS))
}

/// How long a server's drain waits for the calls in progress once it
/// stopped accepting connections: a client that stops reading a stream
/// would otherwise hold the drain, and everything its service closes after
/// it, forever.
pub const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a drain waits for the connections it cut at its limit to end.
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Splits a server's shutdown future into the one to hand to tonic's
/// `serve_with_incoming_shutdown` and a [`Drain`] that knows when it
/// completed: serve [`Drain::incoming`] and bound the drain that follows
/// with [`Drain::bound`].
pub fn drain_signal(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    Drain,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        shutdown.await;
        let _ = tx.send(());
    };
    let drain = Drain {
        started: rx,
        cut: Arc::new(Cut::default()),
        connections: Connections::default(),
    };
    (signal, drain)
}

/// A server's drain: when it began, and the connections to cut when it
/// runs out of time. See [`drain_signal`].
pub struct Drain {
    started: tokio::sync::oneshot::Receiver<()>,
    cut: Arc<Cut>,
    connections: Connections,
}

/// A server's connection counts, for its metrics: the connections open now
/// and those accepted since the process started.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    /// Client connections open now.
    pub open: prometheus_client::metrics::gauge::Gauge,
    /// Client connections accepted so far (TLS: handshake completed).
    pub accepted: prometheus_client::metrics::counter::Counter,
    /// TLS handshakes that failed or timed out (a client without a
    /// certificate the listener accepts, say).
    pub handshake_failures: prometheus_client::metrics::counter::Counter,
}

impl Connections {
    /// Registers them as `<prefix>_connections`,
    /// `<prefix>_connections_accepted_total` and
    /// `<prefix>_tls_handshake_failures_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry, prefix: &str) {
        let r = registry.sub_registry_with_prefix(prefix);
        r.register(
            "connections",
            "Connections open on the gRPC listener",
            self.open.clone(),
        );
        r.register(
            "connections_accepted",
            "Connections accepted by the gRPC listener",
            self.accepted.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes on the gRPC listener that failed or timed out",
            self.handshake_failures.clone(),
        );
    }
}

/// The connections of one server, and whether they were cut.
#[derive(Default)]
struct Cut {
    done: AtomicBool,
    /// The wakers of the connections' tasks (dead ones pruned as it grows).
    connections: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl Cut {
    fn register(&self) -> Arc<AtomicWaker> {
        let waker = Arc::new(AtomicWaker::new());
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if connections.len() >= 64 && connections.len().is_power_of_two() {
            connections.retain(|w| w.strong_count() > 0);
        }
        connections.push(Arc::downgrade(&waker));
        waker
    }

    fn cut(&self) {
        self.done.store(true, Ordering::Release);
        let connections =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in connections.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
    }
}

impl Drain {
    /// Counts the server's connections in `connections`.
    pub fn count_connections(mut self, connections: Connections) -> Drain {
        self.connections = connections;
        self
    }

    /// The server's connection stream (as [`incoming`]), with connections
    /// that [`Drain::bound`] can cut, each counted while open; over TLS
    /// for a listener of `exposure` when the process has TLS
    /// ([`crate::tls::install`]).
    pub fn incoming(
        &self,
        listener: tokio::net::TcpListener,
        exposure: crate::tls::Exposure,
    ) -> impl futures::Stream<Item = Result<Cuttable<Conn>, std::io::Error>> + Send + 'static {
        self.incoming_with(listener, crate::tls::installed().cloned(), exposure)
    }

    /// [`Drain::incoming`] with `tls` rather than the process's setup.
    pub fn incoming_with(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<crate::tls::Tls>>,
        exposure: crate::tls::Exposure,
    ) -> impl futures::Stream<Item = Result<Cuttable<Conn>, std::io::Error>> + Send + 'static {
        let cut = self.cut.clone();
        let connections = self.connections.clone();
        let conns: futures::stream::BoxStream<'static, std::io::Result<Conn>> = match tls {
            None => incoming(listener)
                .map(|accepted| accepted.map(Conn::Plain))
                .boxed(),
            Some(tls) => TlsIncoming {
                tcp: incoming(listener),
                tcp_done: false,
                handshakes: futures::stream::FuturesUnordered::new(),
                tls,
                exposure,
                failures: connections.handshake_failures.clone(),
            }
            .boxed(),
        };
        conns.map(move |accepted| {
            accepted.map(|io| {
                connections.accepted.inc();
                connections.open.inc();
                Cuttable {
                    io,
                    waker: cut.register(),
                    cut: cut.clone(),
                    open: connections.open.clone(),
                }
            })
        })
    }

    /// Runs `serve` (a tonic server future on [`Drain::incoming`]) to its
    /// end, but once its drain began, for at most `limit` more: then the
    /// connections still open are cut (their reads and writes fail, which
    /// ends them and whatever their calls hold) and the drain counts as
    /// done. `service` names the server in the log lines that say so.
    pub async fn bound<E>(
        self,
        serve: impl std::future::Future<Output = Result<(), E>>,
        limit: std::time::Duration,
        service: &str,
    ) -> Result<(), E> {
        let mut serve = std::pin::pin!(serve);
        let mut started = self.started;
        tokio::select! {
            ended = &mut serve => return ended,
            began = &mut started => {
                if began.is_err() {
                    // The server ended its shutdown future unfinished.
                    return serve.await;
                }
            }
        }
        if let Ok(ended) = tokio::time::timeout(limit, &mut serve).await {
            return ended;
        }
        tracing::warn!(
            service,
            limit_ms = limit.as_millis() as u64,
            "calls still in progress at the drain limit (a client that stopped reading?); cutting their connections"
        );
        self.cut.cut();
        match tokio::time::timeout(CUT_WAIT, serve).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::warn!(
                    service,
                    "connections still open after being cut; leaving them behind"
                );
                Ok(())
            }
        }
    }
}

/// A server connection whose reads and writes fail once its server's
/// drain cut it ([`Drain::bound`]).
pub struct Cuttable<T> {
    io: T,
    waker: Arc<AtomicWaker>,
    cut: Arc<Cut>,
    /// The open-connections gauge this connection counts in.
    open: prometheus_client::metrics::gauge::Gauge,
}

impl<T> Drop for Cuttable<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T> Cuttable<T> {
    /// Whether the connection was cut; registers the task to be woken
    /// when it is.
    fn is_cut(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.cut.done.load(Ordering::Acquire)
    }
}

fn cut_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "connection cut at the end of the drain",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Cuttable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Cuttable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An accepted connection: plain TCP, or TLS over it.
pub enum Conn {
    /// Without TLS.
    Plain(tokio::net::TcpStream),
    /// After a completed TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// What a call knows about its connection (in its request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The certificate chain the client presented over TLS, leaf first.
    pub peer_certificates: Option<Arc<[rustls::pki_types::CertificateDer<'static>]>>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(s) => ConnInfo {
                remote_addr: s.peer_addr().ok(),
                peer_certificates: None,
            },
            Conn::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    peer_certificates: session
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect()),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections accepted on `listener` once their TLS handshake for a
/// listener of `exposure` completed (many handshake at once; one that fails
/// or takes too long is dropped and counted in `failures`).
pub fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<crate::tls::Tls>,
    exposure: crate::tls::Exposure,
    failures: prometheus_client::metrics::counter::Counter,
) -> impl futures::Stream<Item = std::io::Result<Conn>> + Send + 'static {
    TlsIncoming {
        tcp: incoming(listener),
        tcp_done: false,
        handshakes: futures::stream::FuturesUnordered::new(),
        tls,
        exposure,
        failures,
    }
}

type Handshake = futures::future::BoxFuture<'static, Option<Conn>>;

/// Accepted TCP connections, handed on once their TLS handshake completed
/// (many handshake at once; one that fails or times out is dropped and
/// counted). Everything lives in the stream: dropping it (the server
/// ended) drops the listener and the handshakes in progress.
struct TlsIncoming {
    tcp: tonic::transport::server::TcpIncoming,
    tcp_done: bool,
    handshakes: futures::stream::FuturesUnordered<Handshake>,
    tls: Arc<crate::tls::Tls>,
    exposure: crate::tls::Exposure,
    failures: prometheus_client::metrics::counter::Counter,
}

impl TlsIncoming {
    fn handshake(&self, tcp: tokio::net::TcpStream) -> Handshake {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server_config(self.exposure));
        let failures = self.failures.clone();
        Box::pin(async move {
            let peer = tcp.peer_addr().ok();
            let accept = acceptor.accept(tcp).into_fallible();
            match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => Some(Conn::Tls(Box::new(s))),
                Ok(Err((e, tcp))) => {
                    failures.inc();
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    linger(tcp).await;
                    None
                }
                Err(_) => {
                    failures.inc();
                    tracing::debug!(?peer, "TLS handshake timed out");
                    None
                }
            }
        })
    }
}

/// Closes a connection whose handshake failed so that the client reads
/// the TLS alert saying why (a missing or untrusted certificate): the
/// alert is written, then the connection is shut down for writing and what
/// the client sent meanwhile is read away (for at most a second). Closing
/// a socket with unread data sends a reset, which can overtake the alert.
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl futures::Stream for TlsIncoming {
    type Item = std::io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        while !self.tcp_done {
            match Pin::new(&mut self.tcp).poll_next(cx) {
                Poll::Ready(Some(Ok(tcp))) => {
                    let handshake = self.handshake(tcp);
                    self.handshakes.push(handshake);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.tcp_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match Pin::new(&mut self.handshakes).poll_next(cx) {
                Poll::Ready(Some(Some(conn))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) if self.tcp_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: Connected> Connected for Cuttable<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    #[tokio::test]
    async fn a_client_that_stops_reading_does_not_hold_the_drain_past_its_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (reporter, health) = health_service();
        set_serving(&reporter, &[]).await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (signal, drain) = drain_signal(async move {
            let _ = stop_rx.await;
        });
        let limit = Duration::from_millis(500);
        let server = tokio::spawn(async move {
            let serve = server().add_service(health).serve_with_incoming_shutdown(
                drain.incoming(listener, crate::tls::Exposure::Internal),
                signal,
            );
            drain.bound(serve, limit, "test").await
        });
        // A health watch never ends on its own: the drain waits for it.
        let mut client = HealthClient::new(channel(&address.to_string()).unwrap());
        let watch = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        stop_tx.send(()).unwrap();
        let ended = tokio::time::timeout(limit * 6, server)
            .await
            .expect("the drain ends at its limit")
            .unwrap();
        assert!(ended.is_ok());
        // The connection was cut, not left behind: its stream fails.
        let mut watch = watch;
        loop {
            match tokio::time::timeout(limit * 6, watch.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None) | Err(_)) => break,
                Err(_) => panic!("the connection is still open"),
            }
        }
    }
}
