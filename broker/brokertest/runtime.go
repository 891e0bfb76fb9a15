package brokertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// tally counts handler calls per message body, and closes done once want
// distinct bodies were handled successfully.
type tally struct {
	mu    sync.Mutex
	calls map[string]int
	ok    map[string]int
	want  int
	done  chan struct{}
	fired bool
}

func newTally(want int) *tally {
	return &tally{calls: map[string]int{}, ok: map[string]int{}, want: want, done: make(chan struct{})}
}

func (t *tally) call(body string) {
	t.mu.Lock()
	t.calls[body]++
	t.mu.Unlock()
}

func (t *tally) handled(body string) {
	t.mu.Lock()
	t.ok[body]++
	if len(t.ok) >= t.want && !t.fired {
		t.fired = true
		close(t.done)
	}
	t.mu.Unlock()
}

func (t *tally) snapshot() (calls, ok map[string]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	calls, ok = make(map[string]int, len(t.calls)), make(map[string]int, len(t.ok))
	for k, v := range t.calls {
		calls[k] = v
	}
	for k, v := range t.ok {
		ok[k] = v
	}
	return calls, ok
}

// running is a consumer.Consumer running on its own goroutine.
type running struct {
	e      *env
	cancel context.CancelFunc
	errc   chan error
}

