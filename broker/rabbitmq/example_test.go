package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
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

// Order is what the example publishes and consumes.
type Order struct{ ID string }

// A consumer of a quorum queue under a Supervisor, with the standard
// middleware, and a publisher feeding it. Needs a RabbitMQ at the URL.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	dialer := rabbitmq.Dialer{URL: "amqp://guest:guest@localhost:5672/"}
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:   dialer,
		Queue:    "orders",
		Prefetch: 16, // at least the concurrency below
		Topology: rabbitmq.Topology{QueueType: rabbitmq.Quorum},
	})
	if err != nil {
		log.Fatal(err) // wraps broker.ErrInvalidConfig
	}
	// Declare the queue now, so that the first publish below finds it.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := src.DeclareTopology(dctx); err != nil {
		log.Fatal(err)
	}

	// A body that is not an Order is dead-lettered at once, with the
	// reason in its headers.
	handler := consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
		fmt.Println("order", o.ID, "attempt", m.Attempt)
		return nil
	})
	h := consumer.Chain(
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(50*time.Millisecond, time.Second), 3)),
		middleware.Timeout(5*time.Second),
	)(handler)
	c, err := consumer.New(src, h, consumer.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}

	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: dialer})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(context.Background())
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		// Through the default exchange, the key is the queue's name.
		// PublishJSON returns once the broker confirmed the message; an
		// error when it refused it, when no queue took it, or at the
		// deadline.
		if err := broker.PublishJSON(pctx, pub, "", []byte("orders"), Order{ID: "42"}); err != nil {
			log.Print(err)
		}
	}()

	var sup consumer.Supervisor
	if err := sup.Add("orders", c); err != nil {
		log.Fatal(err)
	}
	// Health().Ready is false while the source reconnects. On SIGINT the
	// Supervisor drains the consumer.
	if err := sup.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// Publishing a batch: the messages are written in one go and confirmed
// together. A failure names the first message that was not taken.
func ExamplePublisher_Publish() {
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{
		Dialer:    rabbitmq.Dialer{URL: "amqp://guest:guest@localhost:5672/"},
		Exchanges: []rabbitmq.Exchange{{Name: "events", Kind: amqp.ExchangeTopic}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = pub.Publish(ctx, "events",
		&broker.Message{Key: []byte("order.created"), ID: "order-42-created", Body: []byte(`{"id":"42"}`),
			Header: map[string]string{broker.HeaderContentType: broker.ContentTypeJSON}},
		&broker.Message{Key: []byte("order.paid"), ID: "order-42-paid", Body: []byte(`{"id":"42"}`),
			Header: map[string]string{broker.HeaderContentType: broker.ContentTypeJSON}},
	)
	var re *rabbitmq.ReturnError
	switch {
	case errors.As(err, &re):
		log.Printf("no queue is bound for %q: %s", re.RoutingKey, re.Reason)
	case err != nil:
		log.Print(err) // may or may not have arrived: publishing again is at-least-once
	}
}

// PublishRaw is for the AMQP properties a broker.Message has no field for.
func ExamplePublisher_PublishRaw() {
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: rabbitmq.Dialer{URL: "amqp://guest:guest@localhost:5672/"}})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = pub.PublishRaw(ctx, "", "reports", amqp.Publishing{
		Priority:   5,
		Expiration: "60000", // ms: dropped if not consumed within a minute
		Body:       []byte("daily"),
	})
	if err != nil {
		log.Print(err)
	}
}

func ExampleRedactURL() {
	fmt.Println(rabbitmq.RedactURL("amqp://app:s3cret@mq.internal:5672/prod"))
	// Output: amqp://app:xxxxx@mq.internal:5672/prod
}

// RedactError keeps a password out of the errors of code that dials by
// itself, and the error still matches what it wrapped.
func ExampleRedactError() {
	url := "amqp://app:s3cret@mq.internal:5672/prod"
	_, err := amqp.DialConfig(url, amqp.Config{Dial: func(network, addr string) (net.Conn, error) {
		return nil, fmt.Errorf("dial %s: connection refused (test)", url)
	}})
	err = rabbitmq.RedactError(err, url)
	fmt.Println(err)
	// Output: dial amqp://app:xxxxx@mq.internal:5672/prod: connection refused (test)
}
