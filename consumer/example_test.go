package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

var exampleLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// A Consumer runs a handler on every delivery and settles it: nil acks, an
// error redelivers within the budget and then dead-letters.
func ExampleConsumer() {
	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	for _, body := range []string{"apple", "banana", "cherry"} {
		_ = mb.Publish(ctx, "fruit", &broker.Message{Body: []byte(body)})
	}

	var seen atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Body) == "banana" {
			return errors.New("bruised") // redelivered, then dead-lettered
		}
		fmt.Printf("ate %s\n", m.Body)
		if seen.Add(1) == 2 {
			cancel() // done: stop gracefully once this handler returns
		}
		return nil
	})

	src, _ := mb.Source("fruit", memory.SourceConfig{Prefetch: 1})
	c, err := consumer.New(src, h, consumer.WithMaxDeliveries(1), consumer.WithLogger(exampleLogger))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := c.Run(ctx); err != nil {
		fmt.Println(err)
	}
	st := mb.Stats("fruit")
	fmt.Printf("acked %d, dead-lettered %d, reason %q\n", st.Acked, st.DeadLettered,
		mb.DeadLetters("fruit")[0].Header[broker.HeaderError])
	// Output:
	// ate apple
	// ate cherry
	// acked 2, dead-lettered 1, reason "bruised"
}

// A Supervisor runs consumers tied to one context and reports their health.
// In a program, the context comes from signal.NotifyContext.
func ExampleSupervisor() {
	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	_ = mb.Publish(ctx, "emails", &broker.Message{Body: []byte("welcome")})

	sup := &consumer.Supervisor{Logger: exampleLogger}
	src, _ := mb.Source("emails", memory.SourceConfig{Prefetch: 4})
	c, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("sent %s; ready: %v\n", m.Body, sup.Health().Ready)
		cancel()
		return nil
	}), consumer.WithConcurrency(4), consumer.WithLogger(exampleLogger))
	_ = sup.Add("emails", c)

	err := sup.Run(ctx) // returns once every consumer has drained and stopped
	h := sup.Health()
	fmt.Println(err, h.Runners[0].Name, h.Runners[0].State, h.Ready)
	fmt.Println("acked:", mb.Stats("emails").Acked)
	// Output:
	// sent welcome; ready: true
	// <nil> emails stopped false
	// acked: 1
}

// Chain composes middleware; the first listed is the outermost.
func ExampleChain() {
	trace := func(name string) consumer.Middleware {
		return func(next consumer.Handler) consumer.Handler {
			return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				fmt.Println("enter", name)
				defer fmt.Println("leave", name)
				return next.Handle(ctx, m)
			})
		}
	}
	h := consumer.Chain(trace("log"), trace("retry"))(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Println("handle", m.ID)
		return nil
	}))
	_ = h.Handle(context.Background(), &broker.Message{ID: "m1"})
	// Output:
	// enter log
	// enter retry
	// handle m1
	// leave retry
	// leave log
}

// JSON decodes each body into a typed value; a body that does not decode is
// dead-lettered on its first delivery, without retries.
func ExampleJSON() {
	type Signup struct {
		Email string `json:"email"`
	}
	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	_ = mb.Publish(ctx, "signups", &broker.Message{Body: []byte(`{"email": "ada@example.com"}`)})
	_ = mb.Publish(ctx, "signups", &broker.Message{Body: []byte(`{"email": 42}`)})

	h := consumer.JSON(func(ctx context.Context, m *broker.Message, s Signup) error {
		fmt.Println("signed up", s.Email)
		return nil
	})
	src, _ := mb.Source("signups", memory.SourceConfig{})
	c, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		err := h.Handle(ctx, m)
		if st := mb.Stats("signups"); st.Acked+st.DeadLettered == 1 {
			cancel() // the second message is being settled: stop after it
		}
		return err
	}), consumer.WithLogger(exampleLogger))
	_ = c.Run(ctx)

	dl := mb.DeadLetters("signups")[0]
	fmt.Println("dead-lettered after", dl.Header[broker.HeaderAttempts], "attempt; permanent:", dl.Header[broker.HeaderPermanent])
	// Output:
	// signed up ada@example.com
	// dead-lettered after 1 attempt; permanent: true
}
