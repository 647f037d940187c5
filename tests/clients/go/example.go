// A StreamBus client in Go, from stubs generated out of proto/ (see
// docs/clients.md). `go run . 127.0.0.1:7400` creates a topic, produces
// with the unary call and the bidirectional stream, reads the records back
// with Subscribe, and prints an error's stable reason.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "streambus.example/client/gen/streambus/v1"
)

// Client holds one connection and the three public services.
type Client struct {
	conn    *grpc.ClientConn
	Admin   pb.AdminServiceClient
	Produce pb.ProduceServiceClient
	Consume pb.ConsumeServiceClient
}

func Dial(addr string) (*Client, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:    conn,
		Admin:   pb.NewAdminServiceClient(conn),
		Produce: pb.NewProduceServiceClient(conn),
		Consume: pb.NewConsumeServiceClient(conn),
	}, nil
}

func (c *Client) Close() error { return c.conn.Close() }

// CreateTopic creates a topic and waits until every partition has a leader.
func (c *Client) CreateTopic(ctx context.Context, name string, partitions uint32) error {
	_, err := c.Admin.CreateTopic(ctx, &pb.CreateTopicRequest{Name: name, Partitions: partitions})
	if err != nil {
		return err
	}
	for {
		desc, err := c.Admin.DescribeTopic(ctx, &pb.DescribeTopicRequest{Name: name})
		if err != nil {
			return err
		}
		ready := true
		for _, p := range desc.Topic.Partitions {
			ready = ready && p.Leader != 0
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// BatchError is a batch the gateway refused (produce errors are per batch).
type BatchError struct{ Detail *pb.ErrorDetail }

func (e *BatchError) Error() string {
	return fmt.Sprintf("%s: %s", e.Detail.Reason, e.Detail.Message)
}

// ProduceBatch writes one batch with the unary call and returns where its
// records went: one ack per partition written.
func (c *Client) ProduceBatch(ctx context.Context, batch *pb.ProduceBatch) ([]*pb.PartitionAck, error) {
	resp, err := c.Produce.Produce(ctx, &pb.ProduceRequest{
		Batches: []*pb.ProduceBatch{batch},
		Acks:    pb.Acks_ACKS_ALL,
	})
	if err != nil {
		return nil, err
	}
	result := resp.Results[0]
	if result.Error != nil {
		return result.Acks, &BatchError{result.Error}
	}
	return result.Acks, nil
}

// ProduceStream sends batches on one bidirectional stream, numbered from 0,
// and returns the result of each by its number. A sender goroutine and the
// receiving loop run at once: the gateway answers while it still reads.
func (c *Client) ProduceStream(ctx context.Context, batches []*pb.ProduceBatch) (map[uint64]*pb.BatchResult, error) {
	stream, err := c.Produce.ProduceStream(ctx)
	if err != nil {
		return nil, err
	}
	sent := make(chan error, 1)
	go func() {
		for i, b := range batches {
			req := &pb.ProduceStreamRequest{Sequence: uint64(i), Batch: b, Acks: pb.Acks_ACKS_ALL}
			if err := stream.Send(req); err != nil {
				sent <- err // the receiving loop sees the stream's status
				return
			}
		}
		sent <- stream.CloseSend()
	}()
	results := make(map[uint64]*pb.BatchResult, len(batches))
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return results, err
		}
		results[resp.Sequence] = resp.Result
	}
	if err := <-sent; err != nil && !errors.Is(err, io.EOF) {
		return results, err
	}
	return results, nil
}

// Consumed is a record with the partition it came from.
type Consumed struct {
	Partition uint32
	Record    *pb.ConsumedRecord
}

// Subscribe reads records of every partition from the earliest offset
// until it has n of them, then cancels the subscription.
func (c *Client) Subscribe(ctx context.Context, topic string, n int) ([]Consumed, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Consume.Subscribe(ctx, &pb.SubscribeRequest{
		Topic:     topic,
		Start:     &pb.StartPosition{Position: &pb.StartPosition_Earliest{Earliest: &pb.Empty{}}},
		MaxWaitMs: 200,
	})
	if err != nil {
		return nil, err
	}
	var got []Consumed
	for len(got) < n {
		resp, err := stream.Recv()
		if err != nil {
			return got, err // a subscription never ends by itself
		}
		for _, r := range resp.Records {
			got = append(got, Consumed{resp.Partition, r})
		}
	}
	return got, nil
}

// ReasonFromDetails reads the stable reason from the status details
// (grpc-status-details-bin: a google.rpc.Status holding a
// streambus.v1.ErrorDetail).
func ReasonFromDetails(err error) (*pb.ErrorDetail, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	for _, d := range st.Details() {
		if detail, ok := d.(*pb.ErrorDetail); ok {
			return detail, true
		}
	}
	return nil, false
}

// ReasonFromTrailer reads the stable reason from the streambus-reason
// trailer: pass grpc.Trailer(&md) to a unary call, or read stream.Trailer().
func ReasonFromTrailer(md metadata.MD) string {
	if v := md.Get("streambus-reason"); len(v) > 0 {
		return v[0]
	}
	return ""
}

func run(ctx context.Context, addr string, out io.Writer) error {
	client, err := Dial(addr)
	if err != nil {
		return err
	}
	defer client.Close()

	topic := fmt.Sprintf("go-example-%d", time.Now().UnixNano())
	if err := client.CreateTopic(ctx, topic, 3); err != nil {
		return err
	}
	acks, err := client.ProduceBatch(ctx, &pb.ProduceBatch{Topic: topic, Records: []*pb.Record{
		{Key: []byte("customer-1"), Value: []byte("first"),
			Headers: []*pb.Header{{Key: "source", Value: []byte("example")}}},
	}})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "produced to partition %d at offset %d\n", acks[0].Partition, acks[0].BaseOffset)
	results, err := client.ProduceStream(ctx, []*pb.ProduceBatch{
		{Topic: topic, Records: []*pb.Record{{Key: []byte("customer-1"), Value: []byte("second")}}},
		{Topic: topic, Records: []*pb.Record{{Key: []byte("customer-1"), Value: []byte("third")}}},
	})
	if err != nil {
		return err
	}
	for seq := uint64(0); seq < uint64(len(results)); seq++ {
		if e := results[seq].Error; e != nil {
			return &BatchError{e}
		}
		fmt.Fprintf(out, "stream batch %d at offset %d\n", seq, results[seq].Acks[0].BaseOffset)
	}
	records, err := client.Subscribe(ctx, topic, 3)
	if err != nil {
		return err
	}
	for _, c := range records {
		fmt.Fprintf(out, "partition %d offset %d key %s value %s\n",
			c.Partition, c.Record.Offset, c.Record.Key, c.Record.Value)
	}

	var trailer metadata.MD
	_, err = client.Admin.DescribeTopic(ctx, &pb.DescribeTopicRequest{Name: topic + "-missing"},
		grpc.Trailer(&trailer))
	detail, _ := ReasonFromDetails(err)
	fmt.Fprintf(out, "error: %s (details), %s (trailer), retriable %v\n",
		detail.GetReason(), ReasonFromTrailer(trailer), detail.GetRetriable())
	_, err = client.Admin.DeleteTopic(ctx, &pb.DeleteTopicRequest{Name: topic})
	return err
}

func main() {
	addr := "127.0.0.1:7400"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
