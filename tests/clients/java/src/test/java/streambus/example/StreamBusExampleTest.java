package streambus.example;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import streambus.v1.Admin.DeleteTopicRequest;
import streambus.v1.Admin.DescribeTopicRequest;
import streambus.v1.Common.ConsumedRecord;
import streambus.v1.Common.ErrorDetail;
import streambus.v1.Common.Header;
import streambus.v1.Common.Record;
import streambus.v1.Consume.FetchRequest;
import streambus.v1.Consume.FetchResponse;
import streambus.v1.Consume.SubscribeRequest;
import streambus.v1.Consume.SubscribeResponse;
import streambus.v1.Produce.BatchResult;
import streambus.v1.Produce.PartitionAck;
import streambus.v1.Produce.ProduceBatch;

/** Runs against the gateway in STREAMBUS_GATEWAY (`cargo xtask clients-test java`). */
class StreamBusExampleTest {
  private String address;
  private StreamBusExample client;
  private final List<String> topics = new ArrayList<>();

  @BeforeEach
  void connect() {
    String gateway = System.getenv("STREAMBUS_GATEWAY");
    if (gateway == null || gateway.isEmpty()) {
      fail("set STREAMBUS_GATEWAY=host:port to run the client tests");
    }
    address = gateway.replaceFirst("^http://", "");
    client = new StreamBusExample(address);
  }

  @AfterEach
  void close() throws InterruptedException {
    for (String topic : topics) {
      client.admin.deleteTopic(DeleteTopicRequest.newBuilder().setName(topic).build());
    }
    client.close();
  }

  private String topic(String prefix, int partitions) throws InterruptedException {
    String name = prefix + "-" + System.nanoTime();
    client.createTopic(name, partitions);
    topics.add(name);
    return name;
  }

  private static ByteString bytes(String s) {
    return ByteString.copyFrom(s, StandardCharsets.UTF_8);
  }

  /**
   * Record i: key k-(i%3), value v-i, a header with a value, one with an
   * empty value and one without (null), and a fixed timestamp.
   */
  private static Record record(int i) {
    return Record.newBuilder()
        .setKey(bytes("k-" + (i % 3)))
        .setValue(bytes("v-" + i))
        .addHeaders(Header.newBuilder().setKey("seq").setValue(bytes(Integer.toString(i))))
        .addHeaders(Header.newBuilder().setKey("empty").setValue(ByteString.EMPTY))
        .addHeaders(Header.newBuilder().setKey("null"))
        .setTimestampMs(1_700_000_000_000L + i)
        .build();
  }

  private static void checkRecord(ConsumedRecord got, long offset, Record want) {
    assertEquals(offset, got.getOffset());
    assertEquals(want.getKey(), got.getKey(), "key at " + offset);
    assertEquals(want.getValue(), got.getValue(), "value at " + offset);
    assertEquals(want.getTimestampMs(), got.getTimestampMs(), "timestamp at " + offset);
    // Header equality includes presence: a null value is not an empty one.
    assertEquals(want.getHeadersList(), got.getHeadersList(), "headers at " + offset);
  }

