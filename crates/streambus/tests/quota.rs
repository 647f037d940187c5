//! Quotas end to end on separate processes: a principal held to N bytes
//! per second of produce and of consume by a gateway, within 10 % over
//! the measured time and without errors, while a principal without a quota
//! on the same gateway goes at full speed.

mod procs;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use procs::{Cluster, connect_with_token, scrape};
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const ADMIN: &str = "admin-token-0123456789abcdef";
const SLOW: &str = "slow-token-0123456789abcdef00";
const FAST: &str = "fast-token-0123456789abcdef00";

/// The limited principal's produce and consume rate.
const N: u64 = 256 * 1024;
const MEASURED: Duration = Duration::from_secs(20);

fn cli(gateway: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(args)
        .args(["--gateway", gateway, "--token", ADMIN])
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Produces 1 KiB records to `topic` as fast as the gateway lets it,
/// until `stop`; returns the delivery errors.
async fn flood(client: Client, topic: &'static str, stop: Instant) -> u64 {
    let producer = client.producer(ProducerConfig {
        // A small buffer: records wait in `send`, not past their delivery
        // timeout in the buffer.
        max_buffered_bytes: 1 << 20,
        max_batch_bytes: 64 * 1024,
        ..ProducerConfig::default()
    });
    let errors = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; 1024]);
    while Instant::now() < stop {
        let record = Record {
            key: None,
            value: Some(value.clone()),
            headers: vec![],
            timestamp_ms: 0,
        };
        let delivery = producer.send(topic, record, None).await.unwrap();
        let errors = errors.clone();
        tokio::spawn(async move {
            if let Err(e) = delivery.await {
                eprintln!("delivery failed: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    producer.flush().await;
    errors.load(Ordering::Relaxed)
}

fn produced(http: &str, topic: &str) -> f64 {
    scrape(
        http,
        &format!("streambus_gateway_topic_produced_bytes_total{{topic=\"{topic}\"}}"),
    )
}

fn consumed(http: &str, topic: &str) -> f64 {
    scrape(
        http,
        &format!("streambus_gateway_topic_consumed_bytes_total{{topic=\"{topic}\"}}"),
    )
}

#[test]
fn a_quota_holds_its_principal_to_its_rate_and_leaves_the_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nslow {SLOW}\nfast {FAST}\n"),
    )
    .unwrap();
    let cluster = Cluster::start_configured(
        1,
        1,
        &[],
        &[format!("gateway.auth.token_file={}", tokens.display())],
    );
    let gateway = cluster.gateway_addrs[0].clone();
    let http = cluster.gateways[0].http.clone();
    cli(&gateway, &["topic", "create", "slow", "-p", "2"]);
    cli(&gateway, &["topic", "create", "fast", "-p", "2"]);
    let n = N.to_string();
    cli(
        &gateway,
        &[
            "quota",
            "set",
            "User:slow",
            "--produce-bytes-per-second",
            &n,
            "--consume-bytes-per-second",
            &n,
        ],
    );
    let listed = cli(&gateway, &["quota", "list"]);
    let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["User:slow", &n, &n, "-"], "{listed}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let slow = connect_with_token(&gateway, SLOW).await;
        let fast = connect_with_token(&gateway, FAST).await;
        // Both start together; the first two seconds are left out (the
        // first batches of the limited producer go at once).
        let stop = Instant::now() + MEASURED + Duration::from_secs(3);
        let slow_task = tokio::spawn(flood(slow.clone(), "slow", stop));
        let fast_task = tokio::spawn(flood(fast, "fast", stop));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (slow0, fast0) = (produced(&http, "slow"), produced(&http, "fast"));
        let t0 = Instant::now();
        tokio::time::sleep(MEASURED).await;
        let (slow1, fast1) = (produced(&http, "slow"), produced(&http, "fast"));
        let secs = t0.elapsed().as_secs_f64();
        let slow_rate = (slow1 - slow0) / secs;
        let fast_rate = (fast1 - fast0) / secs;
        eprintln!("produce: limited {slow_rate:.0} B/s (quota {N}), unlimited {fast_rate:.0} B/s");
        assert!(
            (slow_rate - N as f64).abs() <= 0.1 * N as f64,
            "the limited producer made {slow_rate:.0} B/s against a quota of {N}"
        );
        assert!(
            fast_rate >= 4.0 * N as f64,
            "the unlimited producer made only {fast_rate:.0} B/s"
        );
        assert_eq!(slow_task.await.unwrap(), 0, "throttling is not an error");
        assert_eq!(fast_task.await.unwrap(), 0);
        let throttled = scrape(
            &http,
            "streambus_gateway_throttle_seconds_count{kind=\"produce\"}",
        );
        assert!(throttled > 0.0, "no produce call waited");

        // Consume: the limited principal reads its topic back at N.
        let mut sub = slow
            .subscribe(SubscribeOptions {
                start: StartFrom::Earliest,
                max_bytes: 64 * 1024,
                ..SubscribeOptions::new("slow")
            })
            .await
            .unwrap();
        let reader = tokio::spawn(async move {
            let mut throttled = 0u64;
            while let Some(r) = sub.next().await {
                r.unwrap();
                throttled += 1;
            }
            throttled
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c0 = consumed(&http, "slow");
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rate = (consumed(&http, "slow") - c0) / t0.elapsed().as_secs_f64();
        eprintln!("consume: limited {rate:.0} B/s (quota {N})");
        assert!(
            (rate - N as f64).abs() <= 0.1 * N as f64,
            "the limited consumer read {rate:.0} B/s against a quota of {N}"
        );
        reader.abort();
        assert!(
            scrape(
                &http,
                "streambus_gateway_throttle_seconds_count{kind=\"consume\"}",
            ) > 0.0
        );
    });

    // A request rate: 11 calls at 5 per second take 2 s.
    cli(
        &gateway,
        &["quota", "set", "User:fast", "--requests-per-second", "5"],
    );
    rt.block_on(async {
        let fast = connect_with_token(&gateway, FAST).await;
        let started = Instant::now();
        for _ in 0..11 {
            fast.list_topics().await.unwrap();
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900),
            "11 calls at 5/s took {took:?}"
        );
    });
    assert!(
        scrape(
            &http,
            "streambus_gateway_throttle_seconds_count{kind=\"request\"}",
        ) >= 10.0
    );

    // Removed, the principal is free again.
    cli(&gateway, &["quota", "delete", "User:slow"]);
    cli(&gateway, &["quota", "delete", "User:fast"]);
    assert_eq!(cli(&gateway, &["quota", "list"]).lines().count(), 1);
    drop(cluster);
}
