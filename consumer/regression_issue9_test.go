package consumer_test

// Regression tests for issue 9 (reliability audit, 2026-12): items 1–3, each
// through the public API, each seen failing on the code before its fix.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// nilErr is an error type whose Error method dereferences its receiver, as
// most hand-written error types do: a typed nil of it panics on Error().
type nilErr struct{ code int }

func (e *nilErr) Error() string { return fmt.Sprintf("code %d", e.code) }

// check returns a typed nil: a non-nil error interface holding a nil pointer,
// the classic Go mistake.
func check() *nilErr { return nil }

// Issue 9 item 1: a handler that returns a typed nil error once its budget
// is spent used to crash the process: building the dead-letter reason called
// Error() outside any recover.
func TestIssue9TypedNilHandlerErrorIsDeadLetteredNotACrash(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 3)
	var calls atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls.Add(1)
		if m.ID == "m1" {
			return check() // non-nil error, nil *nilErr inside
		}
		return nil
	})
	c, err := consumer.New(newSource(t, b, "q", 3), h, consumer.WithLogger(quiet), consumer.WithMaxDeliveries(2))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(c, ctx)
	waitFor(t, "m1 dead-lettered", func() bool { return len(b.DeadLetters("q")) == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v; want nil", err)
	}
	st := b.Stats("q")
	if st.Acked != 2 || st.DeadLettered != 1 {
		t.Fatalf("stats = %+v; want 2 acked, 1 dead-lettered", st)
	}
	dl := b.DeadLetters("q")[0]
	reason := dl.Header[broker.HeaderError]
	if !strings.Contains(reason, "*consumer_test.nilErr") || !strings.Contains(reason, "panicked") {
		t.Fatalf("dead-letter reason = %q; want it to name the error type and say its Error method panicked", reason)
	}
	if got := dl.Header[broker.HeaderAttempts]; got != "2" {
		t.Fatalf("attempts header = %q; want 2", got)
	}
}

// Issue 9 item 1: the runtime also calls into the observer, the event hook
// and the Supervisor's OnEvent hook; a panic in any of them must not take the
// process down nor lose a message.
func TestIssue9PanickingObserverAndHooksDoNotCrash(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 20)
	var handled atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if handled.Add(1)%3 == 0 {
			return errors.New("flaky")
		}
		return nil
	})
	c, err := consumer.New(newSource(t, b, "q", 4), h, consumer.WithLogger(quiet), consumer.WithConcurrency(4),
		consumer.WithObserver(func(context.Context, *broker.Message, consumer.Settlement, error) { panic("observer bug") }),
		consumer.WithEventHook(func(consumer.Event) { panic("hook bug") }),
	)
	if err != nil {
		t.Fatal(err)
	}
	var onEvent atomic.Int64
	sup := &consumer.Supervisor{Logger: quiet, OnEvent: func(consumer.Event) {
		onEvent.Add(1)
		panic("OnEvent bug")
	}}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "every message acked", func() bool { return b.Stats("q").Acked == 20 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run = %v; want nil", err)
	}
	if onEvent.Load() < 2 {
		t.Fatalf("OnEvent called %d times; want every event delivered although the hook panics", onEvent.Load())
	}
}

