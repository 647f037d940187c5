package streambus.example;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.common.record.MemoryRecords;
import org.apache.kafka.common.record.RecordBatch;
import streambus.v1.Admin.CreateTopicRequest;
import streambus.v1.Admin.DeleteTopicRequest;
import streambus.v1.Admin.DescribeTopicRequest;
import streambus.v1.AdminServiceGrpc;
import streambus.v1.Common.Acks;
import streambus.v1.Common.ConsumedRecord;
import streambus.v1.Common.ErrorDetail;
import streambus.v1.Common.Header;
import streambus.v1.Common.Record;
import streambus.v1.Consume.Empty;
import streambus.v1.Consume.StartPosition;
import streambus.v1.Consume.SubscribeRequest;
import streambus.v1.Consume.SubscribeResponse;
import streambus.v1.ConsumeServiceGrpc;
import streambus.v1.Produce.BatchResult;
import streambus.v1.Produce.PartitionAck;
import streambus.v1.Produce.ProduceBatch;
import streambus.v1.Produce.ProduceRequest;
import streambus.v1.Produce.ProduceStreamRequest;
import streambus.v1.Produce.ProduceStreamResponse;
import streambus.v1.ProduceServiceGrpc;

/**
 * A StreamBus client in Java, from stubs generated out of proto/ (see
 * docs/clients.md). {@code mvn -q compile exec:java -Dexec.args=127.0.0.1:7400}
 * creates a topic, produces with the unary call and the bidirectional
 * stream, reads the records back with Subscribe, and prints an error's
 * stable reason.
 */
