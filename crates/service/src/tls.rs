//! TLS for every gRPC listener and internal connection (rustls, ring).
//!
//! A process has at most one TLS setup ([`Tls`]), built from PEM files:
//! its certificate and key (served to clients, and presented as the client
//! certificate of its own internal calls), the cluster CA (internal
//! listeners accept only clients presenting a certificate it signed;
//! internal calls trust only servers it signed), and for the gateway's
//! public listener which client certificates to ask for. The files are
//! read again every [`RELOAD_INTERVAL`]; when their contents changed and
//! load, new connections use them (connections already open keep theirs),
//! so a certificate Kubernetes rotates in a mounted Secret is picked up
//! without a restart. Contents that do not load are logged and the last
//! good setup stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How often the certificate, key and CA files are read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which client certificates the gateway's public listener asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// None: clients authenticate otherwise (or not at all).
    #[default]
    None,
    /// A client may present one; if it does, it must verify.
    Optional,
    /// Every client must present a certificate that verifies.
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<ClientAuth, String> {
        match s {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!(
                "unknown client auth {other:?}: expected none, optional or required"
            )),
        }
    }
}

/// Where a process's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM), leaf first. It must be
    /// valid for the names and addresses peers dial it by, and carry both
    /// the server and the client authentication usage: internal calls
    /// present it as their client certificate.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA (PEM, one or more certificates).
    pub ca: PathBuf,
    /// Client certificates at the gateway's public listener.
    pub client_auth: ClientAuth,
    /// The CA that signs client certificates at the gateway (PEM), which
    /// also takes the cluster CA's (cluster peers'); `None`: the cluster
    /// CA alone.
    pub client_ca: Option<PathBuf>,
}

/// Which kind of listener a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Controllers and storage nodes: only cluster peers (a client
    /// certificate from the cluster CA) get in.
    Internal,
    /// The gateway: client certificates as [`TlsFiles::client_auth`] says.
    Public,
    /// The HTTP endpoints (`/healthz`, `/readyz`, `/metrics`): HTTP/1.1,
    /// no client certificate asked for (probes and scrapers carry none).
    Http,
}

/// A TLS file that is missing, unreadable or does not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// A process's TLS setup, reloaded from its files as they change.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

/// The configurations built from one reading of the files.
#[derive(Debug)]
struct Loaded {
    /// What was read (certificate, key, CA, client CA), to notice changes.
    read: Vec<Vec<u8>>,
    internal: Arc<ServerConfig>,
    public: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// Logs a warning when `listener` listens on a non-loopback `addr` without
/// TLS: anyone who can reach it can then call it.
pub fn warn_if_exposed(addr: std::net::SocketAddr, listener: &str) {
    if installed().is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            listener,
            "listening WITHOUT TLS on a non-loopback address: anyone who can reach it can call it; set tls.cert_file, tls.key_file and tls.ca_file"
        );
    }
}

/// The setup [`install`]ed for this process.
static INSTALLED: OnceLock<Arc<Tls>> = OnceLock::new();

/// Makes `tls` the process's TLS setup: every server on
/// [`crate::grpc::Drain::incoming`] and every channel from
/// [`crate::grpc::channel`] uses it from then on. Call it once, before any
/// server starts or channel dials; a second call is refused.
pub fn install(tls: Arc<Tls>) -> Result<(), TlsError> {
    INSTALLED
        .set(tls)
        .map_err(|_| TlsError("TLS is already set up in this process".into()))
}

/// The process's TLS setup, if [`install`]ed.
pub fn installed() -> Option<&'static Arc<Tls>> {
    INSTALLED.get()
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

fn certificates(
    pem: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn roots(pem: &[u8], path: &Path, what: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem, path, what)? {
        store
            .add(cert)
            .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    }
    Ok(Arc::new(store))
}

impl Tls {
    /// Reads and checks the files; fails naming the file that does not
    /// load.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let loaded = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server configuration for a listener of `exposure`, as of now.
    pub fn server_config(&self, exposure: Exposure) -> Arc<ServerConfig> {
        let current = self.current();
        match exposure {
            Exposure::Internal => current.internal.clone(),
            Exposure::Public => current.public.clone(),
            Exposure::Http => current.http.clone(),
        }
    }