  @Test
  void produceUnaryAndStreamThenSubscribe() throws Exception {
    String topic = topic("java-client", 3);
    List<Record> sent = new ArrayList<>();
    for (int i = 0; i < 4; i++) {
      sent.add(record(i));
    }
    List<PartitionAck> acks = client.produceBatch(
        ProduceBatch.newBuilder().setTopic(topic).setPartition(1).addAllRecords(sent).build());
    assertEquals(1, acks.size());
    assertEquals(List.of(1, 0L, 3L, 4), List.of(acks.get(0).getPartition(),
        acks.get(0).getBaseOffset(), acks.get(0).getLastOffset(), acks.get(0).getRecordCount()));

    List<ProduceBatch> batches = new ArrayList<>();
    for (int i = 4; i < 7; i++) {
      sent.add(record(i));
      batches.add(ProduceBatch.newBuilder().setTopic(topic).setPartition(1).addRecords(record(i)).build());
    }
    Map<Long, BatchResult> results = client.produceStream(batches);
    assertEquals(3, results.size());
    for (long seq = 0; seq < 3; seq++) {
      BatchResult result = results.get(seq);
      assertFalse(result.hasError(), result.getError().toString());
      PartitionAck ack = result.getAcks(0);
      assertEquals(1, ack.getPartition());
      assertEquals(4 + seq, ack.getBaseOffset(), "stream batch " + seq);
      assertEquals(ack.getBaseOffset(), ack.getLastOffset());
    }

    List<Record> keyed = new ArrayList<>();
    for (int i = 10; i < 16; i++) {
      keyed.add(record(i));
    }
    acks = client.produceBatch(ProduceBatch.newBuilder().setTopic(topic).addAllRecords(keyed).build());
    assertEquals(6, acks.stream().mapToInt(PartitionAck::getRecordCount).sum(), acks.toString());

    List<StreamBusExample.Consumed> got = client.subscribe(topic, sent.size() + keyed.size());
    assertEquals(sent.size() + keyed.size(), got.size());
    Map<ByteString, Record> byValue = new HashMap<>();
    keyed.forEach(r -> byValue.put(r.getValue(), r));
    Map<Integer, Long> next = new HashMap<>();
    Map<ByteString, Integer> partitionOfKey = new HashMap<>();
    List<ConsumedRecord> explicit = new ArrayList<>();
    for (StreamBusExample.Consumed c : got) {
      assertEquals(next.getOrDefault(c.partition(), 0L), c.record().getOffset(), "partition " + c.partition());
      next.put(c.partition(), c.record().getOffset() + 1);
      Record want = byValue.get(c.record().getValue());
      if (want == null) {
        assertEquals(1, c.partition());
        explicit.add(c.record());
        continue;
      }
      checkRecord(c.record(), c.record().getOffset(), want);
      Integer p = partitionOfKey.putIfAbsent(want.getKey(), c.partition());
      assertTrue(p == null || p == c.partition(), "one key, one partition");
    }
    assertEquals(sent.size(), explicit.size());
    for (int i = 0; i < sent.size(); i++) {
      checkRecord(explicit.get(i), i, sent.get(i));
    }
  }

  @Test
  void errorReasonsFromDetailsAndTrailer() throws Exception {
    String missing = "java-client-missing-" + System.nanoTime();
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
        () -> client.admin.describeTopic(DescribeTopicRequest.newBuilder().setName(missing).build()));
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
    ErrorDetail detail = StreamBusExample.detailOf(e).orElseThrow();
    assertEquals("UNKNOWN_TOPIC", detail.getReason());
    assertEquals(Status.Code.NOT_FOUND.value(), detail.getCode());
    assertFalse(detail.getRetriable());
    assertTrue(detail.getMessage().contains(missing), detail.getMessage());
    assertEquals("UNKNOWN_TOPIC", StreamBusExample.reasonOf(e));

    // A server stream fails when it is read.
    Iterator<SubscribeResponse> responses = client.consume.withDeadlineAfter(10, TimeUnit.SECONDS)
        .subscribe(SubscribeRequest.newBuilder().setTopic(missing).build());
    e = assertThrows(StatusRuntimeException.class, responses::hasNext);
    assertEquals("UNKNOWN_TOPIC", StreamBusExample.detailOf(e).orElseThrow().getReason());
    assertEquals("UNKNOWN_TOPIC", StreamBusExample.reasonOf(e));

    String topic = topic("java-client-twice", 1);
    e = assertThrows(StatusRuntimeException.class, () -> client.createTopic(topic, 1));
    assertEquals(Status.Code.ALREADY_EXISTS, e.getStatus().getCode());
    assertEquals("TOPIC_ALREADY_EXISTS", StreamBusExample.detailOf(e).orElseThrow().getReason());
    assertEquals("TOPIC_ALREADY_EXISTS", StreamBusExample.reasonOf(e));

