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
// that Shutdown is not held up until its deadline by in-process retries:
// Shutdown returns nil well within its budget and the message, whose
// retries were cut short, is given back without spending an attempt.
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
	if s := c.Stats(); s.GivenBack != 1 || s.Requeued != 0 || s.Abandoned != 0 || calls.Load() != 1 {
		t.Errorf("stats %+v, %d calls; want 1 given back, none requeued or abandoned, 1 call", s, calls.Load())
	}
}

// Issue 14 review R3 HIGH-1: a Pause or a Shutdown during Retry's backoff,
// on the message's last delivery, must not dead-letter a message that the
// next in-process try would have handled: the retries were cut short, so the
// message is given back unspent (and, after Resume, handled).
func TestRetryCutShortOnTheLastDeliveryDoesNotDeadLetter(t *testing.T) {
	for _, stop := range []string{"pause", "shutdown"} {
		t.Run(stop, func(t *testing.T) {
			b := memory.NewBroker()
			defer b.Close()
			if err := b.Publish(context.Background(), "jobs", &broker.Message{ID: "j1"}); err != nil {
				t.Fatal(err)
			}
			src, err := b.Source("jobs", memory.SourceConfig{})
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int64
			var failedOnce atomic.Bool
			h := consumer.HandlerFunc(func(context.Context, *broker.Message) error {
				calls.Add(1)
				if failedOnce.CompareAndSwap(false, true) {
					return errors.New("transient")
				}
				return nil
			})
			c, err := consumer.New(src, h, consumer.WithMiddleware(middleware.Retry(retry.Constant(time.Hour))),
				consumer.WithMaxDeliveries(1), discard)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- c.Run(context.Background()) }()
			t.Cleanup(func() { _ = c.Close() })
			waitFor(t, "the first, failing try", func() bool { return calls.Load() == 1 })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if stop == "pause" {
				if err := c.Pause(ctx); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the message to be given back", func() bool { return c.Stats().GivenBack == 1 })
				if err := c.Resume(ctx); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the message to be handled after Resume", func() bool { return c.Stats().Handled == 1 })
				if err := c.Shutdown(ctx); err != nil {
					t.Fatal(err)
				}
			} else if err := c.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			<-done
			if s := c.Stats(); s.DeadLettered != 0 {
				t.Errorf("stats %+v; want no dead letter: the retries were cut short, not spent", s)
			}
			if stop == "shutdown" {
				// The message is still in the queue, its one delivery unspent.
				src2, err := b.Source("jobs", memory.SourceConfig{})
				if err != nil {
					t.Fatal(err)
				}
				rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer rcancel()
				var attempt int
				c2, err := consumer.New(src2, consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
					attempt = m.Attempt
					rcancel()
					return nil
				}), discard)
				if err != nil {
					t.Fatal(err)
				}
				_ = c2.Run(rctx)
				if attempt != 1 {
					t.Errorf("Attempt on redelivery = %d; want 1 (not spent)", attempt)
				}
			}
		})
	}
}
