"""The public gRPC contract (proto/streambus/v1) from a non-Rust client.

Run against a live gateway:

    STREAMBUS_GATEWAY=127.0.0.1:7400 python -m pytest tests/python -v
"""

import time
import uuid

import grpc
import pytest


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as a signed 32-bit int), as proto/src/partitioner.rs."""
    mask = 0xFFFFFFFF
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & mask
    full = len(data) & ~3
    for i in range(0, full, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[full:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_kafka_vectors():
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971


PARTITIONS = 3


@pytest.fixture
def topic(stubs, pb):
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    resp = stubs.admin.CreateTopic(
        pb.admin.CreateTopicRequest(name=name, partitions=PARTITIONS, replication_factor=1),
        timeout=30,
    )
    assert resp.topic.name == name
    assert len(resp.topic.partitions) == PARTITIONS
    wait_for_leaders(stubs, pb, name)
    yield name
    try:
        stubs.admin.DeleteTopic(pb.admin.DeleteTopicRequest(name=name), timeout=30)
    except grpc.RpcError:
        pass


def wait_for_leaders(stubs, pb, name, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        desc = stubs.admin.DescribeTopic(pb.admin.DescribeTopicRequest(name=name), timeout=10)
        if all(p.leader != 0 for p in desc.topic.partitions):
            return
        assert time.monotonic() < deadline, f"partitions of {name} have no leader"
        time.sleep(0.2)


def make_records(pb, n):
    records = []
    for i in range(n):
        records.append(
            pb.common.Record(
                key=f"key-{i % 7}".encode(),
                value=f"value-{i}".encode(),
                headers=[
                    pb.common.Header(key="seq", value=str(i).encode()),
                    pb.common.Header(key="null-header"),
                ],
                timestamp_ms=1_700_000_000_000 + i,
            )
        )
    return records


def produce(stubs, pb, topic, records, partition=None):
    batch = pb.produce.ProduceBatch(topic=topic, records=records)
    if partition is not None:
        batch.partition = partition
    resp = stubs.produce.Produce(
        pb.produce.ProduceRequest(batches=[batch], acks=pb.common.ACKS_ALL),
        timeout=30,
    )
    assert len(resp.results) == 1
    result = resp.results[0]
    assert not result.HasField("error"), result.error
    return result


def fetch_all(stubs, pb, topic, partition, expected, timeout=30):
    """Fetches decoded records of one partition from offset 0 until
    `expected` records have arrived."""
    got = []
    offset = 0
    deadline = time.monotonic() + timeout
    while len(got) < expected:
        assert time.monotonic() < deadline, f"only {len(got)} of {expected} records"
        resp = stubs.consume.Fetch(
            pb.consume.FetchRequest(
                topic=topic, partition=partition, offset=offset, max_wait_ms=500
            ),
            timeout=10,
        )
        got.extend(r for r in resp.records if r.offset >= offset)
        offset = max(offset, resp.next_offset)
    return got


def check_record(pb, record, original):
    assert record.key == original.key
    assert record.value == original.value
    assert [(h.key, h.value, h.HasField("value")) for h in record.headers] == [
        (h.key, h.value, h.HasField("value")) for h in original.headers
    ]
    assert record.timestamp_ms == original.timestamp_ms


def test_keyed_records_round_trip_through_fetch_and_subscribe(stubs, pb, topic):
    records = make_records(pb, 40)
    result = produce(stubs, pb, topic, records)
    assert sum(a.record_count for a in result.acks) == len(records)

    by_value = {r.value: r for r in records}
    per_partition = {}
    for p in range(PARTITIONS):
        expected = sum(1 for r in records if partition_for_key(r.key, PARTITIONS) == p)
        fetched = fetch_all(stubs, pb, topic, p, expected)
        assert [r.offset for r in fetched] == list(range(expected))
        for r in fetched:
            # The gateway partitions keyed records as Kafka does.
            assert partition_for_key(r.key, PARTITIONS) == p
            check_record(pb, r, by_value[r.value])
        # Per partition, records keep the request's order.
        seqs = [int(r.value.split(b"-")[1]) for r in fetched]
        assert seqs == sorted(seqs)
        per_partition[p] = fetched

    # Subscribe to every partition from the beginning.
    call = stubs.consume.Subscribe(
        pb.consume.SubscribeRequest(
            topic=topic,
            start=pb.consume.StartPosition(earliest=pb.consume.Empty()),
            max_wait_ms=200,
        ),
        timeout=30,
    )
    seen = {}
    try:
        for resp in call:
            for r in resp.records:
                seen[(resp.partition, r.offset)] = r
            if len(seen) >= len(records):
                break
    finally:
        call.cancel()
    assert len(seen) == len(records)
    for (p, offset), r in seen.items():
        assert per_partition[p][offset] == r


def test_explicit_partition_and_produce_stream(stubs, pb, topic):
    records = make_records(pb, 5)
    result = produce(stubs, pb, topic, records, partition=2)
    assert [(a.partition, a.base_offset, a.last_offset, a.record_count) for a in result.acks] == [
        (2, 0, 4, 5)
    ]

    requests = [
        pb.produce.ProduceStreamRequest(
            sequence=100 + i,
            batch=pb.produce.ProduceBatch(topic=topic, partition=2, records=[rec]),
            acks=pb.common.ACKS_LEADER,
        )
        for i, rec in enumerate(make_records(pb, 3))
    ]
    responses = list(stubs.produce.ProduceStream(iter(requests), timeout=30))
    assert sorted(r.sequence for r in responses) == [100, 101, 102]
    for r in responses:
        assert not r.result.HasField("error"), r.result.error
        assert r.result.acks[0].partition == 2

    fetched = fetch_all(stubs, pb, topic, 2, 8)
    assert [r.offset for r in fetched] == list(range(8))

    # Subscribe to one partition from an offset.
    call = stubs.consume.Subscribe(
        pb.consume.SubscribeRequest(
            topic=topic,
            partition=2,
            start=pb.consume.StartPosition(offset=3),
            max_wait_ms=200,
        ),
        timeout=30,
    )
    offsets = []
    try:
        for resp in call:
            assert resp.partition == 2
            offsets.extend(r.offset for r in resp.records if r.offset >= 3)
            if len(offsets) >= 5:
                break
    finally:
        call.cancel()
    assert offsets == [3, 4, 5, 6, 7]

    offsets = stubs.admin.DescribePartitionOffsets(
        pb.admin.DescribePartitionOffsetsRequest(topic=topic, partitions=[2]), timeout=10
    )
    assert [(p.partition, p.high_watermark) for p in offsets.partitions] == [(2, 8)]


def reason(err: grpc.RpcError) -> str:
    md = dict(err.trailing_metadata() or ())
    return md.get("streambus-reason")


def test_unknown_topic_is_not_found_with_a_reason(stubs, pb):
    name = f"pytest-missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(grpc.RpcError) as info:
        stubs.admin.DescribeTopic(pb.admin.DescribeTopicRequest(name=name), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(info.value) == "UNKNOWN_TOPIC"

    with pytest.raises(grpc.RpcError) as info:
        stubs.consume.Fetch(pb.consume.FetchRequest(topic=name, partition=0), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(info.value) == "UNKNOWN_TOPIC"


# Retriable reasons: the stream broke for a reason that reconnecting fixes
# (docs/clients.md). A connection that dropped carries no reason at all.
RESUME_REASONS = {"SHUTTING_DOWN", "UNAVAILABLE", "NOT_LEADER", "TIMEOUT", "OVERLOADED", "NOT_ENOUGH_REPLICAS"}


def follow(stubs, pb, topic, start, positions, max_backoff=5.0):
    """Yields (partition, record) for every record of `topic`, forever,
    riding through gateway restarts: on a retriable error (or an end of
    stream) it subscribes again, from `positions` (partition -> next
    offset, updated as records are yielded), after a jittered backoff."""
    import random

    failures = 0
    while True:
        call = stubs.consume.Subscribe(
            pb.consume.SubscribeRequest(
                topic=topic, start=start, max_wait_ms=200, resume_offsets=positions
            )
        )
        try:
            for resp in call:
                failures = 0
                for r in resp.records:
                    if r.offset < positions.get(resp.partition, -1):
                        continue  # already yielded before a resumption
                    positions[resp.partition] = r.offset + 1
                    yield resp.partition, r
                positions[resp.partition] = max(positions.get(resp.partition, 0), resp.next_offset)
        except grpc.RpcError as err:
            r = reason(err)
            if r is not None and r not in RESUME_REASONS:
                raise
            if r is None and err.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.INTERNAL,
            ):
                raise
        finally:
            call.cancel()
        failures += 1
        time.sleep(min(max_backoff, 0.1 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0))


def test_a_resumed_subscription_goes_on_where_it_was(stubs, pb, topic):
    records = make_records(pb, 60)
    produce(stubs, pb, topic, records)
    earliest = pb.consume.StartPosition(earliest=pb.consume.Empty())
    positions = {}
    seen = []
    stream = follow(stubs, pb, topic, earliest, positions)
    for partition, r in stream:
        seen.append((partition, r.offset))
        if len(seen) == 25:
            break
    stream.close()
    # A new subscription from the positions reached (as after a gateway
    # restart) yields the rest: no gap, no duplicate.
    for partition, r in follow(stubs, pb, topic, earliest, positions):
        seen.append((partition, r.offset))
        if len(seen) == len(records):
            break
    assert len(set(seen)) == len(records)
    for p in range(PARTITIONS):
        offsets = [o for q, o in seen if q == p]
        assert offsets == list(range(len(offsets)))


def test_topic_configuration_changes_incrementally(stubs, pb, topic):
    configs = lambda resp: dict(resp.topic.configs)  # noqa: E731
    preview = stubs.admin.AlterTopicConfigs(
        pb.admin.AlterTopicConfigsRequest(
            topic=topic, set={"retention.ms": "3600000"}, validate_only=True
        ),
        timeout=30,
    )
    assert configs(preview)["retention.ms"] == "3600000"
    described = stubs.admin.DescribeTopic(pb.admin.DescribeTopicRequest(name=topic), timeout=10)
    assert dict(described.topic.configs)["retention.ms"] == "604800000", "validate_only changed it"

    changed = stubs.admin.AlterTopicConfigs(
        pb.admin.AlterTopicConfigsRequest(
            topic=topic, set={"retention.ms": "3600000", "segment.bytes": "1048576"}
        ),
        timeout=30,
    )
    assert configs(changed)["retention.ms"] == "3600000"
    assert configs(changed)["segment.bytes"] == "1048576"

    reset = stubs.admin.AlterTopicConfigs(
        pb.admin.AlterTopicConfigsRequest(topic=topic, delete=["retention.ms"]), timeout=30
    )
    assert configs(reset)["retention.ms"] == "604800000"
    assert configs(reset)["segment.bytes"] == "1048576", "other keys keep their values"

    with pytest.raises(grpc.RpcError) as info:
        stubs.admin.AlterTopicConfigs(
            pb.admin.AlterTopicConfigsRequest(topic=topic, set={"segment.bytes": "20"}),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(info.value) == "INVALID_CONFIG"
    assert "segment.bytes" in info.value.details()
