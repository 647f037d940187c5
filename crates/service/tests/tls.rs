//! TLS on a real gRPC listener with certificates generated here: who gets
//! in on an internal and on a public listener, and certificate rotation
//! on disk picked up without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streambus_service::certs::{Ca, Pem, Usage, Validity};
use streambus_service::grpc;
use streambus_service::tls::{ClientAuth, Exposure, Tls, TlsFiles};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn localhost() -> Vec<String> {
    vec!["127.0.0.1".to_string(), "localhost".to_string()]
}

fn write(dir: &Path, name: &str, pem: &Pem) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    (cert, key)
}

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    other_ca: Ca,
    files: TlsFiles,
}

fn setup(client_auth: ClientAuth) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA", Validity::days(1)).unwrap();
    let other_ca = Ca::new("another CA", Validity::days(1)).unwrap();
    let node = ca
        .issue("node", &localhost(), Usage::Peer, Validity::days(1))
        .unwrap();
    let (cert, key) = write(dir.path(), "node", &node);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem().cert).unwrap();
    Setup {
        dir,
        ca,
        other_ca,
        files: TlsFiles {
            cert,
            key,
            ca: ca_file,
            client_auth,
            client_ca: None,
        },
    }
}

/// Serves gRPC health on 127.0.0.1 over `tls` as `exposure`.
async fn serve(tls: Arc<Tls>, exposure: Exposure) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (reporter, health) = grpc::health_service();
    grpc::set_serving(&reporter, &[]).await;
    let (signal, drain) = grpc::drain_signal(futures::future::pending());
    tokio::spawn(async move {
        let _reporter = reporter;
        grpc::server()
            .add_service(health)
            .serve_with_incoming_shutdown(
                drain.incoming_with(listener, Some(tls), exposure),
                signal,
            )
            .await
    });
    address
}

async fn check(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    tokio::time::timeout(
        Duration::from_secs(10),
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("the call ends")
    .map(|_| ())
}

/// A channel as a user's client makes it: tonic's own TLS, trusting
/// `ca`, presenting `identity` if any.
fn user_channel(address: &str, ca: &Pem, identity: Option<&Pem>) -> tonic::transport::Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert))
        .domain_name("127.0.0.1");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

#[tokio::test]
async fn an_internal_listener_admits_only_cluster_peers() {
    let s = setup(ClientAuth::None);
    let tls = Tls::load(s.files.clone()).unwrap();
    let address = serve(tls.clone(), Exposure::Internal).await;

    // A cluster peer: the process's own setup on both sides.
    check(grpc::channel_with(&address, Some(tls.clone())).unwrap())
        .await
        .expect("a peer with a certificate from the cluster CA gets in");

    // Refused, with the TLS alert saying why in the client's error. Under
    // TLS 1.3 a server refuses a client certificate after the client
    // finished its handshake, so the client's HTTP/2 layer may see the
    // connection end before it reads the alert.
    let refused = |what: &str, r: Result<(), tonic::Status>, why: &str| {
        let e = format!("{:?}", r.expect_err(what));
        assert!(
            e.contains(why)
                || e.contains("connection closed")
                || e.contains("connection was not ready"),
            "{what}: {e}"
        );
    };
    // A plaintext client reads the TLS alert as a broken HTTP/2 stream.
    assert!(
        check(grpc::channel_with(&address, None).unwrap())
            .await
            .is_err(),
        "plaintext gets in"
    );
    refused(
        "no client certificate",
        check(user_channel(&address, s.ca.pem(), None)).await,
        "CertificateRequired",
    );
    let foreign = s
        .other_ca
        .issue("intruder", &localhost(), Usage::Peer, Validity::days(1))
        .unwrap();
    refused(
        "a certificate from another CA",
        check(user_channel(&address, s.ca.pem(), Some(&foreign))).await,
        "UnknownCA",
    );
    let expired =
        s.ca.issue(
            "expired",
            &localhost(),
            Usage::Peer,
            Validity {
                started_secs_ago: 7200,
                ends_in_secs: -3600,
            },
        )
        .unwrap();
    refused(
        "an expired certificate",
        check(user_channel(&address, s.ca.pem(), Some(&expired))).await,
        "CertificateExpired",
    );
    let client_only =
        s.ca.issue("client", &[], Usage::Client, Validity::days(1))
            .unwrap();
    check(user_channel(&address, s.ca.pem(), Some(&client_only)))
        .await
        .expect("a client certificate from the cluster CA gets in");
    // The client does not trust a server outside its CA either.
    refused(
        "a server from another CA",
        check(user_channel(&address, s.other_ca.pem(), Some(&client_only))).await,
        "UnknownIssuer",
    );
    // Only the process's own setup can be loaded from these files: a key
    // that does not match the certificate is refused at load.
    let mut mismatched = s.files.clone();
    let (_, other_key) = write(s.dir.path(), "other", &foreign);
    mismatched.key = other_key;
    let e = Tls::load(mismatched).unwrap_err();
    assert!(e.to_string().contains("node.pem"), "{e}");
}

