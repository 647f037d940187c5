//! The gateway against fake controllers and storage nodes over loopback
//! gRPC: leader moves, stuck storage nodes, acks=NONE floods, readiness.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Behaviour, FakeController, FakeStorage, Gateway, metadata};
use prost::Message;
use streambus_gateway::GatewayConfig;
use streambus_proto::v1::{Acks, ProduceBatch, ProduceRequest, ProduceStreamRequest, Record};
use streambus_proto::{Error, Reason};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn records(n: usize, size: usize) -> Vec<Record> {
    (0..n)
        .map(|_| Record {
            key: None,
            value: Some(Bytes::from(vec![7u8; size])),
            headers: vec![],
            timestamp_ms: 0,
        })
        .collect()
}

fn batch(partition: u32, n: usize) -> ProduceBatch {
    ProduceBatch {
        topic: "t".to_string(),
        partition: Some(partition),
        records: records(n, 100),
        encoded_batch: Bytes::new(),
        traceparent: String::new(),
    }
}

fn request(batches: Vec<ProduceBatch>, acks: Acks, timeout_ms: u32) -> ProduceRequest {
    ProduceRequest {
        batches,
        acks: acks as i32,
        timeout_ms,
    }
}

#[tokio::test]
async fn not_leader_retry_follows_the_leader_move() {
    let second = FakeStorage::start(Behaviour::Accept).await;
    let first = FakeStorage::start(Behaviour::NotLeader(second.address())).await;
    let nodes = vec![(1, first.address()), (2, second.address())];
    let controller = FakeController::start(metadata(1, &nodes, &[1])).await;
    {
        // The leader moves while the first node refuses.
        let controller = controller.clone();
        let nodes = nodes.clone();
        first.on_not_leader(move || controller.set(metadata(2, &nodes, &[2])));
    }
    let mut gw = Gateway::start(&controller, GatewayConfig::default()).await;
    gw.wait_ready().await;
    let mut client = gw.produce_client().await;
    let resp = client
        .produce(request(vec![batch(0, 3)], Acks::All, 5_000))
        .await
        .unwrap()
        .into_inner();
    let result = &resp.results[0];
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(result.acks.len(), 1);
    assert_eq!(result.acks[0].base_offset, 0);
    assert_eq!(result.acks[0].last_offset, 2);
    assert_eq!(first.appends.load(Ordering::SeqCst), 1);
    assert_eq!(
        second.appends.load(Ordering::SeqCst),
        1,
        "written exactly once"
    );
    // Each attempt names the leader epoch the gateway's metadata has for
    // the node it goes to.
    assert_eq!(first.last_leader_epoch.load(Ordering::SeqCst), 1);
    assert_eq!(second.last_leader_epoch.load(Ordering::SeqCst), 2);
}

/// Hundreds of requests finding their leader stale at once (every
/// partition refuses with NOT_LEADER and no newer metadata comes) share
/// metadata refreshes, and none of them fetches the whole snapshot again:
/// a refresh per request, each answered with every partition, is what
/// stalled a controller under a subscription to 10,000 partitions.
#[tokio::test]
async fn stale_leaders_share_metadata_refreshes() {
    const PARTITIONS: u32 = 300;
    let stuck = FakeStorage::start(Behaviour::NotLeader(String::new())).await;
    let nodes = vec![(1, stuck.address())];
    let controller =
        FakeController::start(metadata(1, &nodes, &vec![1; PARTITIONS as usize])).await;
    let config = GatewayConfig {
        // No probes during the test: only the refreshes count.
        metadata_staleness_ms: 60_000,
        ..GatewayConfig::default()
    };
    let mut gw = Gateway::start(&controller, config).await;
    gw.wait_ready().await;
    let calls = controller.get_metadata_calls.load(Ordering::SeqCst);
    let whole = controller.whole_snapshots.load(Ordering::SeqCst);
    let mut client = gw.produce_client().await;
    let started = Instant::now();
    let resp = client
        .produce(request(
            (0..PARTITIONS).map(|p| batch(p, 1)).collect(),
            Acks::All,
            1_000,
        ))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    assert_eq!(resp.results.len(), PARTITIONS as usize);
    assert!(resp.results.iter().all(|r| r.error.is_some()));
    let appends = stuck.appends.load(Ordering::SeqCst);
    let refreshes = controller.get_metadata_calls.load(Ordering::SeqCst) - calls;
    assert!(
        appends >= 2 * PARTITIONS as usize,
        "every partition was retried: {appends} appends"
    );
    // About one refresh per retry round (backoff 5 ms doubling to 500 ms
    // in the one second): never one per request.
    assert!(
        refreshes <= 40,
        "{refreshes} metadata refreshes for {appends} refused appends in {elapsed:?}"
    );
    assert_eq!(
        controller.whole_snapshots.load(Ordering::SeqCst),
        whole,
        "a refresh of a version already held sends the whole snapshot"
    );
}

