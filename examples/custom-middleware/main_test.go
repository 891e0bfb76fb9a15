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
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every payment is charged once, though the broker delivered p-1, p-2 and
// p-4 twice; p-3's failed first delivery did not count as processed.
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

	// The log, in order: what happened to each delivery.
	re := regexp.MustCompile(`(?m)^level=\w+ msg=("[^"]*"|\S+) .*message_id=(p-\d) attempt=(\d)`)
	var got []string
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		got = append(got, fmt.Sprintf("%s/%s %s", m[2], m[3], strings.Trim(m[1], `"`)))
	}
	want := []string{
		"p-1/1 charged",
		"p-2/1 charged",
		"p-1/1 duplicate skipped: already processed",
		"p-3/1 queuekit: message handled", // failed: gateway 503, twice in process
		"p-3/2 charged",
		"p-4/1 charged",
		"p-4/1 queuekit: settlement failed; the message stays with the broker", // the ack was lost
		"p-4/2 duplicate skipped: already processed",
		"p-2/1 duplicate skipped: already processed",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("log =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// handle runs h on a message with the given ID.
func handle(ctx context.Context, h consumer.Handler, id string) error {
	return h.Handle(ctx, &consumer.Message{ID: id, Topic: "t", Attempt: 1})
}

func newSet(t *testing.T, capacity int) *ProcessedSet {
	t.Helper()
	s, err := NewProcessedSet(capacity)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Deliveries of one ID racing each other run the handler once; the others
// wait for its outcome and are skipped.
func TestDedupConcurrentDuplicatesRunOnce(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	h := Dedup(newSet(t, 10))(consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
		calls.Add(1)
		<-release
		return nil
	}))
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() { errs <- handle(context.Background(), h, "m-1") })
	}
	// Let one in, then let it finish; the rest must not run the handler.
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
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
		t.Errorf("handler ran %d times for %d deliveries of one ID; want 1", got, n)
	}
}

// A failed delivery is not marked: the next delivery runs the handler again.
func TestDedupFailureIsNotMarked(t *testing.T) {
	var calls int
	h := Dedup(newSet(t, 10))(consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
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
	h := consumer.Chain(middleware.Recover(), Dedup(newSet(t, 10)))(
		consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
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

// A delivery waiting on another of the same ID gives up when its context
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
	h := Dedup(set)(consumer.HandlerFunc(func(context.Context, *consumer.Message) error {
		t.Error("handler ran while another delivery held the ID")
		return nil
	}))
	if err := handle(ctx, h, "m-1"); !errors.Is(err, stop) {
		t.Errorf("Handle with a cancelled context = %v; want it to wrap %v", err, stop)
	}
}

// The set keeps the last capacity IDs: an older one is forgotten and
// processed again.
func TestProcessedSetForgetsTheOldest(t *testing.T) {
	calls := map[string]int{}
	h := Dedup(newSet(t, 2))(consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
		calls[m.ID]++
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

// A message without an ID cannot be deduplicated: it is passed through.
func TestDedupPassesThroughEmptyID(t *testing.T) {
	var calls int
	h := Dedup(newSet(t, 10))(consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
		calls++
		return nil
	}))
	for range 2 {
		if err := handle(context.Background(), h, ""); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 2 {
		t.Errorf("handler ran %d times for two messages with no ID; want 2", calls)
	}
}

func TestNewProcessedSetRejectsZeroCapacity(t *testing.T) {
	if _, err := NewProcessedSet(0); err == nil {
		t.Error("NewProcessedSet(0) = nil error; want an error")
	}
}

// A delivery that waited on another of the same ID runs the handler when the
// other one failed, and is skipped when it succeeded.
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
			set := newSet(t, 10)
			_, end, err := set.Begin(context.Background(), "m-1")
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int64
			h := Dedup(set)(consumer.HandlerFunc(func(context.Context, *consumer.Message) error {
				calls.Add(1)
				return nil
			}))
			done := make(chan error, 1)
			go func() { done <- handle(context.Background(), h, "m-1") }()
			end(tc.processed)
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Handle = %v; want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Handle still waiting 10s after the claim ended")
			}
			if got := calls.Load(); got != tc.wantCalls {
				t.Errorf("handler ran %d times; want %d", got, tc.wantCalls)
			}
		})
	}
}
