package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every payment is charged once, though the broker delivered p-1, p-2 and
// p-4 twice; p-3's failed first delivery did not count as processed. The
// two publishes of p-1 (and of p-2) have different message IDs, made up by
// the broker: only the producer's idempotency key ties them together.
func TestEveryPaymentChargedOnce(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatalf("run = %v; want nil\n%s", err, out.String())
	}
	text := out.String()
	t.Log("\n" + text)

	for _, want := range []string{
		"payments: 6 published, 8 delivered, 6 acked, 1 requeued, 1 returned by the broker, 0 dead-lettered\n",
		"gateway charges:\n" +
			"  p-1 card 4242 1000 cents, 1 time(s)\n" +
			"  p-2 card 5555 2500 cents, 1 time(s)\n" +
			"  p-3 card 4000 750 cents, 1 time(s)\n" +
			"  p-4 card 3782 1200 cents, 1 time(s)\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// The log, in order: what happened to each delivery, by message ID and
	// attempt, with the idempotency key where the line carries it.
	re := regexp.MustCompile(`(?m)^level=\w+ msg=("[^"]*"|\S+) .*message_id=(\S+) attempt=(\d)(?: idempotency_key=(\S+))?`)
	var got []string
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		got = append(got, strings.TrimSpace(fmt.Sprintf("%s/%s %s %s", m[2], m[3], strings.Trim(m[1], `"`), m[4])))
	}
	want := []string{
		"payments-1/1 charged p-1",
		"payments-2/1 charged p-2",
		"payments-3/1 duplicate skipped: already processed p-1", // p-1 published again: another ID, the same key
		"payments-4/1 queuekit: message handled",                // p-3 failed: gateway 503, twice in process
		"payments-4/2 charged p-3",
		"payments-5/1 charged p-4",
		"payments-5/1 queuekit: settlement failed; the message stays with the broker", // the ack was lost
		"payments-5/2 duplicate skipped: already processed p-4",
		"payments-6/1 duplicate skipped: already processed p-2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("log =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// msg returns a message with the adapter-made ID id and, unless key is
// empty, the producer's idempotency key in the IdempotencyKeyHeader header.
func msg(id, key string) *broker.Message {
	m := &broker.Message{ID: id, Topic: "t", Attempt: 1}
	if key != "" {
		m.Header = map[string]string{IdempotencyKeyHeader: key}
	}
	return m
}

// handle runs h on a message with the idempotency key key (and an ID that
// is the same for every call, as a made-up ID restarting in each process
// would be: Dedup must not look at it).
func handle(ctx context.Context, h consumer.Handler, key string) error {
	return h.Handle(ctx, msg("t-1", key))
}

// dedup is Dedup keyed on the IdempotencyKeyHeader header.
func dedup(s Store) consumer.Middleware {
	return Dedup(s, HeaderKey(IdempotencyKeyHeader))
}

func newSet(t *testing.T, capacity int) *ProcessedSet {
	t.Helper()
	s, err := NewProcessedSet(capacity)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Deliveries with one key racing each other run the handler once; the others
// wait for its outcome and are skipped. synctest.Wait makes sure that all of
// them have reached Dedup (one in the handler, the others waiting) before the
// first one finishes.
func TestDedupConcurrentDuplicatesRunOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		release := make(chan struct{})
		h := dedup(newSet(t, 10))(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			calls.Add(1)
			<-release
			return nil
		}))
		const n = 8
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() { errs <- handle(t.Context(), h, "k-1") })
		}
		synctest.Wait() // every goroutine is in the handler or waiting on the claim
		if got := calls.Load(); got != 1 {
			t.Errorf("handler running %d times at once for one key; want 1", got)
		}
		close(release)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("Handle = %v; want nil", err)
			}
		}
		if got := calls.Load(); got != 1 {
			t.Errorf("handler ran %d times for %d deliveries of one key; want 1", got, n)
		}
	})
}

