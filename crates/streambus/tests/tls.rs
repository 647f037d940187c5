//! TLS end to end on separate processes: certificates from `streambus tls
//! generate`, a controller, three storage nodes and a gateway talking
//! mutual TLS to each other, and clients (the CLI and the SDK) let in or
//! refused at the gateway and at a storage node.

mod procs;

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use procs::{Cluster, eventually, scrape};
use streambus_client::{
    Client, ConnectOptions, ProducerConfig, Record, StartFrom, SubscribeOptions, TlsOptions,
};

fn streambus(args: &[&str]) -> Output {
    streambus_with(args, &[])
}

/// The CLI with `env` set, and no client configuration file unless `env`
/// names one.
fn streambus_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(args)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The CLI's TLS flags for `client`'s certificate (or none).
fn tls_flags(certs: &Path, client: Option<&str>) -> Vec<String> {
    let mut flags = vec![
        "--tls-ca".to_string(),
        certs.join("ca.pem").display().to_string(),
    ];
    if let Some(c) = client {
        flags.extend([
            "--tls-cert".to_string(),
            certs.join(format!("client-{c}.pem")).display().to_string(),
            "--tls-key".to_string(),
            certs
                .join(format!("client-{c}-key.pem"))
                .display()
                .to_string(),
        ]);
    }
    flags
}

fn cli(gateway: &str, certs: &Path, client: Option<&str>, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--gateway".to_string(), gateway.to_string()]);
    all.extend(tls_flags(certs, client));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    streambus(&all)
}

/// The command failed as a refused TLS connection does: the server's
/// `alert`, or the connection closed before the client read it (which
/// the client's HTTP/2 layer reports as closed or as never ready,
/// depending on when it noticed).
fn refused(out: &Output, alert: &str) {
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: UNAVAILABLE")
            && (stderr.contains(alert)
                || stderr.contains("connection closed")
                || stderr.contains("connection was not ready")),
        "{stderr}"
    );
}

/// Every process's TLS settings, with the files of `streambus tls
/// generate` in `certs` and the gateway's `client_auth`.
fn tls_settings(certs: &Path, client_auth: &str) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        format!("tls.cert_file={}", file("node.pem")),
        format!("tls.key_file={}", file("node-key.pem")),
        format!("tls.ca_file={}", file("ca.pem")),
        format!("tls.client_auth={client_auth}"),
        format!("tls.client_ca_file={}", file("client-ca.pem")),
    ]
}

/// Alice's TLS options: the cluster CA, her client certificate.
fn alice(certs: &Path) -> TlsOptions {
    TlsOptions::from_files(
        Some(&certs.join("ca.pem")),
        Some(&certs.join("client-alice.pem")),
        Some(&certs.join("client-alice-key.pem")),
    )
    .unwrap()
}

