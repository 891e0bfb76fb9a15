package queuekit_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Order is the payload of the example's queue.
type Order struct {
	ID       string `json:"id"`
	Quantity int    `json:"quantity"`
}

// The five steps of the overview, on the embedded in-memory broker: a typed
// handler wrapped in middleware, a source, a consumer, and a Supervisor whose
// context ends the run (in a program, signal.NotifyContext). A payload that
// does not decode is dead-lettered at once; a handler error is retried, then
// dead-lettered with the reason.
func Example() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mb := memory.NewBroker()
	defer mb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// 0. Something to consume, published through the broker's
	// broker.Publisher: PublishJSON for a value, Publish for a raw body (here
	// one that does not decode).
	pub := mb.Publisher()
	defer pub.Close(context.Background())
	_ = broker.PublishJSON(ctx, pub, "orders", nil, Order{ID: "o-1", Quantity: 2})
	_ = pub.Publish(ctx, "orders", &broker.Message{Body: []byte(`{"id":"o-2","quantity":"two"}`)})
	_ = broker.PublishJSON(ctx, pub, "orders", nil, Order{ID: "o-3", Quantity: 0})

	// 1. A handler. 2. Middleware around it.
	h := consumer.Chain(
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Constant(time.Millisecond), 2)),
	)(consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
		if o.Quantity < 1 {
			return fmt.Errorf("order %s: quantity %d", o.ID, o.Quantity)
		}
		fmt.Println("saved", o.ID)
		return nil
	}))
	// 3. A source. 4. A consumer.
	src, err := mb.Source("orders", memory.SourceConfig{Prefetch: 16})
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := consumer.New(src, h, consumer.WithConcurrency(1), consumer.WithMaxDeliveries(2), consumer.WithLogger(quiet))
	if err != nil {
		fmt.Println(err)
		return
	}
	// 5. A Supervisor, stopped here once every message is settled. Add
	// names the consumer, for its logs, events, metrics and health.
	sup := &consumer.Supervisor{Logger: quiet}
	if err := sup.Add("orders", c); err != nil {
		fmt.Println(err)
		return
	}
	go func() {
		for mb.Stats("orders").Acked+mb.Stats("orders").DeadLettered < 3 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	fmt.Println("run:", sup.Run(ctx))

	for _, m := range mb.DeadLetters("orders") {
		fmt.Printf("dead letter after %s attempt(s): %s\n", m.Header[broker.HeaderAttempts], m.Header[broker.HeaderError])
	}
	// Output:
	// saved o-1
	// run: <nil>
	// dead letter after 1 attempt(s): queuekit: decode JSON body of message orders-2 into queuekit_test.Order: json: cannot unmarshal string into Go struct field Order.quantity of type int
	// dead letter after 2 attempt(s): order o-3: quantity 0
}
