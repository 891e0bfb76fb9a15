package franz_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/consumer"
)

// A consumer of the "orders" topic in group "billing": records with the same
// key are handled in order, up to 32 at once per partition across keys.
// (Not run by go test: it needs a Kafka cluster; Example_consumer runs on an
// in-process one.)
func ExampleNewSource() {
	src, err := franz.NewSource(franz.Config{
		Brokers:     []string{"localhost:9092"},
		GroupID:     "billing",
		Topic:       "orders",
		Ordering:    franz.ByKey,
		MaxInFlight: 32,
	})
	if err != nil {
		log.Fatal(err) // wraps broker.ErrInvalidConfig
	}
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s key=%s attempt=%d\n", m.ID, m.Key, m.Attempt)
		return nil
	}), consumer.WithConcurrency(32), consumer.WithDrainTimeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := c.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// A Publisher writes three orders of one customer (one key: one partition,
// in order) and a consumer group member handles them with the consumer
// runtime, on a Kafka protocol cluster run in process by kfake.
func Example_consumer() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "orders", "orders.dlt"))
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	pub, err := franz.NewPublisher(franz.PublisherConfig{Brokers: brokers})
	if err != nil {
		log.Fatal(err)
	}
	var orders []*broker.Message
	for i := 1; i <= 3; i++ {
		orders = append(orders, &broker.Message{Key: []byte("customer-7"), Body: fmt.Appendf(nil, "order %d", i)})
	}
	if err := pub.Publish(ctx, "orders", orders...); err != nil {
		log.Fatal(err)
	}
	if err := pub.Close(ctx); err != nil {
		log.Fatal(err)
	}

	src, err := franz.NewSource(franz.Config{
		Brokers: brokers, GroupID: "billing", Topic: "orders",
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	handled := 0
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s (attempt %d)\n", m.Body, m.Attempt)
		if handled++; handled == len(orders) {
			cancel() // stop after the three: drain, commit, leave the group
		}
		return nil
	}), consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Run(runCtx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// order 1 (attempt 1)
	// order 2 (attempt 1)
	// order 3 (attempt 1)
}
