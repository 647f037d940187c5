// A StreamBus client in Node.js: @grpc/grpc-js with the .proto files of
// proto/ loaded at run time (see docs/clients.md). `node example.js
// 127.0.0.1:7400` creates a topic, produces with the unary call and the
// bidirectional stream, reads the records back with Subscribe, and prints an
// error's stable reason.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// The repository's proto/ directory (STREAMBUS_PROTO_DIR overrides it).
const PROTO_DIR = process.env.STREAMBUS_PROTO_DIR || path.join(__dirname, '../../../proto');
const FILES = ['admin', 'common', 'consume', 'produce'].map((f) => `streambus/v1/${f}.proto`);

// keepCase: fields as in the .proto (base_offset); longs as Numbers (exact
// up to 2^53); proto3 `optional` fields absent (null) stay undefined.
const definition = protoLoader.loadSync(FILES, {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).streambus.v1;

// google.rpc.Status (from google-proto-files) and streambus.v1.ErrorDetail,
// to decode the grpc-status-details-bin trailer.
const statusRoot = new protobuf.Root();
statusRoot.resolvePath = (origin, target) =>
  [PROTO_DIR, path.dirname(require.resolve('google-proto-files/package.json'))]
    .map((dir) => path.join(dir, target))
    .find((file) => require('node:fs').existsSync(file)) || target;
statusRoot.loadSync(['google/rpc/status.proto', 'streambus/v1/common.proto']);
const RpcStatus = statusRoot.lookupType('google.rpc.Status');
const ErrorDetail = statusRoot.lookupType('streambus.v1.ErrorDetail');

function connect(address) {
  const credentials = grpc.credentials.createInsecure();
  return {
    admin: new v1.AdminService(address, credentials),
    produce: new v1.ProduceService(address, credentials),
    consume: new v1.ConsumeService(address, credentials),
    close() {
      this.admin.close();
      this.produce.close();
      this.consume.close();
    },
  };
}

// A unary call as a promise; a failure is the grpc-js error, whose
// `metadata` holds the trailers.
function unary(client, method, request, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// Creates a topic and waits until every partition has a leader.
async function createTopic(client, name, partitions) {
  await unary(client.admin, 'CreateTopic', { name, partitions });
  for (;;) {
    const { topic } = await unary(client.admin, 'DescribeTopic', { name });
    if (topic.partitions.every((p) => p.leader !== 0)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

// A batch the gateway refused (produce errors are per batch, in-band).
class BatchError extends Error {
  constructor(detail) {
    super(`${detail.reason}: ${detail.message}`);
    this.detail = detail;
  }
}

// Writes one batch with the unary call: one ack per partition written.
async function produceBatch(client, batch) {
  const { results } = await unary(client.produce, 'Produce', { batches: [batch], acks: 'ACKS_ALL' });
  if (results[0].error) throw new BatchError(results[0].error);
  return results[0].acks;
}

// Sends batches on one bidirectional stream, numbered from 0, and resolves
// to the result of each by its number once the server ends the stream.
function produceStream(client, batches) {
  return new Promise((resolve, reject) => {
    const results = new Map();
    const call = client.produce.ProduceStream({ deadline: Date.now() + 30000 });
    call.on('data', (response) => results.set(response.sequence, response.result));
    call.on('error', reject);
    call.on('end', () => resolve(results));
    batches.forEach((batch, sequence) => call.write({ sequence, batch, acks: 'ACKS_ALL' }));
    call.end();
  });
}

// Reads records of every partition from the earliest offset until it has n
// of them, then cancels the subscription.
async function subscribe(client, topic, n) {
  const call = client.consume.Subscribe({ topic, start: { earliest: {} }, max_wait_ms: 200 });
  const got = [];
  try {
    for await (const response of call) {
      for (const record of response.records) got.push({ partition: response.partition, record });
      if (got.length >= n) break;
    }
  } finally {
    call.on('error', () => {}); // the CANCELLED status that cancel() causes
    call.cancel();
  }
  return got;
}

// The stable reason from the status details (grpc-status-details-bin: a
// google.rpc.Status holding a streambus.v1.ErrorDetail).
function errorDetail(err) {
  const [bin] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!bin) return undefined;
  const any = RpcStatus.decode(bin).details.find((d) => d.type_url.endsWith('/streambus.v1.ErrorDetail'));
  return any && ErrorDetail.toObject(ErrorDetail.decode(any.value), { defaults: true });
}

// The stable reason from the streambus-reason trailer.
function reason(err) {
  const [value] = err.metadata ? err.metadata.get('streambus-reason') : [];
  return value;
}

async function main(address, log = console.log) {
  const client = connect(address);
  try {
    const topic = `node-example-${Date.now()}`;
    await createTopic(client, topic, 3);
    const [ack] = await produceBatch(client, {
      topic,
      records: [{ key: Buffer.from('customer-1'), value: Buffer.from('first'),
        headers: [{ key: 'source', value: Buffer.from('example') }] }],
    });
    log(`produced to partition ${ack.partition} at offset ${ack.base_offset}`);
    const results = await produceStream(client, [
      { topic, records: [{ key: Buffer.from('customer-1'), value: Buffer.from('second') }] },
      { topic, records: [{ key: Buffer.from('customer-1'), value: Buffer.from('third') }] },
    ]);
    for (let seq = 0; seq < results.size; seq++) {
      const result = results.get(seq);
      if (result.error) throw new BatchError(result.error);
      log(`stream batch ${seq} at offset ${result.acks[0].base_offset}`);
    }
    for (const { partition, record } of await subscribe(client, topic, 3)) {
      log(`partition ${partition} offset ${record.offset} key ${record.key} value ${record.value}`);
    }
    try {
      await unary(client.admin, 'DescribeTopic', { name: `${topic}-missing` });
    } catch (err) {
      const detail = errorDetail(err);
      log(`error: ${detail.reason} (details), ${reason(err)} (trailer), retriable ${detail.retriable}`);
    }
    await unary(client.admin, 'DeleteTopic', { name: topic });
  } finally {
    client.close();
  }
}

module.exports = { connect, unary, createTopic, BatchError, produceBatch, produceStream, subscribe, errorDetail, reason, main };

if (require.main === module) {
  main(process.argv[2] || '127.0.0.1:7400').catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
