// Command quickstart runs a queuekit consumer on the embedded in-memory
// broker: it publishes a batch of orders (two of them bad), consumes them with
// the standard middleware under a Supervisor, and shuts down gracefully when
// the queue is empty or on Ctrl-C, printing what happened to every message.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// Order is the payload of the "orders" queue.
type Order struct {
	ID    string `json:"id"`
	Total int    `json:"total_cents"`
}

func main() {
	// The library installs no signal handlers; the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// run publishes the batch, consumes it until every message is settled or ctx
// is done, and writes what happened to out.
func run(ctx context.Context, out io.Writer, logger *slog.Logger) error {
	mb := memory.NewBroker()
	// The publisher is a broker.Publisher: the same code publishes to
	// RabbitMQ or Kafka with their publisher instead.
	pub := mb.Publisher()
	defer pub.Close(context.Background())
	const orders = 100
	for i := 1; i <= orders; i++ {
		var err error
		if i == 13 { // does not decode: dead-lettered at once
			err = pub.Publish(ctx, "orders", &broker.Message{Body: []byte(`{"id": "o-013", "total_cents": "thirteen"}`)})
		} else { // JSON with its content type, the counterpart of consumer.JSON
			err = broker.PublishJSON(ctx, pub, "orders", nil, Order{ID: fmt.Sprintf("o-%03d", i), Total: i * 100})
		}
		if err != nil {
			return err
		}
	}

	var saved atomic.Int64
	var flaky atomic.Int64
	handler := consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
		switch {
		case o.ID == "o-042" && flaky.Add(1) <= 2:
			return errors.New("inventory service: 503") // transient: retried, then succeeds
		case o.ID == "o-077":
			panic("nil pointer in the discount code") // every time: dead-lettered after the budget
		}
		select { // pretend to write to a database
		case <-time.After(2 * time.Millisecond):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		saved.Add(1)
		return nil
	})

	h := consumer.Chain(
		middleware.Log(logger),
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(5*time.Millisecond, 50*time.Millisecond), 2)),
		middleware.Timeout(time.Second),
	)(handler)

	src, err := mb.Source("orders", memory.SourceConfig{Prefetch: 8})
	if err != nil {
		return err
	}
	c, err := consumer.New(src, h,
		consumer.WithConcurrency(4),
		consumer.WithMaxDeliveries(3),
		consumer.WithDrainTimeout(5*time.Second),
		consumer.WithLogger(logger),
	)
	if err != nil {
		return err
	}

	sup := &consumer.Supervisor{Logger: logger, OnEvent: func(e consumer.Event) {
		if e.Kind == consumer.EventDrained {
			fmt.Fprintf(out, "drained: %d handled, %d given back, %d abandoned in %v\n",
				e.Drain.Handled, e.Drain.GivenBack, e.Drain.Abandoned, e.Drain.Duration.Round(time.Millisecond))
		}
	}}
	if err := sup.Add("orders", c); err != nil { // names the consumer: logs, events, health
		return err
	}

	// Stop when every message is settled (acked or dead-lettered), or on Ctrl-C.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if st := mb.Stats("orders"); st.Acked+st.DeadLettered == orders {
					cancel()
					return
				}
			}
		}
	}()
	if err := sup.Run(runCtx); err != nil {
		return err
	}

	st := mb.Stats("orders")
	fmt.Fprintf(out, "orders: %d published, %d acked, %d dead-lettered, %d still queued\n", orders, st.Acked, st.DeadLettered, st.Ready)
	fmt.Fprintf(out, "saved %d orders\n", saved.Load())
	for _, m := range mb.DeadLetters("orders") {
		fmt.Fprintf(out, "dead letter %s after %s attempt(s): %s\n", m.ID, m.Header[broker.HeaderAttempts], m.Header[broker.HeaderError])
	}
	return nil
}
