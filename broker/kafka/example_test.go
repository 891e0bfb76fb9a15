package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os/signal"
	"syscall"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// A consumer of the "orders" topic in group "billing": records with the same
// key are handled in order, up to 32 at once per partition across keys.
// (Not run by go test: it needs a Kafka cluster.)
func ExampleNewSource() {
	src, err := kafka.NewSource(kafka.Config{
		Brokers:     []string{"localhost:9092"},
		GroupID:     "billing",
		Topic:       "orders",
		Ordering:    kafka.ByKey,
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
		log.Print(err)
	}
}

// Publishing keyed messages with explicit batching.
func ExampleNewPublisher() {
	p, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:      []string{"localhost:9092"},
		BatchTimeout: 2 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		// Close waits for writes in progress, up to its context's deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Close(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The key picks the partition: one customer's orders keep their order.
	err = broker.PublishJSON(ctx, p, "orders", []byte("customer-42"), map[string]int{"order": 1})
	if err != nil {
		log.Print(err) // the record may or may not have been written
	}
}

// The group's backlog, in total and per partition, for a metric or a health
// check.
func ExampleSource_Backlog() {
	src, err := kafka.NewSource(kafka.Config{Brokers: []string{"localhost:9092"}, GroupID: "billing", Topic: "orders"})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := src.Backlog(ctx)
	if err != nil {
		log.Print(err)
		return
	}
	fmt.Printf("%d records behind\n", b.Messages)
	for p, lag := range b.Partitions {
		fmt.Printf("partition %d: lag %d\n", p, lag)
	}
}

// Creating the topic and its dead-letter topic before consuming, and a
// shutdown bounded by a deadline: Shutdown returns within it even when the
// broker stops answering, and what was not committed is delivered again.
func ExampleSource_DeclareTopology() {
	src, err := kafka.NewSource(kafka.Config{
		Brokers:  []string{"localhost:9092"},
		GroupID:  "billing",
		Topic:    "orders",
		Topology: kafka.Topology{Partitions: 12, ReplicationFactor: 3},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = src.DeclareTopology(ctx)
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		<-sig.Done()
		// Below the Kubernetes grace period (30 s by default).
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := c.Shutdown(ctx); err != nil {
			log.Print(err)
		}
	}()
	if err := c.Run(context.Background()); err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
		log.Print(err)
	}
}