    /// The configuration of internal calls, as of now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// Reads the files again: `Ok(true)` when they changed and the new
    /// contents are in use, `Ok(false)` when nothing changed, an error
    /// (the previous setup kept) when they changed and do not load.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let current = self.current();
        let read = read_all(&self.files)?;
        if read == current.read {
            return Ok(false);
        }
        let loaded = build(&self.files, read)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Reloads every [`RELOAD_INTERVAL`] on the current runtime until the
    /// last other reference to `self` is gone.
    pub fn watch(self: &Arc<Self>) {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let Some(tls) = tls.upgrade() else { return };
                let files = tls.files.clone();
                let outcome = tokio::task::spawn_blocking(move || tls.reload()).await;
                match outcome {
                    Ok(Ok(true)) => {
                        failing = false;
                        tracing::info!(cert = %files.cert.display(), "TLS certificate files reloaded");
                    }
                    Ok(Ok(false)) => failing = false,
                    Ok(Err(e)) => {
                        // Once per failing spell: rotation writes files one
                        // by one, so a reading between two is expected.
                        if !failing {
                            tracing::warn!(error = %e, "TLS files changed but do not load; the previous ones stay in use");
                        }
                        failing = true;
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut read_files = vec![
        read(&files.cert, "TLS certificate")?,
        read(&files.key, "TLS key")?,
        read(&files.ca, "TLS CA")?,
    ];
    if let Some(client_ca) = &files.client_ca {
        read_files.push(read(client_ca, "TLS client CA")?);
    }
    Ok(read_files)
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    build(files, read_all(files)?)
}

fn build(files: &TlsFiles, read: Vec<Vec<u8>>) -> Result<Loaded, TlsError> {
    let chain = certificates(&read[0], &files.cert, "TLS certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&read[1])
        .map_err(|e| TlsError(format!("TLS key {}: {e}", files.key.display())))?;
    let cluster_ca = roots(&read[2], &files.ca, "TLS CA")?;
    // The gateway takes client certificates of the client CA and of the
    // cluster CA: cluster peers (and the Kubernetes operator, which holds
    // the cluster's certificate) may call it; clients never get into the
    // internal listeners, which trust the cluster CA alone.
    let client_ca = match &files.client_ca {
        Some(path) => {
            let mut store = (*roots(&read[3], path, "TLS client CA")?).clone();
            store.roots.extend(cluster_ca.roots.iter().cloned());
            Arc::new(store)
        }
        None => cluster_ca.clone(),
    };
    let provider = provider();
    let versions = |e: rustls::Error| TlsError(format!("TLS setup: {e}"));
    let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
                  alpn: &[u8]| {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(versions)?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError(format!(
                    "TLS certificate {} and key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok::<_, TlsError>(Arc::new(config))
    };
    let verifier = |roots: Arc<RootCertStore>, optional: bool| {
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| TlsError(format!("TLS client verification: {e}")))
    };
    let internal = server(Some(verifier(cluster_ca.clone(), false)?), b"h2")?;
    let public = match files.client_auth {
        ClientAuth::None => server(None, b"h2")?,
        ClientAuth::Optional => server(Some(verifier(client_ca, true)?), b"h2")?,
        ClientAuth::Required => server(Some(verifier(client_ca, false)?), b"h2")?,
    };
    let http = server(None, b"http/1.1")?;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_root_certificates(cluster_ca)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            TlsError(format!(
                "TLS certificate {} as a client certificate: {e}",
                files.cert.display()
            ))
        })?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        read,
        internal,
        public,
        http,
        client: Arc::new(client),
    })
}

/// The name a server at `host` (a DNS name or an IP address, IPv6 in
/// brackets or not) is verified against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError(format!("{host:?} is not a valid TLS server name: {e}")))
}

/// Dials `host:port` and completes a TLS handshake as a cluster peer with
/// `tls`'s current client configuration.
pub async fn connect(
    tls: &Tls,
    host: &str,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = server_name(host).map_err(std::io::Error::other)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port)).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS handshake with {host}:{port} timed out"),
            )
        })?
}
