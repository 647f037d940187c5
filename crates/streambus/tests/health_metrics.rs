//! The metrics an operator alerts on, from real processes: per-partition
//! offsets on the storage nodes, and on the controller the partitions left
//! offline or under-replicated when a storage node dies, leader changes
//! and Raft commit latency.

mod procs;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use procs::Cluster;
use streambus_client::{Client, GroupEvent, GroupOptions, OffsetReset, ProducerConfig, Record};

/// The `/metrics` text of the process whose HTTP endpoint is `http`.
fn scrape(http: &str) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `series` (name and labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `f` holds for the scrape of `http`.
fn wait_for(http: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(http);
        if f(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn offsets_and_partition_health_are_exported() {
    let mut cluster = Cluster::start(1, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _member = rt.block_on(async {
        let client = Client::connect(cluster.gateway_addrs[0].as_str())
            .await
            .unwrap();
        // One single-replica partition per node, and one on all three.
        client
            .create_topic("solo", 3, 1, HashMap::new())
            .await
            .unwrap();
        client
            .create_topic("triple", 1, 3, HashMap::new())
            .await
            .unwrap();
        let producer = client.producer(ProducerConfig::default());
        for (topic, partition, n) in [
            ("solo", 0, 3),
            ("solo", 1, 1),
            ("solo", 2, 2),
            ("triple", 0, 5),
        ] {
            for _ in 0..n {
                let record = Record {
                    value: Some(Bytes::from_static(b"v")),
                    ..Record::default()
                };
                producer
                    .send_and_wait(topic, record, Some(partition))
                    .await
                    .unwrap();
            }
        }
        producer.close().await;
        let fetched = client.fetch("solo", 0, 0, 0, Duration::ZERO).await.unwrap();
        assert_eq!(fetched.records.len(), 3);
        // A failed call, counted in request_errors.
        assert!(
            client
                .fetch("missing", 0, 0, 0, Duration::ZERO)
                .await
                .is_err()
        );
        // A group member that read part of solo: its lag is exported.
        let mut member = client
            .group_consumer(GroupOptions {
                reset: OffsetReset::Earliest,
                auto_commit_interval: Duration::from_millis(200),
                ..GroupOptions::new("g", &["solo"])
            })
            .await
            .unwrap();
        let mut read = 0;
        while read < 3 {
            let event = tokio::time::timeout(Duration::from_secs(30), member.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            read += usize::from(matches!(event, GroupEvent::Record(..)));
        }
        member.commit().await.unwrap();
        (client, member)
    });

    // Bytes in and out per topic, on the gateway.
    let gateway = scrape(&cluster.gateways[0].http);
    for series in [
        "streambus_gateway_topic_produced_bytes_total{topic=\"solo\"}",
        "streambus_gateway_topic_produced_bytes_total{topic=\"triple\"}",
        "streambus_gateway_topic_consumed_bytes_total{topic=\"solo\"}",
    ] {
        assert!(
            sample(&gateway, series).unwrap_or(0.0) > 0.0,
            "{series}:\n{gateway}"
        );
    }

    // Each solo partition's leader reports its offsets; every triple
    // replica its own, the leader and the followers alike.
    let mut solo = HashMap::new();
    let mut led_by_3 = 0;
    for (id, node) in &cluster.nodes {
        let text = wait_for(&node.http, "triple's replicas caught up", |t| {
            ["leader", "follower"].iter().any(|role| {
                sample(
                    t,
                    &format!(
                        "streambus_storage_partition_high_watermark{{topic=\"triple\",partition=\"0\",role=\"{role}\"}}"
                    ),
                ) == Some(5.0)
            })
        });
        for p in 0..3 {
            let series = format!(
                "streambus_storage_partition_log_end_offset{{topic=\"solo\",partition=\"{p}\",role=\"leader\"}}"
            );
            if let Some(end) = sample(&text, &series) {
                solo.insert(p, end);
                led_by_3 += usize::from(*id == 3);
                let hw = format!(
                    "streambus_storage_partition_high_watermark{{topic=\"solo\",partition=\"{p}\",role=\"leader\"}}"
                );
                assert_eq!(sample(&text, &hw), Some(end), "{text}");
            }
        }
    }
    assert_eq!(solo, HashMap::from([(0, 3.0), (1, 1.0), (2, 2.0)]));

    // Every metric the dashboard names is in a scrape of some process.
    wait_for(&cluster.gateways[0].http, "group lag exported", |t| {
        t.contains("streambus_gateway_group_lag_records{")
            && t.contains("streambus_gateway_group_lag_seconds{")
            && t.contains("streambus_gateway_request_errors_total{")
    });
    let mut scraped = scrape(&cluster.controllers[&1].http);
    for p in cluster.nodes.values().chain(&cluster.gateways) {
        scraped.push_str(&scrape(&p.http));
    }
    check_dashboard(&scraped, cluster.dir.path());

    let controller = cluster.controllers[&1].http.clone();
    let text = wait_for(&controller, "health observed", |t| {
        sample(t, "streambus_controller_offline_partitions") == Some(0.0)
    });
    assert_eq!(
        sample(&text, "streambus_controller_under_replicated_partitions"),
        Some(0.0)
    );
    assert!(
        sample(&text, "streambus_controller_leader_changes_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "streambus_controller_raft_commit_seconds_count").unwrap() >= 2.0,
        "{text}"
    );

    // A storage node dies: its single-replica partitions have no leader
    // left, and triple loses an in-sync replica.
    assert!(led_by_3 >= 1, "placement gives node 3 a solo partition");
    cluster.nodes.get_mut(&3).unwrap().kill();
    wait_for(&controller, "node 3's solo partitions offline", |t| {
        sample(t, "streambus_controller_offline_partitions") == Some(led_by_3 as f64)
    });
    let text = wait_for(&controller, "triple under-replicated", |t| {
        // triple, and the partitions of the group offsets topic that node
        // 3 held.
        sample(t, "streambus_controller_under_replicated_partitions").is_some_and(|n| n >= 1.0)
    });
    let under = sample(&text, "streambus_controller_under_replicated_partitions").unwrap();

    // The alert rules fire on what the scrape shows, held for 10 minutes.
    let held = |series: &str| -> String {
        let value = sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        format!("{value}x10")
    };
    let rules = alert_rules();
    let alert = |name: &str, severity: &str, summary: String| {
        format!(
            "      - eval_time: 10m\n        alertname: {name}\n        exp_alerts:\n          - exp_labels: {{severity: {severity}}}\n            exp_annotations:\n              summary: {summary:?}\n              description: {:?}\n",
            rules[name]
        )
    };
    let unit = format!(
        "rule_files: [{rules:?}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{offline}{under}      - eval_time: 10m\n        alertname: StreamBusControllerWithoutLeader\n        exp_alerts: []\n",
        rules = alerts_file().display().to_string(),
        series = [
            "streambus_controller_offline_partitions",
            "streambus_controller_under_replicated_partitions",
            "streambus_controller_is_leader",
        ]
        .iter()
        .map(|name| format!(
            "      - series: '{name}{{instance=\"controller-1\"}}'\n        values: '{}'\n",
            held(name)
        ))
        .collect::<String>(),
        offline = alert(
            "StreamBusOfflinePartitions",
            "critical",
            format!("{led_by_3} StreamBus partitions have no serving leader"),
        ),
        under = alert(
            "StreamBusUnderReplicatedPartitions",
            "warning",
            format!("{under} StreamBus partitions have fewer in-sync replicas than replicas"),
        ),
    );
    let file = cluster.dir.path().join("alerts_test.yml");
    std::fs::write(&file, &unit).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}\n{unit}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks `deploy/observability/grafana-dashboard.json`: it parses, every
/// panel query parses as PromQL (`promtool check rules` on a recording
/// rule per query), and every metric a query names is in `scraped` (the
/// text of a scrape of every role), as a sample or a declared family.
fn check_dashboard(scraped: &str, dir: &std::path::Path) {
    let path = alerts_file().with_file_name("grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| format!("      - record: dashboard_query_{i}\n        expr: {e:?}\n"))
        .collect();
    let file = dir.join("dashboard_rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "dashboard queries:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names = std::collections::HashSet::new();
    for line in scraped.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        names.extend(name.filter(|n| !n.is_empty()).map(str::to_string));
    }
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("streambus_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // A family without samples yet is declared by its base name.
            let declared = names.contains(&name)
                || ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix).is_some_and(|b| names.contains(b)));
            assert!(
                declared,
                "the dashboard's {name} (in {expr}) is in no scrape"
            );
            rest = &rest[at + name.len()..];
        }
    }
}

fn alerts_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/observability/alerts.yml")
        .canonicalize()
        .unwrap()
}

/// Each alert's description, from the rule file.
fn alert_rules() -> HashMap<String, String> {
    let text = std::fs::read_to_string(alerts_file()).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = HashMap::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.insert(
                rule["alert"].as_str().unwrap().to_string(),
                rule["annotations"]["description"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    out
}

#[test]
fn the_alert_rules_are_valid_and_the_prometheus_rule_holds_the_same() {
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(alerts_file())
        .output()
        .expect("promtool runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let plain: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(alerts_file()).unwrap()).unwrap();
    let operator: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(alerts_file().with_file_name("prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
    let names: Vec<String> = alert_rules().into_keys().collect();
    for expected in [
        "StreamBusOfflinePartitions",
        "StreamBusUnderReplicatedPartitions",
        "StreamBusBelowMinIsr",
        "StreamBusControllerWithoutLeader",
        "StreamBusDiskNearlyFull",
        "StreamBusConsumerLagGrowing",
        "StreamBusProduceLatencyHigh",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

/// The Helm chart installs the rules and the dashboard from copies of its
/// own (a chart reads only files inside it); they must not drift.
#[test]
fn the_chart_ships_the_alert_rules_and_dashboard_unchanged() {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/streambus/files");
    for name in ["alerts.yml", "grafana-dashboard.json"] {
        let deployed = std::fs::read_to_string(alerts_file().with_file_name(name)).unwrap();
        let shipped = std::fs::read_to_string(chart.join(name)).unwrap();
        assert!(
            deployed == shipped,
            "helm/streambus/files/{name} differs from deploy/observability/{name}: copy it over"
        );
    }
}
