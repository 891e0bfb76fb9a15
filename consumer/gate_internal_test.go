package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// countingSource counts the workers inside Receive, so that a test can
// check that a worker above the limit does not call it.
type countingSource struct {
	broker.Source
	receiving atomic.Int32
	peak      *peak
}

func (s *countingSource) Receive(ctx context.Context) (broker.Delivery, error) {
	s.peak.enter()
	defer s.peak.leave()
	return s.Source.Receive(ctx)
}

func (s *countingSource) Pause(ctx context.Context) error { return s.Source.(broker.Pauser).Pause(ctx) }
func (s *countingSource) Resume(ctx context.Context) error {
	return s.Source.(broker.Pauser).Resume(ctx)
}

// peak tracks how many goroutines are inside a section, and the most at once.
type peak struct {
	mu       sync.Mutex
	cur, max int
}

func (p *peak) enter() {
	p.mu.Lock()
	p.cur++
	p.max = max(p.max, p.cur)
	p.mu.Unlock()
}

func (p *peak) leave() {
	p.mu.Lock()
	p.cur--
	p.mu.Unlock()
}

func (p *peak) get() (cur, most int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur, p.max
}

func (p *peak) reset() {
	p.mu.Lock()
	p.max = p.cur
	p.mu.Unlock()
}

