package kafka_test

import (
	"context"
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
		log.Fatal(err) // wraps consumer.ErrInvalidConfig
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
		Topic:        "orders",
		BatchTimeout: 2 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = p.Publish(ctx, &broker.Message{
		Key:    []byte("customer-42"),
		Body:   []byte(`{"order":1}`),
		Header: map[string]string{"content-type": "application/json"},
	})
	if err != nil {
		log.Print(err)
	}
}

// Lag per partition, for a metric or a health check.
func ExampleSource_Lag() {
	src, err := kafka.NewSource(kafka.Config{Brokers: []string{"localhost:9092"}, GroupID: "billing", Topic: "orders"})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close(context.Background())
	lag, err := src.Lag(context.Background())
	if err != nil {
		log.Print(err)
		return
	}
	for _, l := range lag {
		fmt.Printf("partition %d: lag %d\n", l.Partition, l.Lag)
	}
}
