package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// The kill switch stops taking messages while the database is down instead
// of spending their delivery budget, probes after RestartTimeout, and
// returns to normal when the probes succeed. No message is dead-lettered.
func ExampleWithKillSwitch() {
	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	for i := range 5 {
		_ = mb.Publish(ctx, "orders", &broker.Message{ID: fmt.Sprint("order-", i)})
	}

	errDown := errors.New("db: connection refused")
	var dbDown atomic.Bool
	dbDown.Store(true)
	var acked atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if dbDown.Load() {
			return fmt.Errorf("insert %s: %w", m.ID, errDown)
		}
		if acked.Add(1) == 5 {
			cancel()
		}
		return nil
	})
	onEvent := func(e consumer.Event) {
		switch e.Kind {
		case consumer.EventTripped:
			fmt.Println("tripped:", e.Err)
			dbDown.Store(false) // the database comes back while the consumer waits
		case consumer.EventProbing, consumer.EventRecovered:
			fmt.Println(e.Kind)
		}
	}

	src, _ := mb.Source("orders", memory.SourceConfig{Prefetch: 1})
	c, err := consumer.New(src, h, consumer.WithLogger(exampleLogger), consumer.WithEventHook(onEvent),
		consumer.WithKillSwitch(consumer.KillSwitch{
			Window:         10 * time.Minute,
			MinMessages:    3,
			RestartTimeout: 10 * time.Millisecond,
			ProbeMessages:  2,
			// Only the database's errors say the dependency is down.
			Counts: func(err error) bool { return errors.Is(err, errDown) },
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := c.Run(ctx); err != nil {
		fmt.Println(err)
	}
	st := mb.Stats("orders")
	fmt.Printf("acked %d, dead-lettered %d, trips %d\n", st.Acked, st.DeadLettered, c.KillSwitch().Trips)
	// Output:
	// tripped: failure ratio 1.00 over 3 messages in the last 10m0s: insert order-0: db: connection refused
	// probing
	// recovered
	// acked 5, dead-lettered 0, trips 1
}

// A handler that waits before it works (for a rate limiter's token, a
// lock) selects on IntakeStopped too: when the consumer pauses, trips or
// drains meanwhile, it returns ErrNotHandled and the message is given back
// without spending an attempt.
func ExampleIntakeStopped() {
	mb := memory.NewBroker()
	_ = mb.Publish(context.Background(), "jobs", &broker.Message{ID: "job-1"})
	waiting := make(chan struct{})
	token := make(chan struct{}) // never given: the wait is cut short by Pause
	var calls atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s, attempt %d\n", m.ID, m.Attempt)
		if calls.Add(1) > 1 {
			return nil
		}
		close(waiting)
		select {
		case <-token:
			return nil
		case <-consumer.IntakeStopped(ctx):
			return fmt.Errorf("waiting for a token: %w", consumer.ErrNotHandled)
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	src, _ := mb.Source("jobs", memory.SourceConfig{Prefetch: 1})
	c, _ := consumer.New(src, h, consumer.WithLogger(exampleLogger))
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()

	<-waiting
	_ = c.Pause(context.Background()) // the handler gives up; the message goes back
	for c.Stats().GivenBack == 0 {
		time.Sleep(time.Millisecond)
	}
	_ = c.Resume(context.Background())
	for mb.Stats("jobs").Acked == 0 {
		time.Sleep(time.Millisecond)
	}
	_ = c.Shutdown(context.Background())
	<-done
	st := c.Stats()
	fmt.Printf("given back %d, failed %d, handled %d\n", st.GivenBack, st.Failed, st.Handled)
	// Output:
	// job-1, attempt 1
	// job-1, attempt 1
	// given back 1, failed 0, handled 1
}
