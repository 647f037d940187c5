//! Consumer groups end to end through the SDK against an in-process dev
//! instance: members share a topic's partitions, a member leaving hands
//! its partitions over, committed offsets carry a restarted group on, and
//! offsets are reset and groups deleted only without live members.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use streambus_client::{
    Client, GroupConsumer, GroupEvent, GroupOptions, OffsetReset, ProducerConfig, Reason, Record,
    TopicPartition, v1,
};

const WAIT: Duration = Duration::from_secs(60);

async fn produce(client: &Client, topic: &str, from: usize, to: usize) {
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in from..to {
        let record = Record {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(i.to_string())),
            ..Record::default()
        };
        deliveries.push(producer.send(topic, record, None).await.unwrap());
    }
    producer.flush().await;
    for d in deliveries {
        d.await.unwrap();
    }
    producer.close().await;
}

fn options(group: &str, topic: &str) -> GroupOptions {
    GroupOptions {
        reset: OffsetReset::Earliest,
        auto_commit_interval: Duration::from_millis(200),
        ..GroupOptions::new(group, &[topic])
    }
}

/// What members saw: values, and the partitions each holds.
#[derive(Default)]
struct Seen {
    values: BTreeMap<usize, usize>,
    owned: BTreeSet<TopicPartition>,
}

/// Reads events until `done` holds (or panics after `WAIT`).
async fn read_until(consumer: &mut GroupConsumer, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        let event = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .expect("the condition held in time")
            .expect("the consumer goes on")
            .unwrap();
        apply(seen, event);
    }
}

/// Whatever each member gets within `wait`.
async fn take_events(members: &mut [(GroupConsumer, Seen)], wait: Duration) {
    for (c, seen) in members.iter_mut() {
        while let Ok(Some(e)) = tokio::time::timeout(wait, c.next()).await {
            apply(seen, e.unwrap());
        }
    }
}