#[test]
fn a_tls_cluster_serves_its_clients_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let certs: PathBuf = dir.path().join("certs");
    let out = streambus(&[
        "tls",
        "generate",
        "--out",
        certs.to_str().unwrap(),
        "--hosts",
        "127.0.0.1,localhost",
        "--clients",
        "alice",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "ca.pem",
        "node-key.pem",
        "client-ca.pem",
        "client-alice.pem",
    ] {
        assert!(text(&out.stdout).contains(f), "{}", text(&out.stdout));
    }
    // Files are not overwritten by accident.
    let again = streambus(&["tls", "generate", "--out", certs.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );

    let cluster = Cluster::start_configured(1, 1, &[], &tls_settings(&certs, "required"));
    let gateway = cluster.gateway_addrs[0].clone();

    // The CLI with alice's certificate: the whole path (gateway →
    // controller, gateway → storage nodes → followers) runs over mutual TLS.
    let out = cli(
        &gateway,
        &certs,
        Some("alice"),
        &["topic", "create", "secure", "-p", "2", "-r", "3"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = alice(&certs);
        let options = ConnectOptions {
            tls: Some(tls),
            ..ConnectOptions::default()
        };
        let client = Client::connect_with(gateway.as_str(), options)
            .await
            .unwrap();
        let producer = client.producer(ProducerConfig::default());
        let mut deliveries = Vec::new();
        for i in 0..100 {
            let record = Record {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![],
                timestamp_ms: 0,
            };
            deliveries.push(producer.send("secure", record, None).await.unwrap());
        }
        producer.flush().await;
        for d in deliveries {
            d.await.expect("acknowledged");
        }
        producer.close().await;
        let mut sub = client
            .subscribe(SubscribeOptions {
                start: StartFrom::Earliest,
                ..SubscribeOptions::new("secure")
            })
            .await
            .unwrap();
        let mut seen = 0;
        while seen < 100 {
            let r = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("records arrive")
                .unwrap()
                .unwrap();
            assert!(r.value.unwrap().starts_with(b"v"));
            seen += 1;
        }
    });
    let out = cli(
        &gateway,
        &certs,
        Some("alice"),
        &["consume", "secure", "--from-beginning", "-n", "3"],
    );
    assert!(
        out.status.success(),
        "{}\nstdout: {}\nlogs: {}",
        text(&out.stderr),
        text(&out.stdout),
        std::fs::read_to_string(&cluster.gateways[0].log).unwrap_or_default()
    );
    assert_eq!(
        text(&out.stdout).lines().count(),
        3,
        "{}",
        text(&out.stdout)
    );

    // Refused at the gateway. Under TLS 1.3 the server refuses a client
    // certificate after the client finished its handshake: the client
    // reads the alert saying why, or (when its HTTP/2 layer sees the
    // connection end first) only that the connection closed.
    let out = cli(&gateway, &certs, None, &["topic", "list"]);
    refused(&out, "CertificateRequired");
    assert!(
        text(&out.stderr).contains("hint: the gateway may require a client certificate"),
        "{}",
        text(&out.stderr)
    );
    let out = streambus(&["topic", "list", "--gateway", &gateway]);
    assert!(!out.status.success(), "plaintext: {}", text(&out.stdout));
    let out = cli(&gateway, &certs, Some("nobody"), &["topic", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("client-nobody.pem"),
        "a missing file is named: {}",
        text(&out.stderr)
    );
    assert!(
        scrape(
            &cluster.gateways[0].http,
            "streambus_gateway_tls_handshake_failures_total"
        ) >= 2.0
    );

    // A context keeps the gateway and Alice's files under a name.
    let config = dir.path().join("client.toml");
    let config = config.to_str().unwrap();
    let env = [("STREAMBUS_CLIENT_CONFIG", config)];
    let mut set: Vec<String> = ["context", "set", "secure", "--gateway", gateway.as_str()]
        .into_iter()
        .map(String::from)
        .collect();
    set.extend(tls_flags(&certs, Some("alice")));
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let out = streambus_with(&set, &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = streambus_with(&["topic", "list"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("secure"),
        "{}",
        text(&out.stdout)
    );
    let out = streambus_with(&["context", "list"], &env);
    assert!(
        text(&out.stdout).contains(&format!("*        secure  {gateway}")),
        "{}",
        text(&out.stdout)
    );
    let out = streambus_with(&["topic", "list", "--context", "other"], &env);
    assert!(
        text(&out.stderr).contains("no context \"other\""),
        "{}",
        text(&out.stderr)
    );

    // A storage node admits cluster peers only: alice's certificate (from
    // the client CA) does not open it, so she cannot append behind the
    // gateway's back.
    let node = cluster.nodes.values().next().unwrap();
    let storage = node
        .setting("storage_node.listen_addr")
        .unwrap()
        .to_string();
    let out = cli(&storage, &certs, Some("alice"), &["topic", "list"]);
    refused(&out, "UnknownCA");
    assert!(
        !text(&out.stderr).contains("hint:"),
        "{}",
        text(&out.stderr)
    );
    rt.block_on(async {
        use streambus_proto::internal::storage_service_client::StorageServiceClient;
        let tls = alice(&certs);
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                tls.ca_pem.as_ref().unwrap(),
            ))
            .identity(tonic::transport::Identity::from_pem(
                &tls.identity.as_ref().unwrap().0,
                &tls.identity.as_ref().unwrap().1,
            ))
            .domain_name("127.0.0.1");
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{storage}"))
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect_lazy();
        let refused = StorageServiceClient::new(channel)
            .append(streambus_proto::internal::AppendRequest::default())
            .await
            .expect_err("a client that is not a cluster peer cannot append");
        // The connection failed (TLS 1.3: the client may see the server's
        // alert or only the connection it closed), not the call.
        assert!(
            matches!(
                refused.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
            ) && refused.source().is_some(),
            "{refused:?}"
        );
    });
    assert!(
        scrape(&node.http, "streambus_storage_tls_handshake_failures_total") >= 2.0,
        "the storage node counted both refused handshakes"
    );
    drop(cluster);
}

/// Waits until `cond` holds, for at most 20 s.
#[test]
fn clients_authenticate_with_a_certificate_or_a_token_and_admin_changes_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let certs: PathBuf = dir.path().join("certs");
    let out = streambus(&[
        "tls",
        "generate",
        "--out",
        certs.to_str().unwrap(),
        "--clients",
        "alice",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tokens = dir.path().join("tokens");
    let bob_token = "bob-token-0123456789abcdef";
    std::fs::write(&tokens, format!("# name token\nbob {bob_token}\n")).unwrap();
    let mut settings = tls_settings(&certs, "optional");
    settings.extend([
        "gateway.auth.mtls=true".to_string(),
        format!("gateway.auth.token_file={}", tokens.display()),
    ]);
    let cluster = Cluster::start_configured(1, 1, &[], &settings);
    let gateway = cluster.gateway_addrs[0].clone();
    let with_token = |token: &str, args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(tls_flags(&certs, None));
        all.extend([
            "--gateway".into(),
            gateway.clone(),
            "--token".into(),
            token.into(),
        ]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        streambus(&all)
    };

    // Alice by her certificate, Bob by his token.
    let out = cli(
        &gateway,
        &certs,
        Some("alice"),
        &["topic", "create", "alices", "-r", "3"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = with_token(bob_token, &["topic", "create", "bobs", "-p", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = with_token(bob_token, &["topic", "delete", "alices"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    rt_produce_with_token(&gateway, &certs, bob_token);

    // No credentials, or a token the gateway does not know: refused with
    // UNAUTHENTICATED, saying what it takes.
    let out = cli(&gateway, &certs, None, &["topic", "list"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: UNAUTHENTICATED")
            && stderr.contains("a client certificate or a bearer token"),
        "{stderr}"
    );
    let out = with_token("not-a-token-anyone-has-0000", &["topic", "list"]);
    assert!(
        text(&out.stderr).starts_with("error: UNAUTHENTICATED: the bearer token is not valid"),
        "{}",
        text(&out.stderr)
    );

    // The token file is read again: a rotated token works, the old one no
    // longer does.
    let rotated = "bob-rotated-token-fedcba9876543210";
    std::fs::write(&tokens, format!("bob {rotated}\n")).unwrap();
    eventually("the rotated token accepted", || {
        with_token(rotated, &["topic", "list"]).status.success()
    });
    let out = with_token(bob_token, &["topic", "list"]);
    assert!(
        text(&out.stderr).starts_with("error: UNAUTHENTICATED"),
        "{}",
        text(&out.stderr)
    );

    // Every admin change is in the audit log: who, what, how it ended.
    let log = std::fs::read_to_string(&cluster.gateways[0].log).unwrap();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("streambus::audit"))
        .collect();
    let find = |principal: &str, action: &str, resource: &str| {
        audit.iter().any(|l| {
            l.contains(&format!("principal={principal}"))
                && l.contains(action)
                && l.contains(resource)
                && l.contains("result=\"ok\"")
        })
    };
    assert!(
        find("User:alice", "CreateTopic", "topic:alices"),
        "{audit:#?}"
    );
    assert!(find("User:bob", "CreateTopic", "topic:bobs"), "{audit:#?}");
    assert!(
        find("User:bob", "DeleteTopic", "topic:alices"),
        "{audit:#?}"
    );
    assert_eq!(
        audit.len(),
        3,
        "reads and produce are not audited: {audit:#?}"
    );
    drop(cluster);
}

/// Produces and reads back a record as Bob, with his token over TLS
/// without a client certificate.
fn rt_produce_with_token(gateway: &str, certs: &Path, token: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = ConnectOptions {
            tls: Some(TlsOptions::from_files(Some(&certs.join("ca.pem")), None, None).unwrap()),
            token: Some(token.to_string()),
        };
        let client = Client::connect_with(gateway, options).await.unwrap();
        let producer = client.producer(ProducerConfig::default());
        let record = Record {
            key: None,
            value: Some(Bytes::from("from bob")),
            headers: vec![],
            timestamp_ms: 0,
        };
        producer
            .send_and_wait("bobs", record, Some(0))
            .await
            .unwrap();
        producer.close().await;
        let mut sub = client
            .subscribe(SubscribeOptions {
                start: StartFrom::Earliest,
                ..SubscribeOptions::new("bobs")
            })
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.value.as_deref(), Some(&b"from bob"[..]));
    });
}