func newGateConsumer(t *testing.T, n int, h HandlerFunc, opts ...Option) (*Consumer, *memory.Broker, *peak) {
	t.Helper()
	b := memory.NewBroker()
	src, err := b.Source("q", memory.SourceConfig{Prefetch: n})
	if err != nil {
		t.Fatal(err)
	}
	p := &peak{}
	// One peak for Receive and the handler together: a worker the limit
	// admits is in one or the other, one above it in neither.
	wrapped := HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		p.enter()
		defer p.leave()
		return h(ctx, m)
	})
	c, err := New(&countingSource{Source: src, peak: p}, wrapped, append([]Option{WithConcurrency(n), WithLogger(quietLog)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c, b, p
}

func publish(t *testing.T, b *memory.Broker, n int) {
	t.Helper()
	for i := range n {
		if err := b.Publish(context.Background(), "q", &broker.Message{ID: fmt.Sprintf("m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
}

func start(t *testing.T, c *Consumer) (stop func()) {
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			if err := <-done; err != nil && !errors.Is(err, ErrConsumerClosed) {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// With 8 workers and a limit of 3, at most 3 workers are in Receive or a
// handler at once, and every message is handled.
func TestGateBoundsReceiveAndHandlers(t *testing.T) {
	var handled atomic.Int64
	c, b, p := newGateConsumer(t, 8, func(ctx context.Context, m *broker.Message) error {
		time.Sleep(100 * time.Microsecond)
		handled.Add(1)
		return nil
	})
	c.gate.setLimit(3)
	if got := c.Stats().Limit; got != 3 {
		t.Errorf("Stats().Limit = %d; want 3", got)
	}
	publish(t, b, 300)
	stop := start(t, c)
	eventually(t, "300 handled", func() bool { return handled.Load() == 300 })
	stop()
	if _, most := p.get(); most > 3 || most < 1 {
		t.Errorf("peak of workers in Receive or a handler = %d; want 1..3", most)
	}
}

// Raising the limit wakes the waiting workers at once: four handlers that
// wait for each other complete only if the limit goes from 1 to 4 while
// the first one waits.
func TestGateWakesWorkersWhenTheLimitRises(t *testing.T) {
	var arrived atomic.Int32
	all := make(chan struct{})
	c, b, _ := newGateConsumer(t, 4, func(ctx context.Context, m *broker.Message) error {
		if arrived.Add(1) == 4 {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	c.gate.setLimit(1)
	publish(t, b, 4)
	stop := start(t, c)
	eventually(t, "the first handler", func() bool { return arrived.Load() == 1 })
	c.gate.setLimit(4)
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		t.Fatalf("%d handlers of 4 ran after the limit rose to 4", arrived.Load())
	}
	stop()
	if st := c.Stats(); st.Handled != 4 || st.Limit != 4 {
		t.Errorf("Stats = %+v; want Handled 4, Limit 4", st)
	}
}

// Lowering the limit lets the running handlers finish, then holds the
// workers above it: afterwards at most the new limit run at once.
func TestGateLowerLimitAppliesAfterRunningHandlers(t *testing.T) {
	release := make(chan struct{})
	var handled atomic.Int64
	c, b, p := newGateConsumer(t, 4, func(ctx context.Context, m *broker.Message) error {
		<-release
		handled.Add(1)
		return nil
	})
	publish(t, b, 4)
	stop := start(t, c)
	eventually(t, "4 handlers running", func() bool { cur, _ := p.get(); return cur == 4 && c.Stats().InFlight == 4 })
	c.gate.setLimit(1)
	close(release)
	eventually(t, "4 handled", func() bool { return handled.Load() == 4 })
	eventually(t, "the workers to settle down", func() bool { cur, _ := p.get(); return cur <= 1 })
	p.reset()
	publish(t, b, 50)
	eventually(t, "54 handled", func() bool { return handled.Load() == 54 })
	stop()
	if _, most := p.get(); most > 1 {
		t.Errorf("peak after lowering the limit to 1 = %d; want 1", most)
	}
}

// Workers waiting at the gate follow Pause, Resume and the drain: Pause
// with 7 of 8 workers gated, Resume, then Shutdown returns (no worker is
// left waiting on the gate) and every message was handled once.
func TestGateWaitersFollowPauseResumeAndDrain(t *testing.T) {
	var handled atomic.Int64
	c, b, _ := newGateConsumer(t, 8, func(ctx context.Context, m *broker.Message) error {
		handled.Add(1)
		return nil
	})
	c.gate.setLimit(1)
	publish(t, b, 20)
	stop := start(t, c)
	eventually(t, "20 handled", func() bool { return handled.Load() == 20 })
	for range 3 {
		if err := c.Pause(context.Background()); err != nil {
			t.Fatal(err)
		}
		publish(t, b, 5)
		if err := c.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "35 handled", func() bool { return handled.Load() == 35 })
	// A limit change during the drain must not hand a worker a new intake.
	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.gate.setLimit(8)
	c.gate.setLimit(2)
	stop()
	if st := c.Stats(); st.Handled != 35 {
		t.Errorf("Stats().Handled = %d; want 35", st.Handled)
	}
}

// Shutdown while workers wait at the gate and the one admitted waits in
// Receive on an empty queue: Run returns, no goroutine is left (goleak).
func TestGateShutdownWithWorkersWaiting(t *testing.T) {
	c, _, p := newGateConsumer(t, 8, func(ctx context.Context, m *broker.Message) error { return nil })
	c.gate.setLimit(2)
	stop := start(t, c)
	eventually(t, "2 workers in Receive", func() bool { cur, _ := p.get(); return cur == 2 })
	stop()
}

// fakeLimiter is a concurrencyLimiter that records what it is told and
// answers a limit the test sets.
type fakeLimiter struct {
	mu       sync.Mutex
	calls    int
	failed   int
	inFlight []int
	next     atomic.Int32
}

func (l *fakeLimiter) observe(lat time.Duration, failed bool, inFlight int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	if failed {
		l.failed++
	}
	l.inFlight = append(l.inFlight, inFlight)
	return int(l.next.Load())
}

func (l *fakeLimiter) limit() int { return 2 }

// The hook WithAdaptiveConcurrency uses: the limiter's starting limit
// applies from New, it hears of every handler call (failures that count:
// not permanent ones), and the limit it returns applies, clamped to n.
func TestGateAppliesTheLimiter(t *testing.T) {
	l := &fakeLimiter{}
	l.next.Store(2)
	var calls atomic.Int64
	c, b, p := newGateConsumer(t, 4, func(ctx context.Context, m *broker.Message) error {
		if calls.Add(1)%2 == 0 {
			return errors.New("flaky")
		}
		return nil
	}, func(o *options) {
		o.newLimiter = func(n int) (concurrencyLimiter, error) {
			if n != 4 {
				t.Errorf("newLimiter(%d); want 4", n)
			}
			return l, nil
		}
	}, WithMaxDeliveries(100))
	if got := c.Stats().Limit; got != 2 {
		t.Errorf("Stats().Limit after New = %d; want the limiter's 2", got)
	}
	publish(t, b, 40)
	stop := start(t, c)
	eventually(t, "40 acked", func() bool { return b.Stats("q").Acked == 40 })
	if _, most := p.get(); most > 2 {
		t.Errorf("peak = %d with the limiter at 2", most)
	}
	l.next.Store(99)
	publish(t, b, 1)
	eventually(t, "41 acked", func() bool { return b.Stats("q").Acked == 41 })
	stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls != int(calls.Load()) || l.failed != l.calls/2 {
		t.Errorf("limiter heard %d calls, %d failed; want %d, %d", l.calls, l.failed, calls.Load(), calls.Load()/2)
	}
	for _, n := range l.inFlight {
		if n < 1 || n > 4 {
			t.Errorf("inFlight %d; want 1..4", n)
		}
	}
	if got := c.Stats().Limit; got != 4 {
		t.Errorf("Stats().Limit after the limiter said 99 = %d; want 4 (never above n)", got)
	}
}

// slotOf returns the index of the worker whose handler runs the message
// with id, or -1.
func slotOf(c *Consumer, id string) int {
	c.mu.Lock()
	r := c.cur
	c.mu.Unlock()
	if r == nil {
		return -1
	}
	for i := range r.slots {
		s := &r.slots[i]
		// d is written before the state becomes slotRunning.
		if s.state.Load() == slotRunning && s.d.Message().ID == id {
			return i
		}
	}
	return -1
}

// Handlers already running when the limit drops count against it (review
// R1 M1): with two handlers running and the limit lowered to 1, the worker
// whose handler finishes first takes nothing new while the other still
// runs, whichever worker it is; the limit is never exceeded.
func TestGateRunningHandlersCountAgainstALowerLimit(t *testing.T) {
	var running, most atomic.Int32
	gates := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	var handledC atomic.Bool
	var mostAtC atomic.Int32
	c, b, _ := newGateConsumer(t, 2, func(ctx context.Context, m *broker.Message) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			old := most.Load()
			if n <= old || most.CompareAndSwap(old, n) {
				break
			}
		}
		if ch, ok := gates[m.ID]; ok {
			<-ch
			return nil
		}
		mostAtC.Store(n)
		handledC.Store(true)
		return nil
	})
	for _, id := range []string{"a", "b"} {
		if err := b.Publish(context.Background(), "q", &broker.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	stop := start(t, c)
	eventually(t, "a and b running", func() bool { return slotOf(c, "a") >= 0 && slotOf(c, "b") >= 0 })
	c.gate.setLimit(1)
	if err := b.Publish(context.Background(), "q", &broker.Message{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	// Finish the handler of worker 0 first: gating by worker index let
	// worker 0 take c at once, beside the other handler still running.
	first, second := "a", "b"
	if slotOf(c, "b") == 0 {
		first, second = "b", "a"
	}
	close(gates[first])
	time.Sleep(50 * time.Millisecond) // room for a wrongly admitted worker to take c
	if handledC.Load() {
		t.Errorf("c was handled while %s still ran: %d handlers at once under a limit of 1", second, mostAtC.Load())
	}
	close(gates[second])
	eventually(t, "c handled", handledC.Load)
	stop()
	if n := mostAtC.Load(); n != 1 {
		t.Errorf("c ran with %d handlers at once; want 1 (the limit)", n)
	}
}

// A straggler from before a kill-switch trip does not hold up the probe
// (review R1 M1): while it still runs, a free worker takes the probes, and
// the switch closes. The probe cap counts only the handlers received
// while probing.
func TestGateProbeTakesAFreeWorkerWhileAStragglerRuns(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	release := make(chan struct{})
	started := make(chan struct{})
	recovered := make(chan struct{})
	c, b, _ := newGateConsumer(t, 2, func(ctx context.Context, m *broker.Message) error {
		if m.ID == "slow" {
			close(started)
			<-release // ignores ctx, as a call stuck on a dead dependency does
			return nil
		}
		if down.Load() {
			return errors.New("db down")
		}
		return nil
	}, WithMaxDeliveries(100), WithEventHook(func(e Event) {
		if e.Kind == EventRecovered {
			close(recovered)
		}
	}), WithKillSwitch(KillSwitch{Window: time.Minute, MinMessages: 2, RestartTimeout: 5 * time.Millisecond, ProbeMessages: 2}))
	// Only one worker takes deliveries at first: the straggler lands on
	// worker 0 (the one a gate by worker index admits while probing).
	c.gate.setLimit(1)
	if err := b.Publish(context.Background(), "q", &broker.Message{ID: "slow"}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, c)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before stop (cleanups run last in, first out)
	<-started
	c.gate.setLimit(2)
	publish(t, b, 10)
	eventually(t, "the trip", func() bool { return c.KillSwitch().Trips >= 1 })
	down.Store(false)
	select {
	case <-recovered:
	case <-time.After(10 * time.Second):
		t.Errorf("no recovery within 10s while the straggler ran: KillSwitch() = %+v, Stats() = %+v", c.KillSwitch(), c.Stats())
	}
	unblock()
	eventually(t, "11 acked", func() bool { return b.Stats("q").Acked == 11 })
	stop()
}
