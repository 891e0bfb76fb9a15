package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// Review (HIGH): an error from user code whose Unwrap tree is unbounded made
// the worker spin for ever in errors.As (Unwrap() error returning itself:
// the message never settled, Shutdown never returned), overflow the stack
// (Unwrap() []error returning itself: the process died), or walk 2^n paths
// (errors.Join(e, e) nested n deep). Such an error is now an ordinary,
// retryable failure.

// selfUnwrap's Unwrap returns itself.
type selfUnwrap struct{}

func (e *selfUnwrap) Error() string { return "self-unwrapping" }
func (e *selfUnwrap) Unwrap() error { return e }

// selfJoin's Unwrap() []error holds itself.
type selfJoin struct{}

func (e *selfJoin) Error() string   { return "self-joining" }
func (e *selfJoin) Unwrap() []error { return []error{e} }

// deepJoin is errors.Join(e, e) nested n deep around a permanent error:
// 2^n paths, which is not walked (so not permanent).
func deepJoin(n int) error {
	e := retry.Permanent(errors.New("bad"))
	for range n {
		e = errors.Join(e, e)
	}
	return e
}

var unboundedErrors = []struct {
	name string
	err  func() error
}{
	{"Unwrap returns itself", func() error { return &selfUnwrap{} }},
	{"Unwrap []error holds itself", func() error { return &selfJoin{} }},
	{"errors.Join nested 40 deep", func() error { return deepJoin(40) }},
	{"wrapped cycle", func() error { return fmt.Errorf("wrapped: %w", &selfUnwrap{}) }},
}

// runBoundedUntil runs c until cond holds (at most 10s), then shuts it down with a
// deadline; a worker stuck in an error walk fails the test instead of
// hanging it.
func runBoundedUntil(t *testing.T, c *consumer.Consumer, what string, cond func() bool) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	ok := cond()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	serr := c.Shutdown(ctx)
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not return after Shutdown (Shutdown: %v; %s: %v)", serr, what, ok)
	}
	if serr != nil {
		t.Errorf("Shutdown: %v", serr)
	}
	if !ok {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestHandlerErrorWithUnboundedUnwrap(t *testing.T) {
	for _, tc := range unboundedErrors {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			publishN(t, b, "q", 1)
			var got []error
			h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if m.Attempt == 1 {
					return tc.err()
				}
				return nil
			})
			c, err := consumer.New(newSource(t, b, "q", 4), h, consumer.WithLogger(quiet), consumer.WithMaxDeliveries(3),
				consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, _ error) {
					if s == consumer.SettledRequeue {
						got = append(got, nil)
					}
				}))
			if err != nil {
				t.Fatal(err)
			}
			runBoundedUntil(t, c, "the message handled on its second attempt", func() bool { return b.Stats("q").Acked == 1 })
			if dl := b.DeadLetters("q"); len(dl) != 0 {
				t.Errorf("dead-lettered %d: want a retryable failure", len(dl))
			}
			if len(got) != 1 {
				t.Errorf("requeued %d times, want 1", len(got))
			}
		})
	}
}

// A cycle that middleware.Retry sees: its errors.Is checks are bounded too.
func TestRetryMiddlewareErrorWithUnboundedUnwrap(t *testing.T) {
	for _, tc := range unboundedErrors {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			publishN(t, b, "q", 1)
			calls := 0
			h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if calls++; calls == 1 {
					return tc.err()
				}
				return nil
			})
			c, err := consumer.New(newSource(t, b, "q", 4), h, consumer.WithLogger(quiet),
				consumer.WithMiddleware(middleware.Retry(retry.MaxAttempts(retry.Constant(time.Millisecond), 3))))
			if err != nil {
				t.Fatal(err)
			}
			runBoundedUntil(t, c, "the message handled on its in-process retry", func() bool { return b.Stats("q").Acked == 1 })
			if calls != 2 {
				t.Errorf("handler called %d times, want 2", calls)
			}
		})
	}
}

func TestBatchErrorWithUnboundedUnwrap(t *testing.T) {
	for _, tc := range unboundedErrors {
		for _, how := range []string{"whole batch", "one message", "joined BatchErrors"} {
			t.Run(tc.name+"/"+how, func(t *testing.T) {
				b := memory.NewBroker()
				publishN(t, b, "q", 3)
				h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
					if msgs[0].Attempt > 1 || len(msgs) != 3 {
						return nil
					}
					switch how {
					case "whole batch":
						return tc.err()
					case "one message":
						return consumer.BatchFailures(map[int]error{1: tc.err()})
					}
					return errors.Join(consumer.BatchFailures(map[int]error{0: tc.err()}), consumer.BatchFailures(map[int]error{2: tc.err()}))
				})
				c, err := consumer.NewBatch(newSource(t, b, "q", 10), h, consumer.Batch{MaxSize: 3, MaxWait: 300 * time.Millisecond},
					consumer.WithLogger(quiet), consumer.WithMaxDeliveries(3))
				if err != nil {
					t.Fatal(err)
				}
				runBoundedUntil(t, c, "every message acknowledged", func() bool { return b.Stats("q").Acked == 3 })
				if dl := b.DeadLetters("q"); len(dl) != 0 {
					t.Errorf("dead-lettered %d: want retryable failures", len(dl))
				}
			})
		}
	}
}

// The text a dead letter carries for an unbounded error is its own, bounded
// (errors.Join's Error would build 2^40 texts).
func TestUnboundedErrorDeadLetterReason(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { return deepJoin(40) })
	c, err := consumer.New(newSource(t, b, "q", 4), h, consumer.WithLogger(quiet), consumer.WithMaxDeliveries(1))
	if err != nil {
		t.Fatal(err)
	}
	runBoundedUntil(t, c, "the dead letter", func() bool { return len(b.DeadLetters("q")) == 1 })
	reason := b.DeadLetters("q")[0].Header[broker.HeaderError]
	if !strings.HasPrefix(reason, "bad\nbad\n") || !strings.Contains(reason, "unbounded") || len(reason) > consumer.MaxReasonBytes {
		t.Errorf("reason %d bytes: %.200q…", len(reason), reason)
	}
}

// Review (LOW): the failed messages of a batch come back in their order on a
// source that puts a requeued message at the head of its queue (memory), as
// given-back ones do. They came back reversed.
func TestBatchFailuresComeBackInOrder(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 4)
	var got []string
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		for _, m := range msgs {
			got = append(got, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
		}
		if msgs[0].Attempt == 1 && len(msgs) == 4 {
			return consumer.BatchFailures(map[int]error{0: errors.New("a"), 2: errors.New("c"), 3: errors.New("d")})
		}
		return nil
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 10), h, consumer.Batch{MaxSize: 4, MaxWait: 300 * time.Millisecond},
		consumer.WithLogger(quiet), consumer.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	runBoundedUntil(t, c, "every message acknowledged", func() bool { return b.Stats("q").Acked == 4 })
	if fmt.Sprint(got) != "[m0@1 m1@1 m2@1 m3@1 m0@2 m2@2 m3@2]" {
		t.Errorf("handled %v; want the failed ones again in order", got)
	}
}