fn apply(seen: &mut Seen, event: GroupEvent) {
    match event {
        GroupEvent::Record(_, r) => {
            let v: usize = std::str::from_utf8(r.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            *seen.values.entry(v).or_default() += 1;
        }
        GroupEvent::Assigned(tps) => seen.owned.extend(tps),
        GroupEvent::Revoked(tps) | GroupEvent::Lost(tps) => {
            for tp in tps {
                seen.owned.remove(&tp);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_hand_them_over_and_resume_from_commits() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start_with(dir.path(), |s| {
        s.storage_node.group_session_timeout_ms = 3_000;
        s.storage_node.group_heartbeat_interval_ms = 300;
    })
    .await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic("orders", 12, 1, HashMap::new())
        .await
        .unwrap();

    // Three members: four partitions each, once every member settled.
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push((
            client.group_consumer(options("g", "orders")).await.unwrap(),
            Seen::default(),
        ));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        take_events(&mut members, Duration::from_millis(50)).await;
        let counts: Vec<usize> = members.iter().map(|(_, s)| s.owned.len()).collect();
        if counts == [4, 4, 4] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 4 each: {counts:?}"
        );
    }
    let all: BTreeSet<TopicPartition> = members
        .iter()
        .flat_map(|(_, s)| s.owned.iter().cloned())
        .collect();
    assert_eq!(all.len(), 12);

    // Records are read by the member owning their partition.
    produce(&client, "orders", 0, 600).await;
    let total = |members: &Vec<(GroupConsumer, Seen)>| -> BTreeSet<usize> {
        members
            .iter()
            .flat_map(|(_, s)| s.values.keys().copied())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while total(&members).len() < 600 {
        take_events(&mut members, Duration::from_millis(20)).await;
        assert!(tokio::time::Instant::now() < deadline, "records missing");
    }
    for (c, _) in members.iter_mut() {
        c.commit().await.unwrap();
    }
    let described = client.describe_group("g").await.unwrap();
    assert_eq!(described.group.as_ref().unwrap().members.len(), 3);
    assert_eq!(described.total_lag, 0, "{described:?}");
    assert_eq!(described.partitions.len(), 12);

    // Lag, as the gateway exports it for the partitions its members own:
    // records produced and not yet processed (the members do not read on
    // meanwhile), and how old the first of them is.
    let lag = |name: &str| {
        common::metric_samples(dev.endpoints.http, name)
            .into_iter()
            .filter(|(labels, _)| labels.contains("group=\"g\""))
            .collect::<Vec<_>>()
    };
    assert_eq!(lag("streambus_gateway_group_lag_records").len(), 12);
    assert!(
        lag("streambus_gateway_group_lag_records")
            .iter()
            .all(|(_, v)| *v == 0.0)
    );
    produce(&client, "orders", 600, 720).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while lag("streambus_gateway_group_lag_records")
        .iter()
        .map(|(_, v)| v)
        .sum::<f64>()
        != 120.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            lag("streambus_gateway_group_lag_records")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lag("streambus_gateway_group_lag_seconds")
            .iter()
            .any(|(_, v)| *v > 0.0)
    );
    assert_eq!(
        common::metric(dev.endpoints.http, "streambus_gateway_group_members"),
        3.0
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while (600..720).any(|v| !members.iter().any(|(_, s)| s.values.contains_key(&v))) {
        take_events(&mut members, Duration::from_millis(20)).await;
        assert!(tokio::time::Instant::now() < deadline, "records missing");
    }

    // One leaves: the other two take its partitions over, six each, and
    // read what comes next.
    let (leaving, _) = members.pop().unwrap();
    leaving.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        take_events(&mut members, Duration::from_millis(50)).await;
        let counts: Vec<usize> = members.iter().map(|(_, s)| s.owned.len()).collect();
        if counts == [6, 6] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 6 each: {counts:?}"
        );
    }
    produce(&client, "orders", 720, 900).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while (720..900).any(|v| !members.iter().any(|(_, s)| s.values.contains_key(&v))) {
        take_events(&mut members, Duration::from_millis(20)).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "records after the move missing"
        );
    }

    // While members are live, offsets are not reset and the group is not
    // deleted.
    let reset = |execute| v1::ResetOffsetsRequest {
        group: "g".into(),
        topic: "orders".into(),
        partitions: vec![],
        to: Some(v1::reset_offsets_request::To::Earliest(true)),
        execute,
    };
    let e = client.reset_offsets(reset(false)).await.unwrap_err();
    assert_eq!(e.reason(), Some(Reason::GroupNotEmpty), "{e}");
    let e = client.delete_group("g").await.unwrap_err();
    assert_eq!(e.reason(), Some(Reason::GroupNotEmpty), "{e}");

    // Everyone leaves (committing); a new member of the group starts where
    // they stopped: it reads nothing old, only new records.
    for (c, _) in members.drain(..) {
        c.close().await.unwrap();
    }
    produce(&client, "orders", 900, 960).await;
    let mut again = client.group_consumer(options("g", "orders")).await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut again, &mut seen, |s| {
        (900..960).all(|v| s.values.contains_key(&v))
    })
    .await;
    assert!(
        seen.values.keys().all(|v| *v >= 900),
        "committed records read again: {:?}",
        seen.values
            .keys()
            .filter(|v| **v < 900)
            .take(5)
            .collect::<Vec<_>>()
    );
    again.close().await.unwrap();

    // Without members: the reset plan, then its execution; a member then
    // reads everything again.
    let plan = client.reset_offsets(reset(false)).await.unwrap();
    assert!(!plan.executed);
    assert_eq!(plan.plan.len(), 12);
    assert!(
        plan.plan
            .iter()
            .all(|p| p.new_offset == 0 && p.current_offset > 0)
    );
    let committed = client.committed_offsets("g", &[]).await.unwrap();
    assert!(
        committed.iter().all(|o| o.offset > 0),
        "a dry run changed offsets"
    );
    client.reset_offsets(reset(true)).await.unwrap();
    let mut replay = client.group_consumer(options("g", "orders")).await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut replay, &mut seen, |s| s.values.len() == 960).await;
    replay.close().await.unwrap();

    client.delete_group("g").await.unwrap();
    let listed = client.list_groups().await.unwrap();
    assert!(listed.iter().all(|g| g.group != "g"), "{listed:?}");
    let e = client.delete_group("g").await.unwrap_err();
    assert_eq!(e.reason(), Some(Reason::UnknownGroup), "{e}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic("t", 2, 1, HashMap::new())
        .await
        .unwrap();

    // The internal topic is not the admin API's to change.
    client.describe_group("nobody").await.unwrap();
    let producer = client.producer(ProducerConfig::default());
    let forged = producer
        .send("__groups", Record::default(), None)
        .await
        .unwrap()
        .await
        .unwrap_err();
    producer.close().await;
    for e in [
        forged,
        client.delete_topic("__groups").await.unwrap_err(),
        client.create_partitions("__groups", 100).await.unwrap_err(),
    ] {
        assert_eq!(e.reason(), Some(Reason::InvalidArgument), "{e}");
    }
    // A subscription naming both topics and a pattern, a bad pattern, an
    // unknown assignor.
    let mut both = GroupOptions::new("g", &["t"]);
    both.pattern = Some("t.*".into());
    let mut bad_pattern = GroupOptions::new("g", &[]);
    bad_pattern.pattern = Some("t(".into());
    let mut bad_assignor = GroupOptions::new("g", &["t"]);
    bad_assignor.assignor = Some("uniform".into());
    for o in [
        both,
        bad_pattern,
        bad_assignor,
        GroupOptions::new("", &["t"]),
    ] {
        let e = client.group_consumer(o).await.unwrap_err();
        assert_eq!(e.reason(), Some(Reason::InvalidArgument), "{e}");
    }
    // Resetting an unknown topic, or to nowhere.
    let e = client
        .reset_offsets(v1::ResetOffsetsRequest {
            group: "g".into(),
            topic: "nope".into(),
            partitions: vec![],
            to: Some(v1::reset_offsets_request::To::Latest(true)),
            execute: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::UnknownTopic), "{e}");
    let e = client
        .reset_offsets(v1::ResetOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            partitions: vec![],
            to: None,
            execute: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::InvalidArgument), "{e}");
    // The gateway serves on.
    let mut c = client
        .group_consumer(GroupOptions::new("g", &["t"]))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        GroupEvent::Assigned(vec![
            TopicPartition {
                topic: "t".into(),
                partition: 0
            },
            TopicPartition {
                topic: "t".into(),
                partition: 1
            },
        ])
    );
    c.close().await.unwrap();
    dev.stop().await;
}