// A failed delivery is not marked: the next delivery runs the handler again.
func TestDedupFailureIsNotMarked(t *testing.T) {
	var calls int
	h := dedup(newSet(t, 10))(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls++
		if calls == 1 {
			return errors.New("downstream 503")
		}
		return nil
	}))
	if err := handle(context.Background(), h, "m-1"); err == nil {
		t.Fatal("first Handle = nil; want the handler's error")
	}
	for range 2 {
		if err := handle(context.Background(), h, "m-1"); err != nil {
			t.Fatalf("Handle = %v; want nil", err)
		}
	}
	if calls != 2 {
		t.Errorf("handler ran %d times (fail, succeed, duplicate); want 2", calls)
	}
}

// A panic releases the claim, and Recover outside Dedup turns it into an
// error: the redelivery runs the handler instead of waiting forever.
func TestDedupPanicReleasesTheClaim(t *testing.T) {
	var calls int
	h := consumer.Chain(middleware.Recover(), dedup(newSet(t, 10)))(
		consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			calls++
			if calls == 1 {
				panic("boom")
			}
			return nil
		}))
	var pe *consumer.PanicError
	if err := handle(context.Background(), h, "m-1"); !errors.As(err, &pe) {
		t.Fatalf("Handle after panic = %v; want a *consumer.PanicError", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := handle(ctx, h, "m-1"); err != nil {
		t.Fatalf("Handle after the panic = %v; want nil", err)
	}
	if calls != 2 {
		t.Errorf("handler ran %d times; want 2", calls)
	}
}

// A delivery waiting on another with the same key gives up when its context
// ends (the consumer is stopping), with the context's cause.
func TestDedupWaitHonoursContext(t *testing.T) {
	set := newSet(t, 10)
	_, end, err := set.Begin(context.Background(), "m-1")
	if err != nil {
		t.Fatal(err)
	}
	defer end(false)
	stop := errors.New("stopping")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(stop)
	h := dedup(set)(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		t.Error("handler ran while another delivery held the key")
		return nil
	}))
	if err := handle(ctx, h, "m-1"); !errors.Is(err, stop) {
		t.Errorf("Handle with a cancelled context = %v; want it to wrap %v", err, stop)
	}
}

// The set keeps the last capacity keys: an older one is forgotten and
// processed again.
func TestProcessedSetForgetsTheOldest(t *testing.T) {
	calls := map[string]int{}
	h := dedup(newSet(t, 2))(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls[m.Header[IdempotencyKeyHeader]]++
		return nil
	}))
	for _, id := range []string{"a", "b", "a", "c", "b", "a"} {
		if err := handle(context.Background(), h, id); err != nil {
			t.Fatal(err)
		}
	}
	// a, b run; a skipped; c runs and evicts a; b skipped; a runs again.
	if calls["a"] != 2 || calls["b"] != 1 || calls["c"] != 1 {
		t.Errorf("calls = %v; want a:2 b:1 c:1", calls)
	}
}

// Messages without a key cannot be deduplicated: they are passed through and
// handled, whatever their IDs — different (as adapters make them up), the
// same (a made-up ID restarting in another process), or empty — and an
// empty header counts as no key.
func TestDedupPassesThroughMessagesWithoutKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []*broker.Message
	}{
		{"two different messages without the header are both handled",
			[]*broker.Message{msg("payments-1", ""), msg("payments-2", "")}},
		{"two messages without the header and with the same made-up ID are both handled",
			[]*broker.Message{msg("payments-1", ""), msg("payments-1", "")}},
		{"two messages without an ID or a header are both handled",
			[]*broker.Message{msg("", ""), msg("", "")}},
		{"an empty header is no key",
			[]*broker.Message{
				{ID: "payments-1", Header: map[string]string{IdempotencyKeyHeader: ""}},
				{ID: "payments-1", Header: map[string]string{IdempotencyKeyHeader: ""}},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls int
			h := dedup(newSet(t, 10))(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				calls++
				return nil
			}))
			for _, m := range tc.msgs {
				if err := h.Handle(context.Background(), m); err != nil {
					t.Fatalf("Handle(%+v) = %v; want nil", m, err)
				}
			}
			if calls != len(tc.msgs) {
				t.Errorf("handler ran %d times for %d messages without a key; want %d", calls, len(tc.msgs), len(tc.msgs))
			}
		})
	}
}