// Issue 9 item 1: a runner that fails with a typed nil error must not crash
// Health (which reports the error's text) or the Supervisor.
func TestIssue9RunnerFailingWithTypedNilErrorKeepsHealthAlive(t *testing.T) {
	var runs atomic.Int64
	sup := &consumer.Supervisor{Logger: quiet}
	_ = sup.Add("bad", consumer.RunnerFunc(func(ctx context.Context) error {
		if runs.Add(1) > 2 {
			<-ctx.Done()
			return nil
		}
		return check()
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "a restart", func() bool { return runs.Load() >= 3 })
	h := sup.Health()
	cancel()
	<-done
	if len(h.Runners) != 1 || !strings.Contains(h.Runners[0].LastError, "nilErr") {
		t.Fatalf("Health = %+v; want the last error to name the typed nil", h)
	}
}

// heldSource hands out its first delivery only once the Receive context has
// ended — as a broker can when a message arrives just as intake stops — and
// passes every later call through.
type heldSource struct {
	broker.Source
	once    sync.Once
	holding chan struct{}
}

func (s *heldSource) Receive(ctx context.Context) (broker.Delivery, error) {
	first := false
	s.once.Do(func() { first = true })
	if !first {
		return s.Source.Receive(ctx)
	}
	d, err := s.Source.Receive(context.Background())
	close(s.holding)
	<-ctx.Done()
	return d, err
}

// Issue 9 item 2: a give-back (a delivery that arrived as Pause stopped
// intake) whose Requeue timed out was never tried again: it held its
// prefetch slot for ever, the consumer handled nothing after Resume, and
// State still said running.
func TestIssue9FailedGiveBackIsRetriedAndShowsInState(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 5)
	src := &heldSource{Source: newSource(t, b, "q", 1), holding: make(chan struct{})}
	var settleFailed atomic.Int64
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(quiet), consumer.WithSettleTimeout(20*time.Millisecond),
		consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventSettleFailed {
				settleFailed.Add(1)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	b.SetAckDelay(time.Second) // every settlement times out, for now
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(c, ctx)
	<-src.holding
	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the give-back to fail", func() bool { return settleFailed.Load() > 0 })
	if s := c.State(); s != consumer.StateStalled {
		t.Errorf("State while the give-back fails = %v; want %v", s, consumer.StateStalled)
	}
	b.SetAckDelay(0) // the broker recovers
	if err := c.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for b.Stats("q").Acked < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	acked := b.Stats("q").Acked
	cancel()
	<-done
	if acked != 5 {
		t.Fatalf("acked %d of 5 after Resume (state %v); want every message: the failed give-back must be retried", acked, c.State())
	}
}

// Issue 9 item 3: Run with a context that is already cancelled used to
// start the workers, which received and acked part of the backlog before
// the run noticed.
func TestIssue9RunWithCancelledContextTakesNothing(t *testing.T) {
	for i := range 20 {
		b := memory.NewBroker()
		publishN(t, b, "q", 500)
		c, err := consumer.New(newSource(t, b, "q", 64), consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
			consumer.WithLogger(quiet), consumer.WithConcurrency(8))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := c.Run(ctx); err != nil {
			t.Fatalf("run %d: Run(cancelled ctx) = %v; want nil", i, err)
		}
		if st := b.Stats("q"); st.Delivered != 0 || st.Acked != 0 {
			t.Fatalf("run %d: Run(cancelled ctx) took messages: %+v; want none delivered", i, st)
		}
	}
}

// Issue 9 item 3, through the Supervisor.
func TestIssue9SupervisorRunWithCancelledContextTakesNothing(t *testing.T) {
	for i := range 20 {
		b := memory.NewBroker()
		publishN(t, b, "q", 500)
		c, err := consumer.New(newSource(t, b, "q", 64), consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
			consumer.WithLogger(quiet), consumer.WithConcurrency(8))
		if err != nil {
			t.Fatal(err)
		}
		var sup consumer.Supervisor
		sup.Logger = quiet
		_ = sup.Add("q", c)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := sup.Run(ctx); err != nil {
			t.Fatalf("run %d: Supervisor.Run(cancelled ctx) = %v; want nil", i, err)
		}
		if st := b.Stats("q"); st.Delivered != 0 || st.Acked != 0 {
			t.Fatalf("run %d: Supervisor.Run(cancelled ctx) took messages: %+v; want none delivered", i, st)
		}
	}
}

// Issue 9 item 10, on the memory broker: a delivery given back without a
// handler having seen it (it arrived as Pause stopped intake) neither counts
// as an attempt nor loses its place. One worker, many Pause/Resume cycles.
func TestIssue9PauseResumeKeepsOrderAndBudgetOnMemory(t *testing.T) {
	const (
		n      = 10000
		cycles = 2000
	)
	b := memory.NewBroker()
	publishN(t, b, "q", n)
	var (
		mu       sync.Mutex
		order    []int
		attempts = map[int]int{}
	)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		var i int
		fmt.Sscan(string(m.Body), &i)
		mu.Lock()
		order = append(order, i)
		attempts[m.Attempt]++
		mu.Unlock()
		return nil
	})
	c, err := consumer.New(newSource(t, b, "q", 8), h, consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(c, ctx)
	for range cycles {
		_ = c.Pause(context.Background())
		_ = c.Resume(context.Background())
		// Let a few messages through between cycles, so that the cycles
		// cut into a flowing stream.
		last, until := b.Stats("q").Acked, time.Now().Add(2*time.Millisecond)
		for b.Stats("q").Acked == last && time.Now().Before(until) {
			runtime.Gosched()
		}
	}
	during := b.Stats("q").Acked
	waitFor(t, "every message acked", func() bool { return b.Stats("q").Acked == n })
	cancel()
	<-done
	inversions := 0
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			inversions++
		}
	}
	t.Logf("%d Pause/Resume cycles while %d messages were handled; %d handled in all, %d order inversions, attempts histogram %v",
		cycles, during, len(order), inversions, attempts)
	if inversions != 0 || attempts[1] != n || len(order) != n {
		t.Fatalf("%d inversions, attempts %v, %d handled; want 0 inversions, every one of %d on attempt 1", inversions, attempts, len(order), n)
	}
}

