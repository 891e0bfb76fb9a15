package memory_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// A publisher and a consumer on the in-memory broker. The publisher is a
// broker.Publisher and the source a broker.Source: on RabbitMQ or Kafka only
// the two constructors change. Good orders are acked; a payload that does
// not decode is dead-lettered at once, with the reason in its headers.
func Example() {
	ctx := context.Background()
	b := memory.NewBroker()
	defer b.Close()

	pub := b.Publisher()
	type Order struct {
		ID int `json:"id"`
	}
	if err := broker.PublishJSON(ctx, pub, "orders", []byte("customer-7"), Order{ID: 1}); err != nil {
		panic(err)
	}
	// A batch: taken all at once, in order.
	bad := &broker.Message{Body: []byte("not json")}
	good, err := broker.NewJSON(Order{ID: 2})
	if err != nil {
		panic(err)
	}
	if err := pub.Publish(ctx, "orders", bad, good); err != nil {
		panic(err)
	}
	if err := pub.Close(ctx); err != nil {
		panic(err)
	}
	err = pub.Publish(ctx, "orders", good)
	fmt.Println("publish after Close:", errors.Is(err, broker.ErrPublisherClosed))

	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		panic(err)
	}
	if bl, err := src.Backlog(ctx); err == nil {
		fmt.Printf("backlog: %d messages, %d consumer\n", bl.Messages, bl.Consumers)
	}
	runCtx, stop := context.WithCancel(ctx)
	h := consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
		fmt.Printf("order %d (%s, attempt %d)\n", o.ID, m.Header[broker.HeaderContentType], m.Attempt)
		if o.ID == 2 {
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
		fmt.Printf("dead letter %q (permanent %s)\n", m.Body, m.Header[broker.HeaderPermanent])
	}
	s := b.Stats("orders")
	fmt.Printf("published %d, acked %d, dead-lettered %d, left %d\n", s.Published, s.Acked, s.DeadLettered, s.Ready+s.Unacked)
	// Output:
	// publish after Close: true
	// backlog: 3 messages, 1 consumer
	// order 1 (application/json, attempt 1)
	// order 2 (application/json, attempt 1)
	// dead letter "not json" (permanent true)
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

// An operator's dead-letter workflow: a message fails, List shows why, the
// cause is fixed, and Redrive sends it back for another try, with a fresh
// delivery budget and a header counting the redrives.
func ExampleBroker_DeadLettersOf() {
	ctx := context.Background()
	b := memory.NewBroker()
	defer b.Close()
	b.Publish(ctx, "orders", &broker.Message{Body: []byte(`{"id":7}`)})

	// A consumer gives up on it (here by hand: the runtime does this after
	// the delivery budget, or at once for a permanent error).
	src, _ := b.Source("orders", memory.SourceConfig{})
	defer src.Close(ctx)
	d, _ := src.Receive(ctx)
	d.DeadLetter(ctx, broker.Reason{Err: "payment service: connection refused", Attempts: 3})

	// See why.
	dl := src.DeadLetters() // or b.DeadLettersOf("orders")
	page, _ := dl.List(ctx, broker.DeadLetterQuery{})
	for _, d := range page.Items {
		fmt.Printf("%s from %s after %d attempts: %s: %s\n", d.ID, d.Reason.Source, d.Reason.Attempts, d.Reason.Err, d.Message.Body)
	}

	// Fix the cause, then send it back.
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	fmt.Println("redriven:", res.Done, err)
	n, _ := dl.Count(ctx, broker.DeadLetterFilter{})
	fmt.Println("dead letters left:", n)

	d, _ = src.Receive(ctx)
	fmt.Printf("%s attempt %d, redriven %s time(s)\n", d.Message().Body, d.Message().Attempt, d.Message().Header[broker.HeaderRedriven])
	d.Ack(ctx)
	// Output:
	// orders.dlq-1 from orders after 3 attempts: payment service: connection refused: {"id":7}
	// redriven: [orders.dlq-1] <nil>
	// dead letters left: 0
	// {"id":7} attempt 1, redriven 1 time(s)
}
