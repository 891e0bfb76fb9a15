package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

var discard = consumer.WithLogger(slog.New(slog.DiscardHandler))

// waitFor polls cond every millisecond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Issue 14: a RateLimit inside Retry whose wait is cut short by Pause returns
// ErrNotHandled; Retry must not retry that (it would wait for a token again,
// on a paused consumer), so the message is given back with its Attempt kept.
func TestRetryDoesNotRetryARateLimitWaitCutShortByPause(t *testing.T) {
	b := memory.NewBroker()
	for _, id := range []string{"first", "second"} {
		if err := b.Publish(context.Background(), "calls", &broker.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := b.Source("calls", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	limit, err := middleware.RateLimit(middleware.RateLimitConfig{Rate: rate.Every(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	attempts := map[string][]int{}
	var calls atomic.Int64
	h := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		calls.Add(1)
		return nil
	})
	record := func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			mu.Lock()
			attempts[m.ID] = append(attempts[m.ID], m.Attempt)
			mu.Unlock()
			return next.Handle(ctx, m)
		})
	}
	c, err := consumer.New(src, h, consumer.WithMiddleware(record, middleware.Retry(retry.Constant(time.Millisecond)), limit), discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	t.Cleanup(func() { _ = c.Close(); <-done })

	waitFor(t, "the second message to wait for its token", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls.Load() == 1 && len(attempts["second"]) == 1
	})
	time.Sleep(20 * time.Millisecond) // let the wait begin; either way the outcome must be a give-back
	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the waiting message to be given back", func() bool { return c.Stats().GivenBack == 1 })
	if s := c.Stats(); s.Failed != 0 || s.Requeued != 0 {
		t.Errorf("stats %+v; want no failure and no requeue: the wait was not a failure", s)
	}
}

// Issue 14: Retry waiting out a long backoff stops when intake stops, so
// that Shutdown is not held up until its deadline by in-process retries: the
// message is requeued (the attempt that failed did happen) and Shutdown
// returns nil well within its budget.
func TestRetryStopsBackingOffWhenIntakeStops(t *testing.T) {
	b := memory.NewBroker()
	if err := b.Publish(context.Background(), "jobs", &broker.Message{ID: "j1"}); err != nil {
		t.Fatal(err)
	}
	src, err := b.Source("jobs", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		calls.Add(1)
		return errors.New("dependency down")
	})
	c, err := consumer.New(src, h, consumer.WithMiddleware(middleware.Retry(retry.Constant(time.Hour))),
		consumer.WithDrainTimeout(time.Hour), discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	waitFor(t, "the first attempt", func() bool { return calls.Load() == 1 })
	// A Shutdown budget far below the backoff: before the fix it expired
	// with the handler still asleep in Retry.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v; want nil: Retry should stop backing off when intake stops", err)
	}
	<-done
	if s := c.Stats(); s.Requeued != 1 || s.Abandoned != 0 || calls.Load() != 1 {
		t.Errorf("stats %+v, %d calls; want 1 requeued, none abandoned, 1 call", s, calls.Load())
	}
}