#[tokio::test]
async fn a_public_listener_asks_for_client_certificates_as_configured() {
    let s = setup(ClientAuth::None);
    let tls = Tls::load(s.files.clone()).unwrap();
    let address = serve(tls, Exposure::Public).await;
    check(user_channel(&address, s.ca.pem(), None))
        .await
        .expect("client_auth none: TLS without a client certificate");

    let s = setup(ClientAuth::Optional);
    let tls = Tls::load(s.files.clone()).unwrap();
    let address = serve(tls, Exposure::Public).await;
    check(user_channel(&address, s.ca.pem(), None))
        .await
        .expect("client_auth optional: no certificate is fine");
    let foreign = s
        .other_ca
        .issue("intruder", &[], Usage::Client, Validity::days(1))
        .unwrap();
    assert!(
        check(user_channel(&address, s.ca.pem(), Some(&foreign)))
            .await
            .is_err(),
        "client_auth optional: a certificate that does not verify is refused"
    );

    let s = setup(ClientAuth::Required);
    let tls = Tls::load(s.files.clone()).unwrap();
    let address = serve(tls, Exposure::Public).await;
    assert!(
        check(user_channel(&address, s.ca.pem(), None))
            .await
            .is_err()
    );
    let client =
        s.ca.issue("alice", &[], Usage::Client, Validity::days(1))
            .unwrap();
    check(user_channel(&address, s.ca.pem(), Some(&client)))
        .await
        .expect("client_auth required: a certificate from the CA gets in");
}

/// With a client CA, the gateway takes its certificates and the cluster
/// peers'; the internal listeners still take only the peers'.
#[tokio::test]
async fn client_certificates_of_a_client_ca_open_the_gateway_and_nothing_else() {
    let mut s = setup(ClientAuth::Required);
    let client_ca = Ca::new("client CA", Validity::days(1)).unwrap();
    let client_ca_file = s.dir.path().join("client-ca.pem");
    std::fs::write(&client_ca_file, &client_ca.pem().cert).unwrap();
    s.files.client_ca = Some(client_ca_file);
    let tls = Tls::load(s.files.clone()).unwrap();
    let public = serve(tls.clone(), Exposure::Public).await;
    let internal = serve(tls.clone(), Exposure::Internal).await;
    let alice = client_ca
        .issue("alice", &[], Usage::Client, Validity::days(1))
        .unwrap();
    let peer =
        s.ca.issue("operator", &[], Usage::Peer, Validity::days(1))
            .unwrap();
    check(user_channel(&public, s.ca.pem(), Some(&alice)))
        .await
        .expect("a client certificate opens the gateway");
    check(user_channel(&public, s.ca.pem(), Some(&peer)))
        .await
        .expect("a cluster peer's certificate opens the gateway");
    assert!(
        check(user_channel(&internal, s.ca.pem(), Some(&alice)))
            .await
            .is_err(),
        "a client certificate opens an internal listener"
    );
    check(user_channel(&internal, s.ca.pem(), Some(&peer)))
        .await
        .expect("a cluster peer gets in");
    let foreign = s
        .other_ca
        .issue("intruder", &[], Usage::Client, Validity::days(1))
        .unwrap();
    assert!(
        check(user_channel(&public, s.ca.pem(), Some(&foreign)))
            .await
            .is_err()
    );
}

/// The DER of the certificate a server at `address` presents now.
async fn served_certificate(tls: &Tls, address: &str) -> Vec<u8> {
    let (host, port) = address.rsplit_once(':').unwrap();
    let stream = streambus_service::tls::connect(tls, host, port.parse().unwrap())
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_to_new_connections() {
    let s = setup(ClientAuth::None);
    let tls = Tls::load(s.files.clone()).unwrap();
    tls.watch();
    let address = serve(tls.clone(), Exposure::Internal).await;
    let first = std::fs::read_to_string(&s.files.cert).unwrap();
    assert_eq!(served_certificate(&tls, &address).await, der(&first));
    let open = grpc::channel_with(&address, Some(tls.clone())).unwrap();
    check(open.clone()).await.unwrap();

    // Files that do not load change nothing.
    std::fs::write(&s.files.cert, "not a certificate").unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(served_certificate(&tls, &address).await, der(&first));

    // A new certificate and key, as a Secret update writes them.
    let rotated =
        s.ca.issue(
            "node, rotated",
            &localhost(),
            Usage::Peer,
            Validity::days(2),
        )
        .unwrap();
    write(s.dir.path(), "node", &rotated);
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_certificate(&tls, &address).await != der(&rotated.cert) {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is not served after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before goes on; new ones work too.
    check(open).await.unwrap();
    check(grpc::channel_with(&address, Some(tls.clone())).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_http_endpoints_are_served_over_https_without_a_client_certificate() {
    use rustls::pki_types::ServerName;
    use streambus_service::http::{HttpState, Readiness};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Even where gRPC requires client certificates: probes carry none.
    let s = setup(ClientAuth::Required);
    let tls = Tls::load(s.files.clone()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let scrapes = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register("https_test", "a counter", scrapes.clone());
    scrapes.inc();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = HttpState {
        registry: Arc::new(registry),
        readiness: Readiness::new(),
    };
    tokio::spawn(streambus_service::http::serve_with(
        listener,
        state,
        Some(tls),
        futures::future::pending(),
    ));

    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&s.ca.pem().cert).into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for (path, expect) in [("/metrics", "https_test_total 1"), ("/healthz", "ok")] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut https = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        https.write_all(get(path).as_bytes()).await.unwrap();
        let mut out = String::new();
        https.read_to_string(&mut out).await.unwrap_or_default();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(expect), "{out}");
    }

    // Plain HTTP gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(get("/metrics").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("https_test"),
        "plaintext got the metrics"
    );

    // A client trusting another CA does not complete the handshake.
    let mut other = rustls::RootCertStore::empty();
    other.add(der(&s.other_ca.pem().cert).into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(other)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await;
    assert!(refused.is_err());
}