public final class StreamBusExample implements AutoCloseable {
  public static final Metadata.Key<String> REASON =
      Metadata.Key.of("streambus-reason", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  public final AdminServiceGrpc.AdminServiceBlockingStub admin;
  public final ProduceServiceGrpc.ProduceServiceBlockingStub produce;
  public final ProduceServiceGrpc.ProduceServiceStub produceAsync;
  public final ConsumeServiceGrpc.ConsumeServiceBlockingStub consume;

  public StreamBusExample(String address) {
    channel = Grpc.newChannelBuilder(address, InsecureChannelCredentials.create()).build();
    admin = AdminServiceGrpc.newBlockingStub(channel);
    produce = ProduceServiceGrpc.newBlockingStub(channel);
    produceAsync = ProduceServiceGrpc.newStub(channel);
    consume = ConsumeServiceGrpc.newBlockingStub(channel);
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
  }

  /** Creates a topic and waits until every partition has a leader. */
  public void createTopic(String name, int partitions) throws InterruptedException {
    admin.withDeadlineAfter(30, TimeUnit.SECONDS)
        .createTopic(CreateTopicRequest.newBuilder().setName(name).setPartitions(partitions).build());
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
    while (!admin.describeTopic(DescribeTopicRequest.newBuilder().setName(name).build())
        .getTopic().getPartitionsList().stream().allMatch(p -> p.getLeader() != 0)) {
      if (System.nanoTime() > deadline) {
        throw new IllegalStateException("partitions of " + name + " have no leader");
      }
      Thread.sleep(100);
    }
  }

  /** A batch the gateway refused (produce errors are per batch, in-band). */
  public static final class BatchException extends RuntimeException {
    public final ErrorDetail detail;

    BatchException(ErrorDetail detail) {
      super(detail.getReason() + ": " + detail.getMessage());
      this.detail = detail;
    }
  }

  /** Writes one batch with the unary call: one ack per partition written. */
  public List<PartitionAck> produceBatch(ProduceBatch batch) {
    BatchResult result = produce.withDeadlineAfter(30, TimeUnit.SECONDS)
        .produce(ProduceRequest.newBuilder().addBatches(batch).setAcks(Acks.ACKS_ALL).build())
        .getResults(0);
    if (result.hasError()) {
      throw new BatchException(result.getError());
    }
    return result.getAcksList();
  }

  /**
   * Sends batches on one bidirectional stream, numbered from 0, and returns
   * the result of each by its number once the server has closed the stream.
   */
  public Map<Long, BatchResult> produceStream(List<ProduceBatch> batches) throws Exception {
    Map<Long, BatchResult> results = new ConcurrentHashMap<>();
    CompletableFuture<Void> done = new CompletableFuture<>();
    StreamObserver<ProduceStreamRequest> requests =
        produceAsync.withDeadlineAfter(30, TimeUnit.SECONDS).produceStream(
            new StreamObserver<ProduceStreamResponse>() {
              @Override
              public void onNext(ProduceStreamResponse response) {
                results.put(response.getSequence(), response.getResult());
              }

              @Override
              public void onError(Throwable t) {
                done.completeExceptionally(t);
              }

              @Override
              public void onCompleted() {
                done.complete(null);
              }
            });
    for (int i = 0; i < batches.size(); i++) {
      requests.onNext(ProduceStreamRequest.newBuilder()
          .setSequence(i).setBatch(batches.get(i)).setAcks(Acks.ACKS_ALL).build());
    }
    requests.onCompleted();
    done.get(30, TimeUnit.SECONDS);
    return results;
  }

  /** A consumed record with its partition. */
  public record Consumed(int partition, ConsumedRecord record) {}

  /**
   * Reads records of every partition from the earliest offset until it has
   * n of them; closing the cancellable context cancels the subscription.
   */
  public List<Consumed> subscribe(String topic, int n) throws Exception {
    SubscribeRequest request = SubscribeRequest.newBuilder()
        .setTopic(topic)
        .setStart(StartPosition.newBuilder().setEarliest(Empty.getDefaultInstance()))
        .setMaxWaitMs(200)
        .build();
    try (Context.CancellableContext context = Context.current().withCancellation()) {
      return context.call(() -> {
        List<Consumed> got = new ArrayList<>();
        Iterator<SubscribeResponse> responses =
            consume.withDeadlineAfter(30, TimeUnit.SECONDS).subscribe(request);
        while (got.size() < n && responses.hasNext()) {
          SubscribeResponse response = responses.next();
          for (ConsumedRecord r : response.getRecordsList()) {
            got.add(new Consumed(response.getPartition(), r));
          }
        }
        return got;
      });
    }
  }

  /**
   * The stable reason from the status details (grpc-status-details-bin: a
   * google.rpc.Status holding a streambus.v1.ErrorDetail).
   */
  public static Optional<ErrorDetail> detailOf(StatusRuntimeException e)
      throws InvalidProtocolBufferException {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    if (status != null) {
      for (Any any : status.getDetailsList()) {
        if (any.is(ErrorDetail.class)) {
          return Optional.of(any.unpack(ErrorDetail.class));
        }
      }
    }
    return Optional.empty();
  }

  /** The stable reason from the streambus-reason trailer. */
  public static String reasonOf(StatusRuntimeException e) {
    Metadata trailers = e.getTrailers();
    return trailers == null ? null : trailers.get(REASON);
  }

  /**
   * Decodes {@code encoded_batches} (Kafka RecordBatch v2, as a Subscribe or
   * Fetch with {@code encoded} returns them) with Kafka's own reader, which
   * checks each batch's CRC32C and decompresses compressed batches.
   */
  public static List<org.apache.kafka.common.record.Record> decodeBatches(ByteString encoded) {
    List<org.apache.kafka.common.record.Record> records = new ArrayList<>();
    for (RecordBatch batch : MemoryRecords.readableRecords(encoded.asReadOnlyByteBuffer()).batches()) {
      batch.ensureValid();
      for (org.apache.kafka.common.record.Record r : batch) {
        records.add(r);
      }
    }
    return records;
  }

  static ByteString bytes(String s) {
    return ByteString.copyFrom(s, StandardCharsets.UTF_8);
  }

  static Record record(String key, String value) {
    return Record.newBuilder().setKey(bytes(key)).setValue(bytes(value)).build();
  }

  public static void main(String[] args) throws Exception {
    String address = args.length > 0 ? args[0] : "127.0.0.1:7400";
    try (StreamBusExample client = new StreamBusExample(address)) {
      String topic = "java-example-" + System.nanoTime();
      client.createTopic(topic, 3);

      Record first = record("customer-1", "first").toBuilder()
          .addHeaders(Header.newBuilder().setKey("source").setValue(bytes("example")))
          .build();
      PartitionAck ack = client.produceBatch(
          ProduceBatch.newBuilder().setTopic(topic).addRecords(first).build()).get(0);
      System.out.printf("produced to partition %d at offset %d%n", ack.getPartition(), ack.getBaseOffset());

      Map<Long, BatchResult> results = client.produceStream(List.of(
          ProduceBatch.newBuilder().setTopic(topic).addRecords(record("customer-1", "second")).build(),
          ProduceBatch.newBuilder().setTopic(topic).addRecords(record("customer-1", "third")).build()));
      for (long seq = 0; seq < results.size(); seq++) {
        BatchResult result = results.get(seq);
        if (result.hasError()) {
          throw new BatchException(result.getError());
        }
        System.out.printf("stream batch %d at offset %d%n", seq, result.getAcks(0).getBaseOffset());
      }

      for (Consumed c : client.subscribe(topic, 3)) {
        System.out.printf("partition %d offset %d key %s value %s%n", c.partition(),
            c.record().getOffset(), c.record().getKey().toStringUtf8(),
            c.record().getValue().toStringUtf8());
      }

      try {
        client.admin.describeTopic(DescribeTopicRequest.newBuilder().setName(topic + "-missing").build());
      } catch (StatusRuntimeException e) {
        ErrorDetail detail = detailOf(e).orElseThrow();
        System.out.printf("error: %s (details), %s (trailer), retriable %b%n",
            detail.getReason(), reasonOf(e), detail.getRetriable());
      }
      client.admin.deleteTopic(DeleteTopicRequest.newBuilder().setName(topic).build());
    }
  }
}