/// A shared refresh that fails is not taken for a success by the callers
/// that waited for it: they get its error, never the stale metadata as if
/// it were fresh (and not one controller timeout each, in turn).
#[tokio::test]
async fn a_failed_refresh_is_not_shared_as_a_success() {
    let controller = FakeController::start(metadata(1, &[], &[0])).await;
    let cache = streambus_gateway::metadata::MetadataCache::new(
        streambus_cluster::ControllerClient::new(vec![controller.addr.to_string()])
            .unwrap()
            .with_retry_for(Duration::from_millis(500)),
    );
    cache.refresh().await.unwrap();
    controller.set_up(false);
    let started = Instant::now();
    let results = futures::future::join_all((0..20).map(|_| cache.refresh())).await;
    let one = started.elapsed();
    assert!(
        results.iter().all(Result::is_err),
        "{} of 20 refreshes reported success while the controller was down",
        results.iter().filter(|r| r.is_ok()).count()
    );
    // Two failed refreshes at most: the first, and possibly one by a
    // caller whose ticket came after it started.
    let alone = Instant::now();
    assert!(cache.refresh().await.is_err());
    assert!(
        one < alone.elapsed() * 3,
        "20 waiting refreshes took {one:?}, one alone {:?}",
        alone.elapsed()
    );
    controller.set_up(true);
    assert_eq!(cache.refresh().await.unwrap().version, 1);
}

/// An encoded batch of `n` records for partition 0 from idempotent
/// producer 9, starting at `sequence`.
fn idempotent_batch(sequence: i32, n: usize) -> ProduceBatch {
    let mut builder = streambus_record::BatchBuilder::new(streambus_record::Compression::None)
        .with_producer(9, 0, sequence);
    for _ in 0..n {
        builder.push(&streambus_record::Record {
            value: Some(Bytes::from_static(b"v")),
            timestamp_ms: 1,
            ..streambus_record::Record::default()
        });
    }
    ProduceBatch {
        topic: "t".to_string(),
        partition: Some(0),
        records: Vec::new(),
        encoded_batch: builder.build(),
        traceparent: String::new(),
    }
}