/// Runs the `streambus` CLI against the dev instance: (exit ok, stdout,
/// stderr).
fn cli(gateway: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(args)
        .env("STREAMBUS_GATEWAY", gateway)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_consumes_as_a_group_and_manages_groups() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let gw = dev.gateway();
    let client = Client::connect(gw.clone()).await.unwrap();
    client
        .create_topic("cli-orders", 3, 1, HashMap::new())
        .await
        .unwrap();
    produce(&client, "cli-orders", 0, 30).await;

    // A member reads 20 records, commits and leaves; the next one reads the
    // 10 after them.
    let gw2 = gw.clone();
    let (ok, first, err) = tokio::task::spawn_blocking(move || {
        cli(
            &gw2,
            &[
                "consume",
                "cli-orders",
                "--group",
                "billing",
                "--from-beginning",
                "-n",
                "20",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(first.lines().count(), 20);
    assert!(err.contains("assigned cli-orders/"), "{err}");
    let gw2 = gw.clone();
    let (ok, rest, err) = tokio::task::spawn_blocking(move || {
        cli(
            &gw2,
            &["consume", "cli-orders", "--group", "billing", "-n", "10"],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let all: BTreeSet<usize> = first
        .lines()
        .chain(rest.lines())
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(all, (0..30).collect());

    let run = |args: &'static [&'static str]| {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || cli(&gw, args))
    };
    let (ok, out, _) = run(&["group", "list"]).await.unwrap();
    assert!(ok);
    assert!(out.starts_with("GROUP"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("billing") && l.contains("empty")),
        "{out}"
    );
    let (ok, out, _) = run(&["group", "describe", "billing"]).await.unwrap();
    assert!(ok);
    assert!(out.contains("state:     empty"), "{out}");
    assert!(out.contains("total lag: 0"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("cli-orders")).count(),
        3,
        "{out}"
    );

    // The plan, then its execution.
    let (ok, out, _) = run(&[
        "group",
        "reset-offsets",
        "billing",
        "--topic",
        "cli-orders",
        "--to-earliest",
    ])
    .await
    .unwrap();
    assert!(ok);
    assert!(out.contains("dry run"), "{out}");
    let (ok, _, _) = run(&["group", "describe", "billing"]).await.unwrap();
    assert!(ok);
    let (ok, out, err) = run(&[
        "group",
        "reset-offsets",
        "billing",
        "--topic",
        "cli-orders",
        "--shift-by",
        "-2",
        "--execute",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("committed the new offsets"), "{out}");
    let d = client.describe_group("billing").await.unwrap();
    assert_eq!(d.total_lag, 6, "{d:?}");

    // Errors: an unknown group, reset with nowhere to go, a live member.
    let (ok, _, err) = run(&["group", "describe", "nobody"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("UNKNOWN_GROUP"), "{err}");
    let (ok, _, err) = run(&["group", "reset-offsets", "billing", "--topic", "cli-orders"])
        .await
        .unwrap();
    assert!(!ok, "{err}");
    let mut live = client
        .group_consumer(GroupOptions::new("billing", &["cli-orders"]))
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), live.next()).await;
    let (ok, _, err) = run(&[
        "group",
        "reset-offsets",
        "billing",
        "--topic",
        "cli-orders",
        "--to-latest",
        "--execute",
    ])
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("GROUP_NOT_EMPTY"), "{err}");
    let (ok, _, err) = run(&["group", "delete", "billing"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("GROUP_NOT_EMPTY"), "{err}");
    live.close().await.unwrap();
    let (ok, out, err) = run(&["group", "delete", "billing"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "deleted group billing\n");
    dev.stop().await;
}
