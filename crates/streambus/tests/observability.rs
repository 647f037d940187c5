//! Traces and metrics end to end against a real Jaeger (built by `cargo
//! xtask peer jaeger install`, which `cargo xtask ci` runs) and a real
//! Prometheus (Debian's, installed by `cargo xtask setup`): a cluster of
//! separate processes (a controller, three storage nodes, a gateway)
//! exports its spans over OTLP/gRPC and is scraped by Prometheus with the
//! project's alert rules loaded; a traced client produces and consumes, the
//! trace Jaeger assembles is checked span by span, Prometheus's HTTP API is
//! asked for series from every service, and a stopped storage node makes
//! the under-replicated alert go pending.

mod procs;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::trace::{Link, Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use procs::{Cluster, free_port};
use serde_json::Value;
use streambus_client::{Client, Header, ProducerConfig, Record, StartFrom, SubscribeOptions};
use streambus_proto::v1::admin_service_client::AdminServiceClient;

const TOPIC: &str = "traced";

/// The Jaeger `cargo xtask peer jaeger install` builds.
fn jaeger_binary() -> PathBuf {
    let cache = std::env::var_os("STREAMBUS_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("streambus")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/streambus")))
        .expect("HOME is set");
    let bin = cache.join("jaeger/v1.75.0/bin/jaeger");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask peer jaeger install` (cargo xtask ci does)",
        bin.display()
    );
    bin
}

struct Jaeger {
    child: Child,
    otlp: String,
    query: String,
    log: PathBuf,
}

impl Jaeger {
    fn start(dir: &std::path::Path) -> Jaeger {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../xtask/observability/jaeger/config.yaml");
        let ports: Vec<(&str, u16)> = [
            "JAEGER_OTLP_GRPC_PORT",
            "JAEGER_OTLP_HTTP_PORT",
            "JAEGER_QUERY_HTTP_PORT",
            "JAEGER_QUERY_GRPC_PORT",
            "JAEGER_HEALTH_PORT",
        ]
        .into_iter()
        .map(|name| (name, free_port()))
        .collect();
        let log = dir.join("jaeger.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(jaeger_binary())
            .arg("--config")
            .arg(config)
            .envs(ports.iter().map(|(k, v)| (*k, v.to_string())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("jaeger starts");
        let port = |name: &str| ports.iter().find(|(k, _)| *k == name).unwrap().1;
        let jaeger = Jaeger {
            child,
            otlp: format!("127.0.0.1:{}", port("JAEGER_OTLP_GRPC_PORT")),
            query: format!("127.0.0.1:{}", port("JAEGER_QUERY_HTTP_PORT")),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while jaeger.get("/api/services").is_none() {
            assert!(
                Instant::now() < deadline,
                "jaeger not ready; log:\n{}",
                std::fs::read_to_string(&jaeger.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        jaeger
    }

    /// GETs `path` from the query API: the JSON body of a 200 answer.
    fn get(&self, path: &str) -> Option<Value> {
        get_json(&self.query, path)
    }

    /// The spans of trace `id` once `done` holds for them (spans arrive
    /// from each process's exporter within its batch delay).
    fn trace(&self, id: &str, done: impl Fn(&[SpanInfo]) -> bool) -> Vec<SpanInfo> {
        poll(&format!("trace {id} complete"), || {
            let spans = self
                .get(&format!("/api/traces/{id}"))
                .map(|v| spans_of(&v))
                .unwrap_or_default();
            if done(&spans) {
                Ok(spans)
            } else {
                Err(format!("{spans:#?}"))
            }
        })
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `path` from the HTTP server at `addr`: the JSON body of a 200
/// answer.
fn get_json(addr: &str, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // HTTP/1.0: the body comes whole, not chunked, until the close.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Percent-encodes `s` for a URL's query string.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server on 127.0.0.1 scraping the cluster every second,
/// with `deploy/observability/alerts.yml` loaded.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it on `jobs`: (job name, the `host:port` of each target's
    /// `/metrics`).
    fn start(dir: &std::path::Path, jobs: &[(&str, Vec<String>)]) -> Prometheus {
        let binary = Command::new("prometheus").arg("--version").output();
        assert!(
            binary.is_ok_and(|o| o.status.success()),
            "`prometheus` is missing: run `cargo xtask setup` (cargo xtask ci does)"
        );
        let rules =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability/alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `data` of a successful API answer at `path`.
    fn api(&self, path: &str) -> Option<Value> {
        let v = get_json(&self.addr, path)?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The result vector of the instant query `promql`.
    fn query(&self, promql: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until every target is scraped successfully.
    fn wait_targets_up(&self, count: usize) -> Vec<Value> {
        poll("every target up", || {
            let targets = self
                .api("/api/v1/targets?state=active")
                .and_then(|d| d["activeTargets"].as_array().cloned())
                .unwrap_or_default();
            if targets.len() == count && targets.iter().all(|t| t["health"] == "up") {
                Ok(targets)
            } else {
                Err(format!("{targets:#?}\nlog:\n{}", self.log()))
            }
        })
    }

    /// Polls `promql` until `done` holds for its result vector.
    fn wait_for(&self, promql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        poll(promql, || {
            let result = self.query(promql);
            if done(&result) {
                Ok(result)
            } else {
                Err(format!("{result:#?}"))
            }
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `attempt` every 250 ms until it succeeds, for at most 45 s; then
/// fails naming `what` and the last attempt's error.
fn poll<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "not {what} after 45 s: {e}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A sample's value as a number.
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The samples' `instance` labels, sorted.
fn instances(samples: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = samples
        .iter()
        .map(|s| {
            s["metric"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

/// One span as Jaeger's query API shows it.
#[derive(Debug, Clone)]
struct SpanInfo {
    id: String,
    name: String,
    service: String,
    /// `CHILD_OF` span ids.
    parents: Vec<String>,
    /// `FOLLOWS_FROM` (links): (trace id, span id).
    links: Vec<(String, String)>,
    tags: HashMap<String, String>,
}

fn spans_of(body: &Value) -> Vec<SpanInfo> {
    let mut out = Vec::new();
    for trace in body["data"].as_array().into_iter().flatten() {
        let processes = &trace["processes"];
        for s in trace["spans"].as_array().into_iter().flatten() {
            let refs = s["references"].as_array().cloned().unwrap_or_default();
            let of = |kind: &str| -> Vec<(String, String)> {
                refs.iter()
                    .filter(|r| r["refType"] == kind)
                    .map(|r| {
                        (
                            r["traceID"].as_str().unwrap_or_default().to_string(),
                            r["spanID"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            };
            let tags = s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let value = match &t["value"] {
                        Value::String(v) => v.clone(),
                        other => other.to_string(),
                    };
                    (t["key"].as_str().unwrap_or_default().to_string(), value)
                })
                .collect();
            let process = s["processID"].as_str().unwrap_or_default();
            out.push(SpanInfo {
                id: s["spanID"].as_str().unwrap_or_default().to_string(),
                name: s["operationName"].as_str().unwrap_or_default().to_string(),
                service: processes[process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                parents: of("CHILD_OF").into_iter().map(|(_, s)| s).collect(),
                links: of("FOLLOWS_FROM"),
                tags,
            });
        }
    }
    out
}

/// The one span named `name`.
fn one<'a>(spans: &'a [SpanInfo], name: &str) -> &'a SpanInfo {
    let found: Vec<&SpanInfo> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span in {spans:#?}");
    found[0]
}

fn traceparent(cx: &opentelemetry::Context) -> String {
    let sc = cx.span().span_context().clone();
    format!("00-{}-{}-01", sc.trace_id(), sc.span_id())
}

#[test]
fn traces_and_metrics_of_every_service_reach_jaeger_and_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let jaeger = Jaeger::start(dir.path());
    let mut cluster = Cluster::start_configured(
        1,
        1,
        &[],
        &[format!("tracing.otlp_endpoint=http://{}", jaeger.otlp)],
    );
    let node_http: Vec<String> = cluster.nodes.values().map(|n| n.http.clone()).collect();
    let prometheus = Prometheus::start(
        dir.path(),
        &[
            (
                "streambus-controller",
                cluster
                    .controllers
                    .values()
                    .map(|c| c.http.clone())
                    .collect(),
            ),
            ("streambus-storage-node", node_http.clone()),
            (
                "streambus-gateway",
                cluster.gateways.iter().map(|g| g.http.clone()).collect(),
            ),
        ],
    );
    let gateway = cluster.gateway_addrs[0].clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (provider, create_id, send_id, trace_id) = rt.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", jaeger.otlp))
            .build()
            .unwrap();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("tracing-test-client")
                    .build(),
            )
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("tracing-test");

        // A traced admin call: the topic's creation is committed by the
        // controller inside the client's trace.
        let create = tracer.start("create topic");
        let create_cx = opentelemetry::Context::current_with_span(create);
        let mut admin = AdminServiceClient::connect(format!("http://{gateway}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(streambus_proto::v1::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 2,
            configs: HashMap::new(),
        });
        request
            .metadata_mut()
            .insert("traceparent", traceparent(&create_cx).parse().unwrap());
        admin.create_topic(request).await.unwrap();
        let create_id = create_cx.span().span_context().span_id().to_string();
        create_cx.span().end();

        // A traced send: the record carries the producer span's context.
        let client = Client::connect(gateway.as_str()).await.unwrap();
        let send = tracer.start(format!("send {TOPIC}"));
        let send_cx = opentelemetry::Context::current_with_span(send);
        let producer = client.producer(ProducerConfig::default());
        let record = Record {
            key: None,
            value: Some(Bytes::from("traced record")),
            headers: vec![Header {
                key: "traceparent".into(),
                value: Some(Bytes::from(traceparent(&send_cx))),
            }],
            timestamp_ms: 0,
        };
        producer.send_and_wait(TOPIC, record, None).await.unwrap();
        producer.close().await;
        let send_sc = send_cx.span().span_context().clone();
        send_cx.span().end();

        // The consumer links its processing span to the producer's.
        let mut sub = client
            .subscribe(SubscribeOptions {
                start: StartFrom::Earliest,
                ..SubscribeOptions::new(TOPIC)
            })
            .await
            .unwrap();
        let read = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let header = read
            .headers
            .iter()
            .find(|h| h.key == "traceparent")
            .and_then(|h| h.value.clone())
            .expect("the record kept its traceparent header");
        let parent = String::from_utf8(header.to_vec()).unwrap();
        assert_eq!(
            parent,
            format!("00-{}-{}-01", send_sc.trace_id(), send_sc.span_id())
        );
        let mut process = tracer
            .span_builder(format!("process {TOPIC}"))
            .with_links(vec![Link::with_context(send_sc.clone())])
            .start(&tracer);
        process.end();
        (
            provider,
            create_id,
            send_sc.span_id().to_string(),
            send_sc.trace_id().to_string(),
        )
    });
    provider.shutdown().unwrap();

    // The produce: client → gateway → leader (its rpc, append, log append,
    // wait for the follower) → the follower's append.
    let spans = jaeger.trace(&trace_id, |spans| {
        [
            "send traced",
            "publish traced",
            "streambus.internal.v1.StorageService/Append",
            "append traced",
            "log append",
            "await replication",
            "replicate traced",
        ]
        .iter()
        .all(|name| spans.iter().any(|s| s.name == *name))
    });
    let publish = one(&spans, "publish traced");
    assert_eq!(publish.service, "streambus-gateway");
    assert_eq!(publish.parents, vec![send_id.clone()], "{publish:#?}");
    assert_eq!(publish.tags["messaging.system"], "streambus");
    assert_eq!(publish.tags["messaging.destination.name"], TOPIC);
    assert_eq!(publish.tags["messaging.destination.partition.id"], "0");
    assert_eq!(publish.tags["messaging.batch.message_count"], "1");
    assert_eq!(publish.tags["span.kind"], "producer");
    let rpc = spans
        .iter()
        .find(|s| s.name == "streambus.internal.v1.StorageService/Append")
        .expect("the leader's Append call");
    assert_eq!(rpc.service, "streambus-storage-node");
    assert_eq!(rpc.parents, vec![publish.id.clone()]);
    assert_eq!(rpc.tags["rpc.system"], "grpc");
    assert_eq!(rpc.tags["rpc.method"], "Append");
    let append = one(&spans, "append traced");
    assert_eq!(append.parents, vec![rpc.id.clone()]);
    assert_eq!(append.tags["messaging.destination.name"], TOPIC);
    for inner in ["log append", "await replication"] {
        let s = one(&spans, inner);
        assert_eq!(s.parents, vec![append.id.clone()], "{s:#?}");
        assert_eq!(s.service, "streambus-storage-node");
    }
    assert_eq!(one(&spans, "log append").tags["streambus.fsync"], "true");
    let replicate = one(&spans, "replicate traced");
    assert_eq!(replicate.service, "streambus-storage-node");
    assert_eq!(replicate.parents, vec![append.id.clone()], "{replicate:#?}");
    assert_eq!(replicate.tags["streambus.base_offset"], "0");

    // The consumer's span links to the producer's, from a trace of its own.
    let found = jaeger
        .get("/api/traces?service=tracing-test-client&operation=process%20traced&limit=5")
        .map(|v| spans_of(&v))
        .unwrap_or_default();
    let process = one(&found, "process traced");
    assert_eq!(process.links, vec![(trace_id.clone(), send_id.clone())]);

    // The topic's creation: gateway → controller → the Raft commit, in
    // the client's trace.
    let create_trace = poll("the create trace complete", || {
        let found = jaeger
            .get("/api/traces?service=tracing-test-client&operation=create%20topic&limit=5")
            .map(|v| spans_of(&v))
            .unwrap_or_default();
        let complete = found.iter().any(|s| s.name == "metadata commit")
            && found
                .iter()
                .any(|s| s.name == "streambus.v1.AdminService/CreateTopic");
        if complete {
            Ok(found)
        } else {
            Err(format!("{found:#?}"))
        }
    });
    let commit = one(&create_trace, "metadata commit");
    assert_eq!(commit.service, "streambus-controller");
    let controller_rpc = one(
        &create_trace,
        "streambus.internal.v1.ControllerService/CreateTopic",
    );
    assert_eq!(commit.parents, vec![controller_rpc.id.clone()]);
    let gateway_rpc = one(&create_trace, "streambus.v1.AdminService/CreateTopic");
    assert_eq!(gateway_rpc.service, "streambus-gateway");
    assert_eq!(controller_rpc.parents, vec![gateway_rpc.id.clone()]);
    assert_eq!(gateway_rpc.parents, vec![create_id]);

    check_prometheus(&prometheus, &mut cluster, &node_http);
    drop(cluster);
}

/// Prometheus scraped every service: their series answer queries, with the
/// traced topic's record in them; the alert rules loaded and evaluate, and
/// stopping a storage node that holds a replica of the topic makes the
/// under-replicated alert pending.
fn check_prometheus(prometheus: &Prometheus, cluster: &mut Cluster, node_http: &[String]) {
    let targets = prometheus.wait_targets_up(5);
    let mut jobs: Vec<&str> = targets
        .iter()
        .map(|t| t["labels"]["job"].as_str().unwrap_or_default())
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        [
            "streambus-controller",
            "streambus-gateway",
            "streambus-storage-node",
            "streambus-storage-node",
            "streambus-storage-node"
        ]
    );
    let mut all_nodes = node_http.to_vec();
    all_nodes.sort();

    // Every service's own series.
    let leader = prometheus.wait_for("streambus_controller_is_leader", |r| {
        r.len() == 1 && value(&r[0]) == 1.0
    });
    assert_eq!(leader[0]["metric"]["job"], "streambus-controller");
    prometheus.wait_for("streambus_controller_connections", |r| {
        r.len() == 1 && value(&r[0]) >= 4.0
    });
    prometheus.wait_for("streambus_controller_raft_commit_seconds_count", |r| {
        r.len() == 1 && value(&r[0]) >= 1.0
    });
    let fsyncs = prometheus.wait_for("streambus_storage_fsync_seconds_count", |r| {
        r.len() == 3 && r.iter().map(value).sum::<f64>() > 0.0
    });
    assert_eq!(instances(&fsyncs), all_nodes);
    let connections = prometheus.wait_for("streambus_storage_connections", |r| {
        r.len() == 3 && r.iter().map(value).sum::<f64>() >= 1.0
    });
    assert_eq!(instances(&connections), all_nodes);
    // A histogram: its +Inf bucket holds every fsync counted.
    prometheus.wait_for(
        r#"sum(streambus_storage_fsync_seconds_bucket{le="+Inf"}) - sum(streambus_storage_fsync_seconds_count)"#,
        |r| r.len() == 1 && value(&r[0]) == 0.0,
    );
    prometheus.wait_for(r#"sum(streambus_storage_fsync_seconds_sum)"#, |r| {
        r.len() == 1 && value(&r[0]) > 0.0
    });

    // The traced topic's record, on its leader and its follower.
    let offsets = prometheus.wait_for(
        r#"streambus_storage_partition_log_end_offset{topic="traced"}"#,
        |r| r.len() == 2 && r.iter().all(|s| value(s) == 1.0),
    );
    let mut roles: Vec<&str> = offsets
        .iter()
        .map(|s| s["metric"]["role"].as_str().unwrap_or_default())
        .collect();
    roles.sort();
    assert_eq!(roles, ["follower", "leader"]);
    prometheus.wait_for(
        r#"streambus_storage_partition_high_watermark{topic="traced",role="leader"}"#,
        |r| r.len() == 1 && value(&r[0]) == 1.0,
    );
    prometheus.wait_for(
        r#"sum(streambus_storage_fetch_seconds_count{kind="follower"})"#,
        |r| r.len() == 1 && value(&r[0]) >= 1.0,
    );
    prometheus.wait_for(
        r#"streambus_gateway_topic_produced_bytes_total{topic="traced"}"#,
        |r| r.len() == 1 && value(&r[0]) > 0.0,
    );
    prometheus.wait_for(
        r#"streambus_gateway_topic_consumed_bytes_total{topic="traced"}"#,
        |r| r.len() == 1 && value(&r[0]) > 0.0,
    );
    let append = prometheus.wait_for(
        r#"streambus_gateway_storage_request_seconds_count{method="Append"}"#,
        |r| r.len() == 1 && value(&r[0]) >= 1.0,
    );
    let append_node = append[0]["metric"]["storage_node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    prometheus.wait_for("streambus_gateway_connections_accepted_total", |r| {
        r.len() == 1 && value(&r[0]) >= 1.0
    });

    // The alert rules loaded and evaluate without errors.
    poll("every alert rule evaluated healthy", || {
        let rules: Vec<Value> = prometheus
            .api("/api/v1/rules")
            .and_then(|d| d["groups"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let healthy = rules.len() >= 7
            && rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        if healthy {
            Ok(())
        } else {
            Err(format!("{rules:#?}"))
        }
    });

    // Stop the follower's storage node: the partition is under-replicated
    // and the alert is pending (it fires after its `for`).
    let follower = offsets
        .iter()
        .find(|s| s["metric"]["role"] == "follower")
        .and_then(|s| s["metric"]["instance"].as_str())
        .unwrap()
        .to_string();
    let (_, node) = cluster
        .nodes
        .iter_mut()
        .find(|(_, n)| n.http == follower)
        .expect("the follower is a cluster node");
    assert!(
        !append_node.is_empty(),
        "the Append hop names its storage node"
    );
    node.kill();
    poll(
        "a pending under-replicated alert after a follower stopped",
        || {
            let alerts = prometheus
                .api("/api/v1/alerts")
                .and_then(|d| d["alerts"].as_array().cloned())
                .unwrap_or_default();
            let pending = alerts.iter().any(|a| {
                a["labels"]["alertname"] == "StreamBusUnderReplicatedPartitions"
                    && a["state"] == "pending"
                    && a["value"].as_str().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)
            });
            if pending {
                Ok(())
            } else {
                Err(format!("{alerts:#?}"))
            }
        },
    );
    // The dead node's target is down.
    prometheus.wait_for(&format!(r#"up{{instance="{follower}"}}"#), |r| {
        r.len() == 1 && value(&r[0]) == 0.0
    });
}
