package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// runUntil runs c until cond holds, then stops it and returns Run's error.
func runUntil(t *testing.T, c *consumer.Consumer, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, what, cond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v; want nil", err)
	}
}

// Issue 2: a handler that panics on one message: the consumer keeps running and
// the others are handled; that message is dead-lettered after the budget with
// the panic text in its headers.
func TestPanickingMessageIsDeadLetteredAfterTheBudgetAndOthersFlow(t *testing.T) {
	for _, tc := range []struct {
		name string
		mw   consumer.Middleware
	}{
		{"recovered by the runtime", consumer.Chain()},
		{"recovered by middleware.Recover", consumer.Chain(middleware.Recover())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const queue, total, budget = "payments", 50, 3
			b := memory.NewBroker()
			publishN(t, b, queue, total)
			var handled, panics atomic.Int64
			h := tc.mw(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if m.ID == "m7" {
					panics.Add(1)
					panic("boom: cannot charge card")
				}
				handled.Add(1)
				return nil
			}))
			c, err := consumer.New(newSource(t, b, queue, 4), h, consumer.WithConcurrency(4),
				consumer.WithMaxDeliveries(budget), consumer.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			runUntil(t, c, "49 acked and 1 dead-lettered", func() bool {
				st := b.Stats(queue)
				return st.Acked == total-1 && st.DeadLettered == 1
			})
			if handled.Load() != total-1 || panics.Load() != budget {
				t.Errorf("handled %d, panics %d; want %d handled and %d panics (one per delivery in the budget)", handled.Load(), panics.Load(), total-1, budget)
			}
			dl := b.DeadLetters(queue)
			if len(dl) != 1 {
				t.Fatalf("DeadLetters = %d messages; want 1", len(dl))
			}
			hdr := dl[0].Header
			if !strings.Contains(hdr[broker.HeaderError], "panic: boom: cannot charge card") {
				t.Errorf("%s = %q; want the panic text", broker.HeaderError, hdr[broker.HeaderError])
			}
			if hdr[broker.HeaderAttempts] != "3" || hdr[broker.HeaderSource] != queue || hdr[broker.HeaderPermanent] != "false" {
				t.Errorf("dead-letter headers = %v; want attempts 3, source %q, permanent false", hdr, queue)
			}
		})
	}
}

type order struct {
	ID    string `json:"id"`
	Total int    `json:"total"`
}

// Issue 2: bad JSON into a typed handler is dead-lettered on the first
// delivery, with no retries.
func TestBadJSONIsDeadLetteredOnFirstDeliveryWithoutRetries(t *testing.T) {
	const queue = "typed"
	b := memory.NewBroker()
	good, _ := json.Marshal(order{ID: "o1", Total: 42})
	for _, body := range [][]byte{good, []byte(`{"id": "o2", "total": "not a number"`), good} {
		if err := b.Publish(context.Background(), queue, &broker.Message{Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	var calls, attempts atomic.Int64
	h := consumer.JSON(func(ctx context.Context, m *broker.Message, o order) error {
		calls.Add(1)
		if o.Total != 42 {
			t.Errorf("decoded total = %d; want 42", o.Total)
		}
		return nil
	})
	counting := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		attempts.Add(1)
		return h.Handle(ctx, m)
	})
	c, err := consumer.New(newSource(t, b, queue, 1), counting, consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	runUntil(t, c, "2 acked, 1 dead-lettered", func() bool {
		st := b.Stats(queue)
		return st.Acked == 2 && st.DeadLettered == 1
	})
	if st := b.Stats(queue); st.Requeued != 0 {
		t.Errorf("requeued = %d; want 0 (a decode failure is permanent)", st.Requeued)
	}
	if calls.Load() != 2 || attempts.Load() != 3 {
		t.Errorf("typed calls %d, deliveries %d; want 2 and 3 (the bad one delivered once, never reaching the typed func)", calls.Load(), attempts.Load())
	}
	dl := b.DeadLetters(queue)
	if len(dl) != 1 || dl[0].Header[broker.HeaderAttempts] != "1" || dl[0].Header[broker.HeaderPermanent] != "true" ||
		!strings.Contains(dl[0].Header[broker.HeaderError], "decode JSON") {
		t.Errorf("dead letters = %+v; want one with attempts 1, permanent true and the decode error", dl)
	}
}

// A transient error is requeued until the budget, then dead-lettered; a
// retry.After error is requeued with its delay, without holding a slot.
func TestTransientErrorsSpendTheBudgetAndRetryAfterDelays(t *testing.T) {
	const queue = "flaky"
	b := memory.NewBroker()
	publishN(t, b, queue, 2)
	var seen [2]atomic.Int64
	var first, second atomic.Int64 // unix nanos of m1's first and second delivery
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		switch m.ID {
		case "m0":
			seen[0].Add(1)
			return errors.New("downstream unavailable")
		default:
			n := seen[1].Add(1)
			if n == 1 {
				first.Store(time.Now().UnixNano())
				return retry.After(errors.New("rate limited"), 150*time.Millisecond)
			}
			second.Store(time.Now().UnixNano())
			return nil
		}
	})
	var settled [7]atomic.Int64
	c, err := consumer.New(newSource(t, b, queue, 2), h, consumer.WithConcurrency(2), consumer.WithMaxDeliveries(4),
		consumer.WithLogger(quiet), consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, err error) {
			settled[s].Add(1)
		}))
	if err != nil {
		t.Fatal(err)
	}
	runUntil(t, c, "m0 dead-lettered and m1 acked", func() bool {
		st := b.Stats(queue)
		return st.DeadLettered == 1 && st.Acked == 1
	})
	if seen[0].Load() != 4 {
		t.Errorf("m0 delivered %d times; want the budget, 4", seen[0].Load())
	}
	if gap := time.Duration(second.Load() - first.Load()); gap < 150*time.Millisecond {
		t.Errorf("m1 redelivered %v after retry.After(150ms); want at least the delay", gap)
	}
	want := map[consumer.Settlement]int64{consumer.SettledRequeue: 3, consumer.SettledDeadLetter: 1, consumer.SettledDelayedRequeue: 1, consumer.SettledAck: 1}
	for s, n := range want {
		if got := settled[s].Load(); got != n {
			t.Errorf("observer saw %v %d times; want %d", s, got, n)
		}
	}
}

func TestNewRejectsInvalidConfiguration(t *testing.T) {
	b := memory.NewBroker()
	src := newSource(t, b, "cfg", 1)
	defer src.Close(context.Background())
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	for _, tc := range []struct {
		name string
		src  broker.Source
		h    consumer.Handler
		opts []consumer.Option
	}{
		{"nil source", nil, h, nil},
		{"nil handler", src, nil, nil},
		{"zero concurrency", src, h, []consumer.Option{consumer.WithConcurrency(0)}},
		{"zero delivery budget", src, h, []consumer.Option{consumer.WithMaxDeliveries(0)}},
		{"negative drain timeout", src, h, []consumer.Option{consumer.WithDrainTimeout(-time.Second)}},
		{"zero settle timeout", src, h, []consumer.Option{consumer.WithSettleTimeout(0)}},
		{"empty name", src, h, []consumer.Option{consumer.WithName("")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := consumer.New(tc.src, tc.h, tc.opts...)
			if c != nil || !errors.Is(err, broker.ErrInvalidConfig) || !broker.IsFatal(err) {
				t.Errorf("New(%s) = %v, %v; want nil and a fatal error wrapping ErrInvalidConfig", tc.name, c, err)
			}
		})
	}
}
