"""Interoperability with an independent Kafka implementation: kafka-python's
RecordBatch v2 builder and reader (`kafka.record.default_records`), in every
compression codec.

- Batches kafka-python builds are produced as `encoded_batch`, read back
  decoded (keys, values, headers, timestamps identical) and encoded (the
  bytes the CRC covers unchanged).
- Batches StreamBus writes (a topic's `compression.type` recompressing
  records the gateway encoded) are read by kafka-python, CRCs validated.
"""

import uuid
import warnings

import pytest

with warnings.catch_warnings():
    # kafka-python's protocol schemas load with a deprecated importlib call.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
    from kafka.record.memory_records import MemoryRecords

from test_grpc_contract import fetch_all, wait_for_leaders

CODECS = {
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}

# (key, value, headers, timestamp): null keys, values and header values too.
RECORDS = [
    (
        None if i % 5 == 0 else f"key-{i}".encode(),
        None if i % 11 == 10 else (f"value {i} " * 40).encode(),
        [("n", str(i).encode()), ("empty", None)] if i % 2 else [],
        1_700_000_000_000 + i,
    )
    for i in range(60)
]


def create_topic(stubs, pb, configs=None):
    name = f"pytest-codecs-{uuid.uuid4().hex[:12]}"
    stubs.admin.CreateTopic(
        pb.admin.CreateTopicRequest(
            name=name, partitions=1, replication_factor=1, configs=configs or {}
        ),
        timeout=30,
    )
    wait_for_leaders(stubs, pb, name)
    return name


def kafka_python_batch(codec):
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value, headers, ts) in enumerate(RECORDS):
        builder.append(offset, timestamp=ts, key=key, value=value, headers=headers)
    data = bytes(builder.build())
    # kafka-python sends a batch uncompressed when compressing does not
    # pay: make sure this one really is compressed.
    assert DefaultRecordBatch(data).compression_type == codec
    return data


def fetch_encoded(stubs, pb, topic, expected):
    """The stored batches of partition 0 until `expected` records."""
    data, offset = b"", 0
    while offset < expected:
        resp = stubs.consume.Fetch(
            pb.consume.FetchRequest(
                topic=topic, partition=0, offset=offset, max_wait_ms=500, encoded=True
            ),
            timeout=10,
        )
        assert not resp.records
        data += resp.encoded_batches
        offset = max(offset, resp.next_offset)
    return data


def kafka_python_batches(data):
    records = MemoryRecords(data)
    batches = []
    while records.has_next():
        batches.append(records.next_batch())
    return batches


def produce_encoded(stubs, pb, topic, batch):
    resp = stubs.produce.Produce(
        pb.produce.ProduceRequest(
            batches=[pb.produce.ProduceBatch(topic=topic, partition=0, encoded_batch=batch)],
            acks=pb.common.ACKS_ALL,
        ),
        timeout=30,
    )
    result = resp.results[0]
    assert not result.HasField("error"), result.error
    return result


def test_kafka_python_batches_in_every_codec_are_read_back_identically(stubs, pb):
    topic = create_topic(stubs, pb)
    sent = {}
    for name, codec in CODECS.items():
        batch = kafka_python_batch(codec)
        result = produce_encoded(stubs, pb, topic, batch)
        assert result.acks[0].record_count == len(RECORDS)
        sent[result.acks[0].base_offset] = (name, batch)

    decoded = fetch_all(stubs, pb, topic, 0, len(sent) * len(RECORDS))
    assert [r.offset for r in decoded] == list(range(len(sent) * len(RECORDS)))
    for r in decoded:
        key, value, headers, ts = RECORDS[r.offset % len(RECORDS)]
        assert (r.key if r.HasField("key") else None) == key
        assert (r.value if r.HasField("value") else None) == value
        assert [(h.key, h.value if h.HasField("value") else None) for h in r.headers] == headers
        assert r.timestamp_ms == ts

    # Passed through untouched: only the base offset and the partition
    # leader epoch (outside the CRC) are the broker's.
    stored = kafka_python_batches(fetch_encoded(stubs, pb, topic, len(sent) * len(RECORDS)))
    assert len(stored) == len(sent)
    for batch in stored:
        name, original = sent[batch.base_offset]
        assert batch.compression_type == CODECS[name]
        assert batch.validate_crc(), name
        assert bytes(batch._buffer)[21:] == original[21:], name


@pytest.mark.parametrize("name", sorted(CODECS))
def test_batches_streambus_compresses_decode_with_kafka_python(stubs, pb, name):
    topic = create_topic(stubs, pb, {"compression.type": name})
    records = [
        pb.common.Record(
            headers=[
                pb.common.Header(key=k, **({} if v is None else {"value": v}))
                for k, v in headers
            ],
            timestamp_ms=ts,
            **{f: v for f, v in (("key", key), ("value", value)) if v is not None},
        )
        for key, value, headers, ts in RECORDS
    ]
    resp = stubs.produce.Produce(
        pb.produce.ProduceRequest(
            batches=[pb.produce.ProduceBatch(topic=topic, partition=0, records=records)],
            acks=pb.common.ACKS_ALL,
        ),
        timeout=30,
    )
    assert not resp.results[0].HasField("error"), resp.results[0].error

    batches = kafka_python_batches(fetch_encoded(stubs, pb, topic, len(RECORDS)))
    got = []
    for batch in batches:
        assert batch.compression_type == CODECS[name]
        assert batch.validate_crc()
        for r in batch:
            got.append((r.offset, r.key, r.value, list(r.headers), r.timestamp))
    assert got == [
        (i, key, value, headers, ts) for i, (key, value, headers, ts) in enumerate(RECORDS)
    ]
