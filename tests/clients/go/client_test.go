package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "streambus.example/client/gen/streambus/v1"
)

// connect dials the gateway named by STREAMBUS_GATEWAY (`cargo xtask
// clients-test go` starts a `streambus dev` and sets it).
func connect(t *testing.T) (*Client, context.Context) {
	t.Helper()
	addr := strings.TrimPrefix(os.Getenv("STREAMBUS_GATEWAY"), "http://")
	if addr == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("STREAMBUS_GATEWAY must name the gateway under test in CI")
		}
		t.Skip("set STREAMBUS_GATEWAY=host:port to run the client tests")
	}
	client, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return client, ctx
}

func uniqueTopic(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// record i: key k-(i%3), value v-i, a header with a value, one with an
// empty value and one without (null), and a fixed timestamp.
func record(i int) *pb.Record {
	return &pb.Record{
		Key:   []byte(fmt.Sprintf("k-%d", i%3)),
		Value: []byte(fmt.Sprintf("v-%d", i)),
		Headers: []*pb.Header{
			{Key: "seq", Value: []byte(fmt.Sprint(i))},
			{Key: "empty", Value: []byte{}},
			{Key: "null"},
		},
		TimestampMs: 1_700_000_000_000 + int64(i),
	}
}

func checkRecord(t *testing.T, got *pb.ConsumedRecord, offset int64, want *pb.Record) {
	t.Helper()
	if got.Offset != offset {
		t.Errorf("offset %d, want %d", got.Offset, offset)
	}
	if !bytes.Equal(got.Key, want.Key) || !bytes.Equal(got.Value, want.Value) {
		t.Errorf("offset %d: key %q value %q, want %q %q", offset, got.Key, got.Value, want.Key, want.Value)
	}
	if got.TimestampMs != want.TimestampMs {
		t.Errorf("offset %d: timestamp %d, want %d", offset, got.TimestampMs, want.TimestampMs)
	}
	if len(got.Headers) != len(want.Headers) {
		t.Fatalf("offset %d: %d headers, want %d", offset, len(got.Headers), len(want.Headers))
	}
	for i, h := range want.Headers {
		// proto.Equal tells an absent value (null) from an empty one.
		if !proto.Equal(got.Headers[i], h) {
			t.Errorf("offset %d: header %d is %v, want %v", offset, i, got.Headers[i], h)
		}
	}
}

func TestProduceUnaryAndStreamThenSubscribe(t *testing.T) {
	client, ctx := connect(t)
	topic := uniqueTopic("go-client")
	if err := client.CreateTopic(ctx, topic, 3); err != nil {
		t.Fatal(err)
	}
	defer client.Admin.DeleteTopic(ctx, &pb.DeleteTopicRequest{Name: topic})

	// Unary, to an explicit partition: offsets 0..3 of partition 1.
	partition := uint32(1)
	var sent []*pb.Record
	for i := 0; i < 4; i++ {
		sent = append(sent, record(i))
	}
	acks, err := client.ProduceBatch(ctx, &pb.ProduceBatch{Topic: topic, Partition: &partition, Records: sent})
	if err != nil {
		t.Fatal(err)
	}
	if len(acks) != 1 || acks[0].Partition != 1 || acks[0].BaseOffset != 0 || acks[0].LastOffset != 3 || acks[0].RecordCount != 4 {
		t.Fatalf("unary acks %v", acks)
	}

	// The bidirectional stream: three batches, in order, offsets 4..6.
	var batches []*pb.ProduceBatch
	for i := 4; i < 7; i++ {
		sent = append(sent, record(i))
		batches = append(batches, &pb.ProduceBatch{Topic: topic, Partition: &partition, Records: []*pb.Record{record(i)}})
	}
	results, err := client.ProduceStream(ctx, batches)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 3 {
		t.Fatalf("%d stream results, want 3", len(results))
	}
	for seq := uint64(0); seq < 3; seq++ {
		r := results[seq]
		if r.Error != nil || len(r.Acks) != 1 {
			t.Fatalf("stream result %d: %v", seq, r)
		}
		if a := r.Acks[0]; a.Partition != 1 || a.BaseOffset != int64(4+seq) || a.LastOffset != a.BaseOffset {
			t.Errorf("stream result %d: ack %v, want offset %d", seq, a, 4+seq)
		}
	}

	// Keyed records without a partition: the gateway spreads them by key.
	var keyed []*pb.Record
	for i := 10; i < 16; i++ {
		keyed = append(keyed, record(i))
	}
	acks, err = client.ProduceBatch(ctx, &pb.ProduceBatch{Topic: topic, Records: keyed})
	if err != nil {
		t.Fatal(err)
	}
	total := uint32(0)
	for _, a := range acks {
		total += a.RecordCount
	}
	if total != 6 {
		t.Fatalf("keyed acks %v cover %d records, want 6", acks, total)
	}

	got, err := client.Subscribe(ctx, topic, len(sent)+len(keyed))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(sent)+len(keyed) {
		t.Fatalf("subscribed %d records, want %d", len(got), len(sent)+len(keyed))
	}
	var explicit []*pb.ConsumedRecord
	partitionOfKey := map[string]uint32{}
	nextOffset := map[uint32]int64{}
	byValue := map[string]*pb.Record{}
	for _, r := range keyed {
		byValue[string(r.Value)] = r
	}
	for _, c := range got {
		if c.Record.Offset != nextOffset[c.Partition] {
			t.Errorf("partition %d: offset %d, want %d", c.Partition, c.Record.Offset, nextOffset[c.Partition])
		}
		nextOffset[c.Partition] = c.Record.Offset + 1
		want, isKeyed := byValue[string(c.Record.Value)]
		if !isKeyed {
			if c.Partition != 1 {
				t.Errorf("record %q in partition %d, want 1", c.Record.Value, c.Partition)
			}
			explicit = append(explicit, c.Record)
			continue
		}
		checkRecord(t, c.Record, c.Record.Offset, want)
		if p, seen := partitionOfKey[string(want.Key)]; seen && p != c.Partition {
			t.Errorf("key %q in partitions %d and %d", want.Key, p, c.Partition)
		}
		partitionOfKey[string(want.Key)] = c.Partition
	}
	if len(explicit) != len(sent) {
		t.Fatalf("%d records of partition 1 before the keyed ones, want %d", len(explicit), len(sent))
	}
	for i, r := range explicit {
		checkRecord(t, r, int64(i), sent[i])
	}
}

func TestErrorReasonsFromDetailsAndTrailer(t *testing.T) {
	client, ctx := connect(t)
	missing := uniqueTopic("go-client-missing")

	// A unary call: grpc.Trailer captures the trailing metadata.
	var trailer metadata.MD
	_, err := client.Admin.DescribeTopic(ctx, &pb.DescribeTopicRequest{Name: missing}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("DescribeTopic of a missing topic: %v", err)
	}
	detail, ok := ReasonFromDetails(err)
	if !ok || detail.Reason != "UNKNOWN_TOPIC" || detail.Retriable || detail.Code != int32(codes.NotFound) {
		t.Errorf("status details %v", detail)
	}
	if !strings.Contains(detail.GetMessage(), missing) {
		t.Errorf("message %q does not name the topic", detail.GetMessage())
	}
	if r := ReasonFromTrailer(trailer); r != "UNKNOWN_TOPIC" {
		t.Errorf("streambus-reason trailer %q", r)
	}

	// A server stream: the error comes from Recv, the trailer from the stream.
	stream, err := client.Consume.Subscribe(ctx, &pb.SubscribeRequest{Topic: missing})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if detail, ok := ReasonFromDetails(err); !ok || detail.Reason != "UNKNOWN_TOPIC" {
		t.Errorf("Subscribe to a missing topic: %v", err)
	}
	if r := ReasonFromTrailer(stream.Trailer()); r != "UNKNOWN_TOPIC" {
		t.Errorf("Subscribe trailer reason %q", r)
	}

	// Creating a topic twice.
	topic := uniqueTopic("go-client-twice")
	if err := client.CreateTopic(ctx, topic, 1); err != nil {
		t.Fatal(err)
	}
	defer client.Admin.DeleteTopic(ctx, &pb.DeleteTopicRequest{Name: topic})
	err = client.CreateTopic(ctx, topic, 1)
	if detail, ok := ReasonFromDetails(err); !ok || detail.Reason != "TOPIC_ALREADY_EXISTS" || status.Code(err) != codes.AlreadyExists {
		t.Errorf("second CreateTopic: %v", err)
	}

	// Produce errors are per batch, in-band; the call itself succeeds.
	partition := uint32(7)
	_, err = client.ProduceBatch(ctx, &pb.ProduceBatch{Topic: topic, Partition: &partition, Records: []*pb.Record{record(0)}})
	var batchErr *BatchError
	if !errors.As(err, &batchErr) || batchErr.Detail.Reason != "UNKNOWN_PARTITION" {
		t.Errorf("produce to partition 7 of 1: %v", err)
	}
}

func TestExampleProgram(t *testing.T) {
	client, ctx := connect(t)
	client.Close()
	var out bytes.Buffer
	addr := strings.TrimPrefix(os.Getenv("STREAMBUS_GATEWAY"), "http://")
	if err := run(ctx, addr, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"offset 0 key customer-1 value first\n",
		"offset 1 key customer-1 value second\n",
		"offset 2 key customer-1 value third\n",
		"error: UNKNOWN_TOPIC (details), UNKNOWN_TOPIC (trailer), retriable false\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}