func (e *env) runConsumer(src broker.Source, h consumer.HandlerFunc, opts ...consumer.Option) *running {
	e.Helper()
	log := slog.New(slog.NewTextHandler(e.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts = append([]consumer.Option{consumer.WithName("brokertest"), consumer.WithLogger(log)}, opts...)
	c, err := consumer.New(src, h, opts...)
	if err != nil {
		e.Fatalf("consumer.New = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{e: e, cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- c.Run(ctx) }()
	// If the case fails before stopping it, stop it anyway, so that the
	// suite never leaves a goroutine behind.
	e.Cleanup(func() { r.stop() })
	return r
}

// stop cancels the run context and waits for Run to return; it reports Run's
// error, or fails the test if Run does not return within Timeout.
func (r *running) stop() error {
	r.cancel()
	if r.errc == nil {
		return nil
	}
	select {
	case err := <-r.errc:
		r.errc = nil
		return err
	case <-time.After(r.e.h.Timeout):
		r.e.Errorf("consumer.Run did not return within %v of its context being cancelled; it must drain and return", r.e.h.Timeout)
		return nil
	}
}

func (e *env) waitTally(t *tally, what string) {
	e.Helper()
	select {
	case <-t.done:
	case <-time.After(e.h.Timeout):
		_, ok := t.snapshot()
		e.Fatalf("%s: %d of %d messages handled within %v", what, len(ok), t.want, e.h.Timeout)
	}
}

func testRuntimeHandlesAll(e *env) {
	const n = 200
	e.publish(msgs("runtime", n)...)
	t := newTally(n)
	r := e.runConsumer(e.source(8), func(ctx context.Context, m *broker.Message) error {
		t.call(string(m.Body))
		t.handled(string(m.Body))
		return nil
	}, consumer.WithConcurrency(4))
	e.waitTally(t, "the consumer runtime must handle every published message")
	if err := r.stop(); err != nil {
		e.Errorf("consumer.Run after its context was cancelled = %v; want nil (a clean drain)", err)
	}
	calls, _ := t.snapshot()
	for i := range n {
		b := string(msg("runtime", i).Body)
		if calls[b] != 1 {
			e.Errorf("message %q was handled %d times; want once (no fault was injected)", b, calls[b])
		}
	}
	e.nothing(e.source(1), "every message handled by the runtime was acked and must not be delivered again")
}

func testRuntimeDeadLetters(e *env) {
	const n, budget = 20, 3
	batch := msgs("ok", n)
	batch = append(batch,
		broker.Message{Body: []byte("failing"), Header: map[string]string{"x-test": "failing"}},
		broker.Message{Body: []byte("permanent"), Header: map[string]string{"x-test": "permanent"}})
	e.publish(batch...)
	t := newTally(n)
	r := e.runConsumer(e.source(4), func(ctx context.Context, m *broker.Message) error {
		b := string(m.Body)
		t.call(b)
		switch b {
		case "failing":
			return fmt.Errorf("brokertest: failing on attempt %d", m.Attempt)
		case "permanent":
			return retry.Permanent(errors.New("brokertest: permanent failure"))
		}
		t.handled(b)
		return nil
	}, consumer.WithConcurrency(2), consumer.WithMaxDeliveries(budget))
	e.waitTally(t, "the runtime must handle the good messages next to failing ones")
	dead := e.f.DeadLetters(e.ctx(), e.T, 2)
	if err := r.stop(); err != nil {
		e.Errorf("consumer.Run after its context was cancelled = %v; want nil", err)
	}
	if len(dead) != 2 {
		e.Fatalf("found %d dead letters within %v; want 2 (one failing %d times, one permanent)", len(dead), e.h.Timeout, budget)
	}
	byBody := map[string]broker.Message{}
	for _, m := range dead {
		byBody[string(m.Body)] = m
	}
	calls, _ := t.snapshot()
	for _, c := range []struct {
		body, attempts, permanent, errText string
		calls                              int
	}{
		{"failing", fmt.Sprint(budget), "false", fmt.Sprintf("failing on attempt %d", budget), budget},
		{"permanent", "1", "true", "permanent failure", 1},
	} {
		m, ok := byBody[c.body]
		if !ok {
			e.Errorf("message %q is not among the dead letters %v; want it dead-lettered", c.body, bodies(dead))
			continue
		}
		if got := m.Header[broker.HeaderAttempts]; got != c.attempts {
			e.Errorf("dead letter %q has %s = %q; want %q", c.body, broker.HeaderAttempts, got, c.attempts)
		}
		if got := m.Header[broker.HeaderPermanent]; got != c.permanent {
			e.Errorf("dead letter %q has %s = %q; want %q", c.body, broker.HeaderPermanent, got, c.permanent)
		}
		if got := m.Header[broker.HeaderError]; !strings.Contains(got, c.errText) {
			e.Errorf("dead letter %q has %s = %q; want the handler's last error (containing %q)", c.body, broker.HeaderError, got, c.errText)
		}
		if got := m.Header["x-test"]; got != c.body {
			e.Errorf("dead letter %q has x-test = %q; want its original headers kept", c.body, got)
		}
		if calls[c.body] != c.calls {
			e.Errorf("the handler was called %d times for %q; want %d (budget %d; a permanent error is not retried)", calls[c.body], c.body, c.calls, budget)
		}
	}
	e.nothing(e.source(1), "dead-lettered and handled messages must leave the destination")
}

func bodies(ms []broker.Message) []string {
	out := make([]string, len(ms))
	for i := range ms {
		out[i] = string(ms[i].Body)
	}
	return out
}

func testRuntimeCancel(e *env) {
	const n, stopAfter = 100, 20
	e.publish(msgs("cancel", n)...)
	slow := func(t *tally) consumer.HandlerFunc {
		return func(ctx context.Context, m *broker.Message) error {
			t.call(string(m.Body))
			select {
			case <-time.After(2 * time.Millisecond):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			t.handled(string(m.Body))
			return nil
		}
	}
	first := newTally(stopAfter)
	r := e.runConsumer(e.source(8), slow(first), consumer.WithConcurrency(4))
	e.waitTally(first, "the first consumer must handle messages before it is stopped")
	if err := r.stop(); err != nil {
		e.Errorf("consumer.Run after its context was cancelled mid-stream = %v; want nil (handlers finish within the drain timeout)", err)
	}
	_, ok1 := first.snapshot()
	if len(ok1) >= n {
		e.Fatalf("the first consumer handled all %d messages before it was stopped; the case needs a slower handler to check anything", n)
	}
	second := newTally(n - len(ok1))
	r = e.runConsumer(e.source(8), slow(second), consumer.WithConcurrency(4))
	e.waitTally(second, fmt.Sprintf("a new consumer must handle the %d messages the first one left", n-len(ok1)))
	if err := r.stop(); err != nil {
		e.Errorf("the second consumer.Run = %v; want nil", err)
	}
	_, ok2 := second.snapshot()
	var missing, twice []string
	for i := range n {
		b := string(msg("cancel", i).Body)
		switch {
		case ok1[b]+ok2[b] == 0:
			missing = append(missing, b)
		case ok1[b] > 0 && ok2[b] > 0, ok1[b] > 1, ok2[b] > 1:
			twice = append(twice, b)
		}
	}
	if len(missing) > 0 {
		e.Errorf("after cancelling the first consumer, %d messages were never handled (e.g. %v); want none lost", len(missing), head(missing))
	}
	if len(twice) > 0 {
		e.Errorf("%d messages were handled successfully twice (e.g. %v); want none: a message handled before the drain ended must have been acked", len(twice), head(twice))
	}
}