// Dedup ignores Message.ID: two messages with the same adapter-made ID (a
// counter restarting in each replica, with a shared Store) but different
// keys are different operations, and both are handled; the same key under
// two different IDs (a producer that published again) is one operation.
func TestDedupKeysOnTheKeyNotTheID(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  func(*broker.Message) string
	}{
		{"HeaderKey", HeaderKey(IdempotencyKeyHeader)},
		{"nil key means the idempotency-key header", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var handled []string
			h := Dedup(newSet(t, 10), tc.key)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				handled = append(handled, m.ID+" "+m.Header[IdempotencyKeyHeader])
				return nil
			}))
			for _, m := range []*broker.Message{
				msg("payments-1", "order-17"), // replica A
				msg("payments-1", "order-42"), // replica B: same made-up ID, another payment
				msg("payments-2", "order-17"), // order-17 published again
			} {
				if err := h.Handle(context.Background(), m); err != nil {
					t.Fatalf("Handle(%s %s) = %v; want nil", m.ID, m.Header[IdempotencyKeyHeader], err)
				}
			}
			want := "payments-1 order-17, payments-1 order-42"
			if got := strings.Join(handled, ", "); got != want {
				t.Errorf("handled %q; want %q", got, want)
			}
		})
	}
}

// A nil Store cannot be fixed by retrying: a keyed delivery fails with a
// permanent error (so it is dead-lettered, not acknowledged) and the handler
// does not run; a delivery without a key is still handled.
func TestDedupNilStore(t *testing.T) {
	var calls int
	h := Dedup(nil, nil)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls++
		return nil
	}))
	err := handle(context.Background(), h, "k-1")
	if err == nil || !retry.IsPermanent(err) {
		t.Errorf("Handle with a key and a nil Store = %v; want a permanent error", err)
	}
	if calls != 0 {
		t.Errorf("handler ran %d times with a nil Store; want 0", calls)
	}
	if err := handle(context.Background(), h, ""); err != nil || calls != 1 {
		t.Errorf("Handle without a key and a nil Store = %v, %d calls; want nil, 1", err, calls)
	}
}

func TestNewProcessedSetRejectsZeroCapacity(t *testing.T) {
	if _, err := NewProcessedSet(0); err == nil {
		t.Error("NewProcessedSet(0) = nil error; want an error")
	}
}

// A delivery that waited on another with the same key runs the handler when
// the other one failed, and is skipped when it succeeded. synctest.Wait
// guarantees that the second delivery is blocked waiting on the claim before
// the claim ends, so the test exercises the wait and not just a later Begin.
func TestDedupWaiterFollowsTheOutcome(t *testing.T) {
	for _, tc := range []struct {
		name      string
		processed bool
		wantCalls int64
	}{
		{"the first delivery failed: the waiter runs the handler", false, 1},
		{"the first delivery succeeded: the waiter is skipped", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				set := newSet(t, 10)
				_, end, err := set.Begin(t.Context(), "k-1")
				if err != nil {
					t.Fatal(err)
				}
				var calls atomic.Int64
				h := dedup(set)(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
					calls.Add(1)
					return nil
				}))
				done := make(chan error, 1)
				go func() { done <- handle(t.Context(), h, "k-1") }()
				synctest.Wait() // the goroutine is durably blocked: waiting in Begin
				select {
				case err := <-done:
					t.Fatalf("Handle returned %v while another delivery held the key; want it to wait", err)
				default:
				}
				if got := calls.Load(); got != 0 {
					t.Fatalf("handler ran %d times while another delivery held the key; want 0", got)
				}
				end(tc.processed)
				if err := <-done; err != nil {
					t.Fatalf("Handle = %v; want nil", err)
				}
				if got := calls.Load(); got != tc.wantCalls {
					t.Errorf("handler ran %d times; want %d", got, tc.wantCalls)
				}
			})
		})
	}
}