    // Produce errors are per batch, in the response.
    StreamBusExample.BatchException batchError = assertThrows(StreamBusExample.BatchException.class,
        () -> client.produceBatch(
            ProduceBatch.newBuilder().setTopic(topic).setPartition(7).addRecords(record(0)).build()));
    assertEquals("UNKNOWN_PARTITION", batchError.detail.getReason());
  }

  @Test
  void encodedBatchesDecodeWithKafkasRecordReader() throws Exception {
    String topic = topic("java-client-encoded", 1);
    List<Record> sent = new ArrayList<>();
    for (int i = 0; i < 5; i++) {
      sent.add(record(i));
    }
    // Two batches: offsets 0..2 and 3..4.
    client.produceBatch(ProduceBatch.newBuilder().setTopic(topic).addAllRecords(sent.subList(0, 3)).build());
    client.produceBatch(ProduceBatch.newBuilder().setTopic(topic).addAllRecords(sent.subList(3, 5)).build());

    List<org.apache.kafka.common.record.Record> decoded = new ArrayList<>();
    long offset = 0;
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
    while (decoded.size() < sent.size()) {
      assertTrue(System.nanoTime() < deadline, "only " + decoded.size() + " records");
      FetchResponse resp = client.consume.fetch(FetchRequest.newBuilder()
          .setTopic(topic).setPartition(0).setOffset(offset).setMaxWaitMs(500).setEncoded(true).build());
      assertEquals(0, resp.getRecordsCount(), "encoded fetches carry no decoded records");
      for (org.apache.kafka.common.record.Record r : StreamBusExample.decodeBatches(resp.getEncodedBatches())) {
        if (r.offset() >= offset) {
          decoded.add(r);
        }
      }
      offset = Math.max(offset, resp.getNextOffset());
    }
    for (int i = 0; i < sent.size(); i++) {
      org.apache.kafka.common.record.Record got = decoded.get(i);
      Record want = sent.get(i);
      assertEquals(i, got.offset());
      assertEquals(want.getTimestampMs(), got.timestamp());
      assertArrayEquals(want.getKey().toByteArray(), bytesOf(got.key()));
      assertArrayEquals(want.getValue().toByteArray(), bytesOf(got.value()));
      org.apache.kafka.common.header.Header[] headers = got.headers();
      assertEquals(3, headers.length);
      assertEquals("seq", headers[0].key());
      assertArrayEquals(Integer.toString(i).getBytes(StandardCharsets.UTF_8), headers[0].value());
      assertEquals("empty", headers[1].key());
      assertArrayEquals(new byte[0], headers[1].value());
      assertEquals("null", headers[2].key());
      assertNull(headers[2].value());
    }
  }

  private static byte[] bytesOf(ByteBuffer buffer) {
    byte[] out = new byte[buffer.remaining()];
    buffer.duplicate().get(out);
    return out;
  }

  @Test
  void exampleProgram() throws Exception {
    ByteArrayOutputStream captured = new ByteArrayOutputStream();
    PrintStream stdout = System.out;
    System.setOut(new PrintStream(captured, true, StandardCharsets.UTF_8));
    try {
      StreamBusExample.main(new String[] {address});
    } finally {
      System.setOut(stdout);
    }
    String out = captured.toString(StandardCharsets.UTF_8);
    stdout.print(out);
    for (String want : List.of(
        "offset 0 key customer-1 value first\n",
        "offset 1 key customer-1 value second\n",
        "offset 2 key customer-1 value third\n",
        "error: UNKNOWN_TOPIC (details), UNKNOWN_TOPIC (trailer), retriable false\n")) {
      assertTrue(out.contains(want), "output lacks " + want + ":\n" + out);
    }
  }
}
