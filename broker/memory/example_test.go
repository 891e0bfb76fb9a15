package memory_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// A consumer on the in-memory broker: good messages are acked, a bad payload
// is dead-lettered at once with the reason in its headers.
func Example() {
	ctx := context.Background()
	b := memory.NewBroker()
	for _, body := range []string{`{"id":1}`, `not json`, `{"id":2}`} {
		if err := b.Publish(ctx, "orders", &broker.Message{Body: []byte(body)}); err != nil {
			panic(err)
		}
	}

	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		var order struct{ ID int }
		if err := json.Unmarshal(m.Body, &order); err != nil {
			return retry.Permanent(errors.New("bad payload"))
		}
		fmt.Printf("order %d (attempt %d)\n", order.ID, m.Attempt)
		if order.ID == 2 {
			stop() // the last one: stop gracefully; this message is still acked
		}
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	if err := c.Run(runCtx); err != nil {
		panic(err)
	}

	for _, m := range b.DeadLetters("orders") {
		fmt.Printf("dead letter %s: %s (permanent %s)\n", m.Body, m.Header[broker.HeaderError], m.Header[broker.HeaderPermanent])
	}
	s := b.Stats("orders")
	fmt.Printf("published %d, acked %d, dead-lettered %d, left %d\n", s.Published, s.Acked, s.DeadLettered, s.Ready+s.Unacked)
	// Output:
	// order 1 (attempt 1)
	// order 2 (attempt 1)
	// dead letter not json: bad payload (permanent true)
	// published 3, acked 2, dead-lettered 1, left 0
}

// A dropped connection makes outstanding deliveries stale: they cannot be
// acked, and their messages are delivered again with the next attempt number.
func ExampleSource_DropConnection() {
	ctx := context.Background()
	b := memory.NewBroker()
	b.Publish(ctx, "jobs", &broker.Message{Body: []byte("job")})
	src, _ := b.Source("jobs", memory.SourceConfig{})
	defer src.Close(context.Background())

	d, _ := src.Receive(ctx)
	src.DropConnection()
	err := d.Ack(ctx)
	fmt.Println(errors.Is(err, broker.ErrStaleDelivery))

	d, _ = src.Receive(ctx)
	fmt.Printf("%s attempt %d\n", d.Message().Body, d.Message().Attempt)
	fmt.Println(d.Ack(ctx))
	// Output:
	// true
	// job attempt 2
	// <nil>
}
