//! The CLI against a dev instance, as a user runs it.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn streambus(gateway: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(args)
        .env("STREAMBUS_GATEWAY", gateway)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Waits for `child` to exit; kills it and fails after `limit`.
fn finish_within(mut child: std::process::Child, limit: std::time::Duration) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stdout:\n{}",
                text(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_produces_consumes_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let gw = dev.gateway();
    let gw = gw.as_str();
    tokio::task::spawn_blocking({
        let gw = gw.to_string();
        move || {
            let gw = gw.as_str();
            let out = streambus(
                gw,
                &[
                    "topic",
                    "create",
                    "cli",
                    "--partitions",
                    "2",
                    "--config",
                    "retention.ms=3600000",
                ],
                None,
            );
            assert!(out.status.success(), "{}", text(&out.stderr));

            let out = streambus(gw, &["topic", "list"], None);
            assert!(text(&out.stdout).contains("cli"), "{}", text(&out.stdout));

            let lines: String = (0..50).map(|i| format!("line-{i}\n")).collect();
            let out = streambus(
                gw,
                &["produce", "cli", "--key", "k", "--header", "src=test"],
                Some(&lines),
            );
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert!(out.stdout.is_empty(), "produce is silent without -v");

            let out = streambus(
                gw,
                &["consume", "cli", "--from-beginning", "--max-messages", "50"],
                None,
            );
            assert!(out.status.success(), "{}", text(&out.stderr));
            let got: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
            let want: Vec<String> = (0..50).map(|i| format!("line-{i}")).collect();
            assert_eq!(got, want, "one key: one partition, in order");

            let out = streambus(
                gw,
                &[
                    "consume",
                    "cli",
                    "--from-beginning",
                    "--max-messages",
                    "1",
                    "--format",
                    "json",
                ],
                None,
            );
            let json = text(&out.stdout);
            assert!(
                json.contains("\"value\":\"line-0\"") && json.contains("\"src\""),
                "{json}"
            );

            let out = streambus(gw, &["topic", "describe", "cli"], None);
            let d = text(&out.stdout);
            assert!(d.contains("retention.ms") && d.contains("3600000"), "{d}");

            let out = streambus(gw, &["topic", "describe", "missing"], None);
            assert!(!out.status.success());
            assert!(
                text(&out.stderr).contains("UNKNOWN_TOPIC"),
                "{}",
                text(&out.stderr)
            );

            let out = streambus(
                gw,
                &["topic", "create", "bad name", "--partitions", "1"],
                None,
            );
            assert!(!out.status.success());
            assert!(text(&out.stderr).contains("INVALID_TOPIC_NAME"));

            let out = streambus(gw, &["produce", "missing"], Some("x\n"));
            assert!(!out.status.success());

            let out = streambus(gw, &["cluster", "status"], None);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let status = text(&out.stdout);
            assert!(status.contains("leader"), "{status}");
            assert!(
                status.contains("UNDER-REPLICATED PARTITIONS: none"),
                "{status}"
            );
            assert!(status.contains("OFFLINE PARTITIONS: none"), "{status}");
            let out = streambus(gw, &["cluster", "status", "--format", "json"], None);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(status["controllers"][0]["state"], "leader", "{status}");
            assert_eq!(status["controllers"][0]["reachable"], true, "{status}");
            assert_eq!(status["storage_nodes"][0]["alive"], true, "{status}");
            // Two partitions of "cli", both led by the one storage node.
            assert_eq!(
                status["storage_nodes"][0]["leader_partitions"], 2,
                "{status}"
            );
            assert_eq!(status["offline"], serde_json::json!([]), "{status}");

            let out = streambus(gw, &["topic", "delete", "cli"], None);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    })
    .await
    .unwrap();
    dev.stop().await;
}

/// The outage this guards against: `segment.bytes=20` used to be accepted,
/// then refused by the storage node's log, which stopped applying metadata
/// and never became ready again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_config_is_refused_and_the_node_stays_up_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let gw = dev.gateway();
    let gw2 = gw.clone();
    tokio::task::spawn_blocking(move || {
        let gw = gw2.as_str();
        let out = streambus(
            gw,
            &["topic", "create", "bad", "--config", "segment.bytes=20"],
            None,
        );
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("INVALID_CONFIG"), "{err}");
        assert!(
            err.contains("segment.bytes") && err.contains("61 to 2147483647"),
            "{err}"
        );
        let out = streambus(gw, &["topic", "create", "good", "--partitions", "2"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    })
    .await
    .unwrap();
    // The create is answered once the controller applied it; the storage
    // node opens the partitions a moment later.
    let storage = dir.path().join("storage");
    let p1 = || {
        std::fs::read_dir(&storage)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("good-1-"))
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p1().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "partition 1 never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    dev.stop().await;

    // A restart is ready again, and the partition whose log can no longer
    // be opened is offline while the other one serves.
    let p1 = p1().expect("partition 1 directory");
    std::fs::remove_dir_all(&p1).unwrap();
    std::fs::write(&p1, b"not a directory").unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let gw = dev.gateway();
    tokio::task::spawn_blocking(move || {
        let gw = gw.as_str();
        let out = streambus(gw, &["produce", "good", "--partition", "0"], Some("a\n"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = streambus(gw, &["produce", "good", "--partition", "1"], Some("b\n"));
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("PARTITION_OFFLINE"), "{err}");
        // A subscription to every partition reads the one that serves:
        // the offline one waits, it does not end the subscription (which
        // still runs when more records come a second later).
        let consumer = Command::new(env!("CARGO_BIN_EXE_streambus"))
            .args(["consume", "good", "--from-beginning", "-n", "2"])
            .env("STREAMBUS_GATEWAY", gw)
            .env(
                "STREAMBUS_CLIENT_CONFIG",
                "/nonexistent/streambus-client.toml",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let out = streambus(gw, &["produce", "good", "--partition", "0"], Some("c\n"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = finish_within(consumer, std::time::Duration::from_secs(20));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "a\nc\n");
        // The heartbeat reports it; describe shows it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = streambus(gw, &["topic", "describe", "good"], None);
            let d = text(&out.stdout);
            let row = d
                .lines()
                .find(|l| l.starts_with("1 "))
                .unwrap_or_default()
                .to_string();
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.get(5) == Some(&"1") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not reported offline:\n{d}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    dev.stop().await;
}

/// `topic alter` grows a topic; a `consume` of every partition that was
/// already running reads the new partitions from their start (its
/// `--offset` is for the partitions it started with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alter_adds_partitions_that_a_running_consumer_reads() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let gw = dev.gateway();
    tokio::task::spawn_blocking(move || {
        let gw = gw.as_str();
        let out = streambus(gw, &["topic", "create", "grow", "--partitions", "2"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        for p in ["0", "1"] {
            let out = streambus(gw, &["produce", "grow", "-p", p], Some("1\n2\n3\n4\n5\n"));
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let consumer = Command::new(env!("CARGO_BIN_EXE_streambus"))
            .args([
                "consume",
                "grow",
                "--offset",
                "5",
                "--max-messages",
                "6",
                "--format",
                "json",
            ])
            .env("STREAMBUS_GATEWAY", gw)
            .env(
                "STREAMBUS_CLIENT_CONFIG",
                "/nonexistent/streambus-client.toml",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let it subscribe to the two partitions there are.
        std::thread::sleep(std::time::Duration::from_secs(1));

        let out = streambus(gw, &["topic", "alter", "grow", "--partitions", "4"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            "topic grow now has 4 partitions (was 2)\n"
        );
        let out = streambus(gw, &["topic", "alter", "grow", "--partitions", "4"], None);
        assert_eq!(text(&out.stdout), "topic grow already has 4 partitions\n");
        let out = streambus(gw, &["topic", "describe", "grow"], None);
        assert!(
            text(&out.stdout).contains("PARTITIONS          4"),
            "{}",
            text(&out.stdout)
        );
        for p in ["2", "3"] {
            let out = streambus(gw, &["produce", "grow", "-p", p], Some("a\nb\nc\n"));
            assert!(out.status.success(), "{}", text(&out.stderr));
        }

        let out = finish_within(consumer, std::time::Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut got: Vec<(u64, u64, String)> = text(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["partition"].as_u64().unwrap(),
                    v["offset"].as_u64().unwrap(),
                    v["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(u64, u64, String)> = [2, 3]
            .into_iter()
            .flat_map(|p| {
                ["a", "b", "c"]
                    .into_iter()
                    .enumerate()
                    .map(move |(o, v)| (p, o as u64, v.to_string()))
            })
            .collect();
        assert_eq!(got, want);

        // Shrinking is refused, and so is an unknown topic or node.
        let out = streambus(gw, &["topic", "alter", "grow", "--partitions", "3"], None);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains("has 4 partitions"),
            "{err}"
        );
        let out = streambus(
            gw,
            &["topic", "alter", "missing", "--partitions", "3"],
            None,
        );
        assert!(
            text(&out.stderr).contains("UNKNOWN_TOPIC"),
            "{}",
            text(&out.stderr)
        );
        let out = streambus(gw, &["cluster", "decommission", "9"], None);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains("storage node 9 is not registered"),
            "{err}"
        );
    })
    .await
    .unwrap();
    dev.stop().await;
}

/// `topic alter --config` changes a running topic: a lowered retention
/// frees segments at once (not at the next maintenance interval, a
/// minute by default), bad values are refused naming the key, and
/// `--delete-config` goes back to the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_config_changes_apply_at_once_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let gw = dev.gateway();
    tokio::task::spawn_blocking(move || {
        let gw = gw.as_str();
        let out = streambus(
            gw,
            &["topic", "create", "cfg", "--config", "segment.bytes=1024"],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Each run is one batch of about 1.5 KiB: a segment of its own.
        let lines: String = (0..20).map(|i| format!("{i:060}\n")).collect();
        for _ in 0..5 {
            let out = streambus(gw, &["produce", "cfg"], Some(&lines));
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let log_start = || {
            let out = streambus(gw, &["topic", "describe", "cfg"], None);
            let d = text(&out.stdout);
            let row = d.lines().find(|l| l.starts_with("0 ")).unwrap_or_default();
            let cols: Vec<&str> = row.split_whitespace().collect();
            (
                cols[6].parse::<i64>().unwrap(),
                cols[8].parse::<i64>().unwrap(),
                d,
            )
        };
        assert_eq!(log_start().0, 0);

        let out = streambus(
            gw,
            &["topic", "alter", "cfg", "--config", "retention.bytes=0"],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "topic cfg: retention.bytes -1 -> 0\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (start, end, d) = log_start();
            assert_eq!(end, 100, "{d}");
            if start == 80 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "retention did not apply:\n{d}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = streambus(gw, &["topic", "describe", "cfg"], None);
        assert!(
            text(&out.stdout)
                .lines()
                .any(|l| l.split_whitespace().eq(["retention.bytes", "0"])),
            "{}",
            text(&out.stdout)
        );

        for (args, reason, mention) in [
            (
                &["topic", "alter", "cfg", "--config", "segment.bytes=20"][..],
                "INVALID_CONFIG",
                "segment.bytes",
            ),
            (
                &["topic", "alter", "cfg", "--config", "min.insync.replicas=2"][..],
                "INVALID_CONFIG",
                "replication factor 1",
            ),
            (
                &["topic", "alter", "cfg", "--config", "no.such.key=1"][..],
                "INVALID_CONFIG",
                "no.such.key",
            ),
            (
                &["topic", "alter", "nope", "--config", "retention.ms=1"][..],
                "UNKNOWN_TOPIC",
                "nope",
            ),
            (
                &["topic", "alter", "cfg", "--config", "fsync.policy=never"][..],
                "INVALID_CONFIG",
                "fsync.policy cannot change",
            ),
        ] {
            let out = streambus(gw, args, None);
            assert!(!out.status.success(), "{args:?} succeeded");
            let err = text(&out.stderr);
            assert!(
                err.contains(reason) && err.contains(mention),
                "{args:?}: {err}"
            );
        }
        let out = streambus(gw, &["topic", "alter", "cfg"], None);
        assert!(!out.status.success(), "alter without a change succeeded");

        let reset = [
            "topic",
            "alter",
            "cfg",
            "--delete-config",
            "retention.bytes",
        ];
        let out = streambus(gw, &reset, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "topic cfg: retention.bytes 0 -> -1\n");
        let out = streambus(gw, &reset, None);
        assert_eq!(text(&out.stdout), "topic cfg: configuration unchanged\n");
        // Still serving.
        let out = streambus(gw, &["produce", "cfg"], Some("after\n"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    })
    .await
    .unwrap();
    dev.stop().await;
}