// nilDelivery's methods dereference their receiver, as an adapter's do.
type nilDelivery struct{ m broker.Message }

func (d *nilDelivery) Message() *broker.Message                        { return &d.m }
func (d *nilDelivery) Ack(context.Context) error                       { return nil }
func (d *nilDelivery) Requeue(context.Context) error                   { return nil }
func (d *nilDelivery) DeadLetter(context.Context, broker.Reason) error { return nil }

// brokenSource hands out one broken delivery, then blocks.
type brokenSource struct {
	once sync.Once
	d    broker.Delivery
}

func (s *brokenSource) Receive(ctx context.Context) (broker.Delivery, error) {
	var d broker.Delivery
	s.once.Do(func() { d = s.d })
	if d != nil {
		return d, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}
func (s *brokenSource) Close(context.Context) error { return nil }

// panickyDelivery panics in every settlement, as a broken adapter may.
type panickyDelivery struct{ m broker.Message }

func (d *panickyDelivery) Message() *broker.Message      { return &d.m }
func (d *panickyDelivery) Ack(context.Context) error     { panic("ack bug") }
func (d *panickyDelivery) Requeue(context.Context) error { panic("requeue bug") }
func (d *panickyDelivery) DeadLetter(context.Context, broker.Reason) error {
	panic("dead-letter bug")
}

// Issue 9 item 1 (hostile review): a source is user code too. A typed nil
// delivery, a delivery with a nil message, or a settlement that panics
// crashed the process on a worker goroutine.
func TestIssue9BrokenSourceIsAnErrorNotACrash(t *testing.T) {
	ok := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	for _, tc := range []struct {
		name string
		d    broker.Delivery
	}{
		{"typed nil delivery", (*nilDelivery)(nil)},
		{"nil message", &nilMessageDelivery{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := consumer.New(&brokenSource{d: tc.d}, ok, consumer.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Run(context.Background())
			if !broker.IsFatal(err) {
				t.Fatalf("Run = %v; want a fatal error naming the broken source", err)
			}
		})
	}
	t.Run("settlement panics", func(t *testing.T) {
		var failed atomic.Int64
		c, err := consumer.New(&brokenSource{d: &panickyDelivery{m: broker.Message{ID: "m1", Attempt: 1}}}, ok,
			consumer.WithLogger(quiet), consumer.WithDrainTimeout(200*time.Millisecond),
			consumer.WithEventHook(func(e consumer.Event) {
				if e.Kind == consumer.EventSettleFailed {
					failed.Add(1)
				}
			}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := runAsync(c, ctx)
		waitFor(t, "the panicking ack to be reported", func() bool { return failed.Load() > 0 })
		if s := c.State(); s != consumer.StateStalled {
			t.Errorf("State = %v; want %v while the ack cannot be done", s, consumer.StateStalled)
		}
		cancel()
		<-done
	})
}

type nilMessageDelivery struct{ nilDelivery }

func (*nilMessageDelivery) Message() *broker.Message { return nil }

// Issue 9 item 1 (hostile review): a Runner that panics is a failed runner,
// restarted like any other, not the end of the process.
func TestIssue9PanickingRunnerIsRestarted(t *testing.T) {
	var runs atomic.Int64
	sup := &consumer.Supervisor{Logger: quiet}
	_ = sup.Add("p", consumer.RunnerFunc(func(ctx context.Context) error {
		if runs.Add(1) <= 2 {
			panic("runner bug")
		}
		<-ctx.Done()
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "the third run", func() bool { return runs.Load() >= 3 })
	h := sup.Health()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run = %v; want nil", err)
	}
	if h.Runners[0].Restarts != 2 || !strings.Contains(h.Runners[0].LastError, "runner bug") {
		t.Fatalf("Health = %+v; want 2 restarts and the panic as the last error", h.Runners[0])
	}
}

// Issue 9 (hostile review): a hook that resumes the consumer when it is
// paused deadlocked Pause, which emitted the event while holding its lock.
func TestIssue9HookMayResumeFromPausedEvent(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 10)
	var c *consumer.Consumer
	c, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(quiet), consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventPaused {
				_ = c.Resume(context.Background())
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(c, ctx)
	paused := make(chan error, 1)
	go func() { paused <- c.Pause(context.Background()) }()
	select {
	case err := <-paused:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Pause did not return: the hook's Resume deadlocked it")
	}
	waitFor(t, "every message acked", func() bool { return b.Stats("q").Acked == 10 })
	cancel()
	<-done
}
