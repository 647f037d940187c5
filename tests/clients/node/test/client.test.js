// Runs against the gateway in STREAMBUS_GATEWAY (`cargo xtask clients-test node`).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const sb = require('../example.js');

const address = (process.env.STREAMBUS_GATEWAY || '').replace(/^http:\/\//, '');
if (!address) throw new Error('set STREAMBUS_GATEWAY=host:port to run the client tests');

let seq = 0;
const uniqueTopic = (prefix) => `${prefix}-${Date.now()}-${process.pid}-${seq++}`;

// Record i: key k-(i%3), value v-i, a header with a value, one with an empty
// value and one without (null), and a fixed timestamp.
function record(i) {
  return {
    key: Buffer.from(`k-${i % 3}`),
    value: Buffer.from(`v-${i}`),
    headers: [
      { key: 'seq', value: Buffer.from(String(i)) },
      { key: 'empty', value: Buffer.alloc(0) },
      { key: 'null' },
    ],
    timestamp_ms: 1_700_000_000_000 + i,
  };
}

function checkRecord(got, offset, want) {
  assert.equal(got.offset, offset);
  assert.deepEqual(got.key, want.key, `key at ${offset}`);
  assert.deepEqual(got.value, want.value, `value at ${offset}`);
  assert.equal(got.timestamp_ms, want.timestamp_ms, `timestamp at ${offset}`);
  // A null header value stays undefined; an empty one is an empty Buffer.
  assert.deepEqual(
    got.headers.map((h) => [h.key, h.value]),
    want.headers.map((h) => [h.key, h.value]),
    `headers at ${offset}`,
  );
}

async function withClient(fn) {
  const client = sb.connect(address);
  const topics = [];
  try {
    await fn(client, async (prefix, partitions) => {
      const name = uniqueTopic(prefix);
      await sb.createTopic(client, name, partitions);
      topics.push(name);
      return name;
    });
  } finally {
    for (const name of topics) await sb.unary(client.admin, 'DeleteTopic', { name });
    client.close();
  }
}

test('produce with the unary call and the stream, then subscribe', () =>
  withClient(async (client, createTopic) => {
    const topic = await createTopic('node-client', 3);
    const sent = [0, 1, 2, 3].map(record);
    let acks = await sb.produceBatch(client, { topic, partition: 1, records: sent });
    assert.deepEqual(
      acks.map((a) => [a.partition, a.base_offset, a.last_offset, a.record_count]),
      [[1, 0, 3, 4]],
    );

    const streamed = [4, 5, 6].map(record);
    sent.push(...streamed);
    const results = await sb.produceStream(
      client,
      streamed.map((r) => ({ topic, partition: 1, records: [r] })),
    );
    assert.equal(results.size, 3);
    for (let s = 0; s < 3; s++) {
      const result = results.get(s);
      assert.equal(result.error, null, `stream result ${s}`);
      assert.deepEqual(
        result.acks.map((a) => [a.partition, a.base_offset, a.last_offset]),
        [[1, 4 + s, 4 + s]],
      );
    }

    const keyed = [10, 11, 12, 13, 14, 15].map(record);
    acks = await sb.produceBatch(client, { topic, records: keyed });
    assert.equal(acks.reduce((n, a) => n + a.record_count, 0), 6);

    const got = await sb.subscribe(client, topic, sent.length + keyed.length);
    assert.equal(got.length, sent.length + keyed.length);
    const byValue = new Map(keyed.map((r) => [r.value.toString(), r]));
    const next = new Map();
    const partitionOfKey = new Map();
    const explicit = [];
    for (const { partition, record: r } of got) {
      assert.equal(r.offset, next.get(partition) || 0, `partition ${partition}`);
      next.set(partition, r.offset + 1);
      const want = byValue.get(r.value.toString());
      if (!want) {
        assert.equal(partition, 1);
        explicit.push(r);
        continue;
      }
      checkRecord(r, r.offset, want);
      const key = want.key.toString();
      assert.equal(partitionOfKey.get(key) ?? partition, partition, 'one key, one partition');
      partitionOfKey.set(key, partition);
    }
    assert.equal(explicit.length, sent.length);
    explicit.forEach((r, i) => checkRecord(r, i, sent[i]));
  }));

test('error reasons from the status details and the trailer', () =>
  withClient(async (client, createTopic) => {
    const missing = uniqueTopic('node-client-missing');
    const err = await sb.unary(client.admin, 'DescribeTopic', { name: missing }).then(
      () => assert.fail('DescribeTopic of a missing topic succeeded'),
      (e) => e,
    );
    assert.equal(err.code, grpc.status.NOT_FOUND);
    const detail = sb.errorDetail(err);
    assert.equal(detail.reason, 'UNKNOWN_TOPIC');
    assert.equal(detail.code, grpc.status.NOT_FOUND);
    assert.equal(detail.retriable, false);
    assert.match(detail.message, new RegExp(missing));
    assert.equal(sb.reason(err), 'UNKNOWN_TOPIC');

    // A server stream fails with the same status.
    const streamErr = await sb.subscribe(client, missing, 1).then(
      () => assert.fail('Subscribe to a missing topic succeeded'),
      (e) => e,
    );
    assert.equal(sb.errorDetail(streamErr).reason, 'UNKNOWN_TOPIC');
    assert.equal(sb.reason(streamErr), 'UNKNOWN_TOPIC');

    const topic = await createTopic('node-client-twice', 1);
    const twice = await sb.createTopic(client, topic, 1).then(
      () => assert.fail('a second CreateTopic succeeded'),
      (e) => e,
    );
    assert.equal(twice.code, grpc.status.ALREADY_EXISTS);
    assert.equal(sb.errorDetail(twice).reason, 'TOPIC_ALREADY_EXISTS');
    assert.equal(sb.reason(twice), 'TOPIC_ALREADY_EXISTS');

    // Produce errors are per batch, in the response.
    await assert.rejects(
      sb.produceBatch(client, { topic, partition: 7, records: [record(0)] }),
      (e) => e instanceof sb.BatchError && e.detail.reason === 'UNKNOWN_PARTITION',
    );
  }));

test('the example program', async () => {
  const lines = [];
  await sb.main(address, (line) => lines.push(line));
  const out = lines.join('\n');
  for (const want of [
    'offset 0 key customer-1 value first',
    'offset 1 key customer-1 value second',
    'offset 2 key customer-1 value third',
    'error: UNKNOWN_TOPIC (details), UNKNOWN_TOPIC (trailer), retriable false',
  ]) {
    assert.ok(out.includes(want), `output lacks ${want}:\n${out}`);
  }
});