#[tokio::test]
async fn idempotent_batches_of_one_partition_are_pipelined_others_wait_for_each_other() {
    let storage = FakeStorage::start(Behaviour::Slow(Duration::from_millis(200))).await;
    let controller = FakeController::start(metadata(1, &[(1, storage.address())], &[1])).await;
    let mut gw = Gateway::start(&controller, GatewayConfig::default()).await;
    gw.wait_ready().await;
    let mut client = gw.produce_client().await;

    // Five batches of one idempotent producer: all reach the leader at
    // once, and are answered in order.
    let batches = (0..5).map(|i| idempotent_batch(i * 2, 2)).collect();
    let resp = client
        .produce(request(batches, Acks::All, 0))
        .await
        .unwrap()
        .into_inner();
    let bases: Vec<i64> = resp
        .results
        .iter()
        .map(|r| {
            assert!(r.error.is_none(), "{:?}", r.error);
            r.acks[0].base_offset
        })
        .collect();
    assert_eq!(bases.len(), 5);
    assert_eq!(storage.peak.load(Ordering::SeqCst), 5, "pipelined");

    // Batches without a producer id cannot be ordered by the leader: each
    // waits for the one before it.
    storage.peak.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let batches = (0..3).map(|_| batch(0, 1)).collect();
    let resp = client
        .produce(request(batches, Acks::All, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.results.iter().all(|r| r.error.is_none()));
    assert_eq!(storage.peak.load(Ordering::SeqCst), 1, "one at a time");
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn stuck_storage_node_times_out_produce() {
    let stuck = FakeStorage::start(Behaviour::Stall).await;
    let healthy = FakeStorage::start(Behaviour::Accept).await;
    let nodes = vec![(1, stuck.address()), (2, healthy.address())];
    // Partition 0 on the stuck node, partition 1 on the healthy one.
    let controller = FakeController::start(metadata(1, &nodes, &[1, 2])).await;
    let config = GatewayConfig {
        storage_call_timeout_ms: 300,
        request_timeout_ms: 60_000,
        // One write at a time: the second request needs the first's permit.
        max_in_flight_writes: 1,
        ..GatewayConfig::default()
    };
    let mut gw = Gateway::start(&controller, config).await;
    gw.wait_ready().await;
    let mut client = gw.produce_client().await;

    let started = Instant::now();
    let resp = client
        .produce(request(vec![batch(0, 1)], Acks::All, 0))
        .await
        .unwrap()
        .into_inner();
    let waited = started.elapsed();
    let error = resp.results[0]
        .error
        .as_ref()
        .expect("the stuck write fails");
    let error = Error::from_detail(error);
    assert_eq!(error.reason, Reason::Timeout, "{error}");
    assert_eq!(error.reason.code(), tonic::Code::DeadlineExceeded);
    assert!(
        error.message.contains("gateway.storage_call_timeout_ms"),
        "{error}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    // Not retried: the stuck node may still write it.
    assert_eq!(stuck.appends.load(Ordering::SeqCst), 1);
    assert!(stuck.saw_timeout_header.load(Ordering::SeqCst));
    assert_eq!(gw.metrics.in_flight_writes.get(), 0, "permit released");

    // The permit is free: the next write is not blocked by the first.
    let started = Instant::now();
    let resp = client
        .produce(request(vec![batch(1, 1)], Acks::All, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.results[0].error.is_none(),
        "{:?}",
        resp.results[0].error
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(healthy.appends.load(Ordering::SeqCst), 1);

    // The stuck node's handler was abandoned, not left running.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stuck.outstanding.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn acks_none_flood_keeps_memory_bounded() {
    const MAX_WRITES: usize = 8;
    let stalled = FakeStorage::start(Behaviour::Stall).await;
    let nodes = vec![(1, stalled.address())];
    let controller = FakeController::start(metadata(1, &nodes, &[1, 1, 1, 1])).await;
    let config = GatewayConfig {
        max_in_flight_writes: MAX_WRITES,
        // Long enough that nothing times out during the flood.
        storage_call_timeout_ms: 60_000,
        request_timeout_ms: 60_000,
        max_in_flight_per_stream: 4,
        ..GatewayConfig::default()
    };
    let mut gw = Gateway::start(&controller, config).await;
    gw.wait_ready().await;

    // A streaming flood first: its writes stall at the node for good.
    let mut stream_client = gw.produce_client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<ProduceStreamRequest>(1);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let feeder = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for seq in 0..10_000u64 {
                let msg = ProduceStreamRequest {
                    sequence: seq,
                    acks: Acks::None as i32,
                    batch: Some(batch((seq % 4) as u32, 10)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let _responses = stream_client
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();

    wait_until(|| stalled.outstanding.load(Ordering::SeqCst) == 4).await;

    // Then unary floods alongside: many callers, acks=NONE, short timeouts.
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(gw.produce_client().await);
    }
    let mut callers = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let i = i as u32;
        callers.push(tokio::spawn(async move {
            let mut overloaded = 0;
            for _ in 0..4 {
                let resp = client
                    .produce(request(vec![batch(i % 4, 10)], Acks::None, 300))
                    .await
                    .unwrap()
                    .into_inner();
                if let Some(e) = &resp.results[0].error {
                    assert_eq!(e.reason, "OVERLOADED", "{e:?}");
                    overloaded += 1;
                }
            }
            overloaded
        }));
    }
    let mut overloaded = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert!(gw.metrics.in_flight_writes.get() <= MAX_WRITES as i64);
        assert!(gw.metrics.in_flight_bytes.get() > 0);
        assert!(stalled.outstanding.load(Ordering::SeqCst) <= MAX_WRITES);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in callers {
        overloaded += c.await.unwrap();
    }
    // The limit was reached and never passed, at the gateway and at the
    // storage node.
    assert_eq!(stalled.peak.load(Ordering::SeqCst), MAX_WRITES);
    // Unary writes end at their request's 300 ms deadline even though the
    // node never answers; the stream's writes (default deadline) are still
    // stuck, holding the stream's permits: exactly those are in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck = stalled.outstanding.load(Ordering::SeqCst);
    assert_eq!(stuck, 4, "max_in_flight_per_stream writes of the stream");
    assert_eq!(gw.metrics.in_flight_writes.get(), stuck as i64);
    let one_batch = 10 * (100 + 32) + 61;
    assert!(gw.metrics.in_flight_bytes.get() <= (stuck * one_batch) as i64);
    // 64 callers, 4 free slots, each held up to 300 ms: callers were
    // refused (how many depends on scheduling on a busy machine).
    assert!(overloaded > 0, "no unary batch was refused");
    // The stream stopped being read: what the client could push is what
    // HTTP/2 flow control lets it buffer (the stream window), not the
    // 10 000 messages it wanted to send, and it stays there.
    let pushed = sent.load(Ordering::SeqCst);
    let message = ProduceStreamRequest {
        sequence: 1,
        acks: Acks::None as i32,
        batch: Some(batch(0, 10)),
    }
    .encoded_len();
    let window = streambus_service::grpc::STREAM_WINDOW_BYTES as usize / message;
    assert!(
        pushed <= window + 16,
        "{pushed} stream messages taken (window {window})"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        pushed,
        "the stream kept being read"
    );
    feeder.abort();
}

async fn wait_until(f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn health(gw: &Gateway) -> ServingStatus {
    let mut client = HealthClient::new(gw.channel().await);
    let status = client
        .check(HealthCheckRequest {
            service: "streambus.v1.ProduceService".to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn readiness_and_health_follow_controller_contact() {
    let storage = FakeStorage::start(Behaviour::Accept).await;
    let controller = FakeController::start(metadata(1, &[(1, storage.address())], &[1])).await;
    controller.set_up(false);
    let config = GatewayConfig {
        metadata_staleness_ms: 400,
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(&controller, config).await;

    // No metadata yet: not ready, not serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*gw.ready.borrow());
    assert_eq!(health(&gw).await, ServingStatus::NotServing);

    // Metadata arrives: ready and serving.
    controller.set_up(true);
    wait_for("ready", async || *gw.ready.borrow()).await;
    wait_for("SERVING", async || {
        health(&gw).await == ServingStatus::Serving
    })
    .await;

    // Still ready while the controller answers, even with no changes.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(*gw.ready.borrow(), "went unready with a live controller");

    // Controller lost: not ready within the staleness bound (plus slack).
    let lost = Instant::now();
    controller.set_up(false);
    wait_for("not ready", async || !*gw.ready.borrow()).await;
    let took = lost.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1_500),
        "not ready after {took:?}"
    );
    wait_for("NOT_SERVING", async || {
        health(&gw).await == ServingStatus::NotServing
    })
    .await;

    // Back: ready again.
    controller.set_up(true);
    wait_for("ready again", async || *gw.ready.borrow()).await;
    wait_for("SERVING again", async || {
        health(&gw).await == ServingStatus::Serving
    })
    .await;
}

#[tokio::test]
async fn a_draining_gateway_ends_subscriptions_and_produce_streams_with_shutting_down() {
    use streambus_proto::v1::consume_service_client::ConsumeServiceClient;
    use streambus_proto::v1::{StartPosition, SubscribeRequest, start_position};

    let storage = FakeStorage::start(Behaviour::Accept).await;
    let nodes = vec![(1, storage.address())];
    let controller = FakeController::start(metadata(1, &nodes, &[1])).await;
    let mut gw = Gateway::start(&controller, GatewayConfig::default()).await;
    gw.wait_ready().await;
    let channel = gw.channel().await;
    let mut subscription = ConsumeServiceClient::new(channel.clone())
        .subscribe(SubscribeRequest {
            topic: "t".into(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Offset(0)),
            }),
            max_wait_ms: 100,
            ..SubscribeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ProduceStreamRequest {
        sequence: 7,
        batch: Some(batch(0, 2)),
        acks: Acks::All as i32,
    })
    .await
    .unwrap();
    let mut acks = gw
        .produce_client()
        .await
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = acks.message().await.unwrap().unwrap();
    assert_eq!(first.sequence, 7);
    assert!(first.result.unwrap().error.is_none());

    // SIGTERM: both streams end with a retriable reason, not a clean end
    // that would mean "done".
    gw.begin_shutdown();
    let wait = Duration::from_secs(10);
    for (what, end) in [
        (
            "subscription",
            tokio::time::timeout(wait, subscription.message())
                .await
                .unwrap(),
        ),
        (
            "produce stream",
            tokio::time::timeout(wait, acks.message())
                .await
                .unwrap()
                .map(|_| None),
        ),
    ] {
        let status = match end {
            Err(status) => status,
            Ok(other) => panic!("{what} ended with {other:?} instead of an error"),
        };
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{what}: {status:?}"
        );
        let e = Error::from_status(&status);
        assert_eq!(e.reason, Reason::ShuttingDown, "{what}: {e}");
        assert!(e.retriable());
    }
    drop(tx);
}
