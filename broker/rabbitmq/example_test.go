package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// A consumer of a quorum queue under a Supervisor, with the standard
// middleware, and a publisher feeding it. Needs a RabbitMQ at the URL.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	url := "amqp://guest:guest@localhost:5672/"
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:   rabbitmq.Dialer{URL: url},
		Queue:    "orders",
		Prefetch: 16, // at least the concurrency below
		Topology: rabbitmq.Topology{QueueType: rabbitmq.Quorum},
	})
	if err != nil {
		log.Fatal(err) // wraps consumer.ErrInvalidConfig
	}
	handler := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		var order struct{ ID string }
		if err := json.Unmarshal(m.Body, &order); err != nil {
			return retry.Permanent(err) // dead-lettered at once, with the reason in its headers
		}
		fmt.Println("order", order.ID, "attempt", m.Attempt)
		return nil
	})
	h := consumer.Chain(
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(50*time.Millisecond, time.Second), 3)),
		middleware.Timeout(5*time.Second),
	)(handler)
	c, err := consumer.New(src, h, consumer.WithName("orders"), consumer.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}

	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: rabbitmq.Dialer{URL: url}})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(context.Background())
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		// Returns once the broker confirmed it; an error on nack, on an
		// unroutable message or at the deadline.
		if err := pub.PublishRaw(pctx, "", "orders", amqp.Publishing{ContentType: "application/json", Body: []byte(`{"ID":"42"}`)}); err != nil {
			log.Print(err)
		}
	}()

	var sup consumer.Supervisor
	if err := sup.Add("orders", c); err != nil {
		log.Fatal(err)
	}
	// Health().Ready is false while the source reconnects.
	if err := sup.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
