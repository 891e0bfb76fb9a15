package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

type eventLog struct {
	mu     sync.Mutex
	events []consumer.Event
}

func (l *eventLog) add(e consumer.Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) of(runner string, kind consumer.EventKind) []consumer.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []consumer.Event
	for _, e := range l.events {
		if e.Runner == runner && e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func stateOf(h consumer.Health, name string) consumer.RunnerHealth {
	for _, r := range h.Runners {
		if r.Name == name {
			return r
		}
	}
	return consumer.RunnerHealth{}
}

// Issue 2: a runner that keeps failing is restarted with growing delays;
// Health() shows it; readiness stays false until all runners are running.
func TestSupervisorRestartsAFailingRunnerWithGrowingDelays(t *testing.T) {
	var runs atomic.Int64
	const failures = 4
	flaky := consumer.RunnerFunc(func(ctx context.Context) error {
		if runs.Add(1) <= failures {
			return fmt.Errorf("connect: connection refused (run %d)", runs.Load())
		}
		<-ctx.Done()
		return nil
	})
	b := memory.NewBroker()
	c, err := consumer.New(newSource(t, b, "steady", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	var log eventLog
	sup := &consumer.Supervisor{Logger: quiet, OnEvent: log.add}
	if err := sup.Add("steady", c); err != nil {
		t.Fatal(err)
	}
	if err := sup.Add("flaky", flaky); err != nil {
		t.Fatal(err)
	}
	if h := sup.Health(); h.Ready {
		t.Errorf("Health before Run: Ready = true; want false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	// While flaky fails, it shows as failed and the supervisor is not ready.
	waitFor(t, "a restart", func() bool { return len(log.of("flaky", consumer.EventRestarting)) >= 1 })
	if h := sup.Health(); h.Ready {
		t.Errorf("Health while a runner fails: Ready = true; want false (%+v)", h)
	}
	// A RunnerFunc counts as running from the moment it is started (the
	// Supervisor cannot see inside it), so wait for the last restart too.
	waitFor(t, "ready after the failures", func() bool {
		h := sup.Health()
		return h.Ready && stateOf(h, "flaky").Restarts == failures
	})
	h := sup.Health()
	if fl := stateOf(h, "flaky"); fl.Restarts != failures || fl.State != consumer.StateRunning || fl.LastError == "" {
		t.Errorf("Health(flaky) = %+v; want %d restarts, running, with the last error", fl, failures)
	}
	if st := stateOf(h, "steady"); st.State != consumer.StateRunning {
		t.Errorf("Health(steady) = %+v; want running", st)
	}

	restarts := log.of("flaky", consumer.EventRestarting)
	var delays []time.Duration
	for _, e := range restarts {
		delays = append(delays, e.Delay)
	}
	t.Logf("restart delays: %v", delays)
	if len(delays) != failures {
		t.Fatalf("restart events = %d; want %d", len(delays), failures)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] < delays[i-1] {
			t.Errorf("restart delays %v shrink at %d; want them to grow", delays, i)
		}
	}
	if delays[len(delays)-1] <= delays[0] {
		t.Errorf("restart delays %v do not grow", delays)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v; want nil", err)
	}
	h = sup.Health()
	for _, r := range h.Runners {
		if r.State != consumer.StateStopped {
			t.Errorf("after Run, %s is %v; want stopped", r.Name, r.State)
		}
	}
}

// Issue 2: an invalid-configuration failure is not restarted; the supervisor
// stops the other runners and returns it.
func TestSupervisorFailsFastOnErrorsRestartingCannotFix(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"invalid configuration", fmt.Errorf("declare queue: %w", broker.ErrInvalidConfig)},
		{"marked fatal", broker.Fatal(errors.New("ACCESS_REFUSED"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var runs atomic.Int64
			bad := consumer.RunnerFunc(func(ctx context.Context) error {
				runs.Add(1)
				return tc.err
			})
			otherStopped := make(chan struct{})
			other := consumer.RunnerFunc(func(ctx context.Context) error {
				<-ctx.Done()
				close(otherStopped)
				return nil
			})
			sup := &consumer.Supervisor{Logger: quiet}
			_ = sup.Add("bad", bad)
			_ = sup.Add("other", other)
			err := sup.Run(context.Background())
			if !errors.Is(err, tc.err) || !broker.IsFatal(err) {
				t.Errorf("Run = %v; want the fatal error", err)
			}
			if runs.Load() != 1 {
				t.Errorf("bad runner ran %d times; want 1 (no restart)", runs.Load())
			}
			select {
			case <-otherStopped:
			default:
				t.Errorf("Run returned before the other runner stopped")
			}
			if st := stateOf(sup.Health(), "bad"); st.State != consumer.StateFailed || st.Restarts != 0 {
				t.Errorf("Health(bad) = %+v; want failed with 0 restarts", st)
			}
		})
	}
}

func TestSupervisorAddRejectsBadRunners(t *testing.T) {
	sup := &consumer.Supervisor{}
	r := consumer.RunnerFunc(func(ctx context.Context) error { return nil })
	if err := sup.Add("", r); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Add(\"\") = %v; want ErrInvalidConfig", err)
	}
	if err := sup.Add("x", nil); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Add(nil) = %v; want ErrInvalidConfig", err)
	}
	if err := sup.Add("x", r); err != nil {
		t.Fatal(err)
	}
	if err := sup.Add("x", r); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("duplicate Add = %v; want ErrInvalidConfig", err)
	}
	if err := sup.Pause(context.Background(), "nope"); !errors.Is(err, consumer.ErrUnknownRunner) {
		t.Errorf("Pause(unknown) = %v; want ErrUnknownRunner", err)
	}
	if err := sup.Pause(context.Background(), "x"); !errors.Is(err, consumer.ErrNotPausable) {
		t.Errorf("Pause(RunnerFunc) = %v; want ErrNotPausable", err)
	}
}

// Issue 2: Pause then Resume under load loses and duplicates nothing.
func TestPauseResumeUnderLoadLosesAndDuplicatesNothing(t *testing.T) {
	const queue, total = "load", 3000
	b := memory.NewBroker()
	publishN(t, b, queue, total)
	var mu sync.Mutex
	seen := make(map[string]int, total)
	var paused atomic.Bool
	var handledWhilePaused atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		seen[m.ID]++
		mu.Unlock()
		time.Sleep(50 * time.Microsecond)
		return nil
	})
	c, err := consumer.New(newSource(t, b, queue, 8), h, consumer.WithConcurrency(4), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: quiet}
	_ = sup.Add("load", c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "the consumer to run", func() bool { return stateOf(sup.Health(), "load").State == consumer.StateRunning })

	for i := 0; i < 10; i++ {
		time.Sleep(5 * time.Millisecond)
		if err := sup.Pause(ctx, "load"); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		paused.Store(true)
		// Once paused and the in-flight handlers settled, nothing more is handled.
		waitFor(t, "paused consumer to settle its in-flight work", func() bool { return b.Stats(queue).Unacked == 0 })
		if st := stateOf(sup.Health(), "load"); st.State != consumer.StatePaused {
			t.Errorf("Health while paused = %v; want paused", st.State)
		}
		before := b.Stats(queue).Delivered
		time.Sleep(10 * time.Millisecond)
		if after := b.Stats(queue).Delivered; after != before {
			handledWhilePaused.Add(int64(after - before))
		}
		paused.Store(false)
		if err := sup.Resume(ctx, "load"); err != nil {
			t.Fatalf("Resume: %v", err)
		}
	}
	waitFor(t, "every message acked", func() bool { return b.Stats(queue).Acked == total })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := handledWhilePaused.Load(); n != 0 {
		t.Errorf("%d deliveries while paused; want 0", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != total {
		t.Errorf("handled %d distinct messages; want %d (none lost)", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("message %s handled %d times; want once (no duplicates)", id, n)
		}
	}
	if st := b.Stats(queue); st.Ready != 0 || st.Unacked != 0 || st.DeadLettered != 0 {
		t.Errorf("stats %+v; want an empty queue", st)
	}
}

// Issue 10 item 5: Add names the consumer once for everything. A consumer
// made without WithName (or with another name) and added as "orders" is
// "orders" in its logs, its events, its handler's context (which metrics
// middleware reads) and Health.
func TestSupervisorAddNamesTheConsumer(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	publishN(t, b, "q", 1)
	var logs syncBuffer
	names := make(chan string, 1)
	var hooked eventLog
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		name, _ := consumer.NameFromContext(ctx)
		names <- name
		return nil
	}), consumer.WithName("q-consumer"), consumer.WithEventHook(hooked.add),
		consumer.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	var log eventLog
	sup := &consumer.Supervisor{Logger: quiet, OnEvent: log.add}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	if c.Name() != "orders" {
		t.Errorf("Name() after Add(orders) = %q; want orders", c.Name())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	if got := <-names; got != "orders" {
		t.Errorf("NameFromContext in the handler = %q; want orders", got)
	}
	waitFor(t, "the ack", func() bool { return b.Stats("q").Acked == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !strings.Contains(out, "consumer=orders") || strings.Contains(out, "consumer=q-consumer") {
		t.Errorf("logs do not name the consumer orders:\n%s", out)
	}
	if n := len(log.of("orders", consumer.EventRunning)); n != 1 {
		t.Errorf("OnEvent got %d running events for orders; want 1", n)
	}
	// The consumer's own hooks see its whole life under that name: the
	// Supervisor's starting event, and its own running and stopped.
	for _, k := range []consumer.EventKind{consumer.EventStarting, consumer.EventRunning, consumer.EventDrained, consumer.EventStopped} {
		if n := len(hooked.of("orders", k)); n != 1 {
			t.Errorf("WithEventHook got %d %v events for orders; want 1", n, k)
		}
	}
	if h := sup.Health(); len(h.Runners) != 1 || h.Runners[0].Name != "orders" {
		t.Errorf("Health() = %+v; want one runner, orders", h)
	}
	// A consumer is added to one Supervisor, once.
	if err := (&consumer.Supervisor{}).Add("again", c); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Add of a consumer added already = %v; want ErrInvalidConfig", err)
	}
}

// chatty is a runner of another kind than *Consumer that takes part in
// its Supervisor's events through the exported Supervised interface.
type chatty struct {
	name   string
	emit   func(consumer.Event)
	hooked eventLog
	fails  atomic.Int64
}

func (r *chatty) Attach(name string, emit func(consumer.Event)) (func(consumer.Event), error) {
	r.name, r.emit = name, emit
	return r.hooked.add, nil
}

func (r *chatty) Run(ctx context.Context) error {
	if r.fails.Add(-1) >= 0 {
		return errors.New("warming up")
	}
	r.emit(consumer.Event{Kind: consumer.EventConnected})
	<-ctx.Done()
	return nil
}

// Issue 10 item 5: Supervisor events work for any Runner that implements
// Supervised, not only for *Consumer.
func TestSupervisorEventsForAnySupervisedRunner(t *testing.T) {
	r := &chatty{}
	r.fails.Store(1)
	var log eventLog
	sup := &consumer.Supervisor{Logger: quiet, OnEvent: log.add, Restart: retry.Constant(time.Millisecond)}
	if err := sup.Add("cache-warmer", r); err != nil {
		t.Fatal(err)
	}
	if r.name != "cache-warmer" {
		t.Errorf("Attach got name %q; want cache-warmer", r.name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "the runner's own event", func() bool { return len(log.of("cache-warmer", consumer.EventConnected)) == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, k := range []consumer.EventKind{consumer.EventFailed, consumer.EventRestarting} {
		if n := len(r.hooked.of("cache-warmer", k)); n != 1 {
			t.Errorf("the runner's hook got %d %v events; want 1", n, k)
		}
	}
	if n := len(r.hooked.of("cache-warmer", consumer.EventStarting)); n != 2 {
		t.Errorf("the runner's hook got %d starting events; want 2 (a start and a restart)", n)
	}
}

type failingAttach struct{ consumer.RunnerFunc }

func (failingAttach) Attach(string, func(consumer.Event)) (func(consumer.Event), error) {
	return nil, fmt.Errorf("%w: not today", broker.ErrInvalidConfig)
}

func TestSupervisorAddFailsWhenAttachFails(t *testing.T) {
	sup := &consumer.Supervisor{}
	if err := sup.Add("x", failingAttach{}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Add of a runner whose Attach fails = %v; want its error", err)
	}
	if h := sup.Health(); len(h.Runners) != 0 {
		t.Errorf("Health() = %+v; want no runner after a failed Add", h)
	}
}

// Supervisor.Backlog asks the named runner's Backlog method (for a
// *Consumer, its rate-limited Backlog).
func TestSupervisorBacklog(t *testing.T) {
	src := &backlogSource{answer: broker.Backlog{Messages: 4, Consumers: 1}}
	sup := &consumer.Supervisor{}
	_ = sup.Add("orders", newBacklogConsumer(t, src))
	_ = sup.Add("func", consumer.RunnerFunc(func(ctx context.Context) error { return nil }))
	if b, err := sup.Backlog(context.Background(), "orders"); err != nil || b.Messages != 4 {
		t.Errorf("Backlog(orders) = %+v, %v; want 4 messages", b, err)
	}
	if _, err := sup.Backlog(context.Background(), "func"); !errors.Is(err, consumer.ErrNoBacklog) {
		t.Errorf("Backlog(RunnerFunc) = %v; want ErrNoBacklog", err)
	}
	if _, err := sup.Backlog(context.Background(), "nope"); !errors.Is(err, consumer.ErrUnknownRunner) {
		t.Errorf("Backlog(unknown) = %v; want ErrUnknownRunner", err)
	}
}

// pausable is a runner of another kind than *Consumer that can pause: it
// implements broker.Pauser, the one exported Pause/Resume interface.
type pausable struct {
	consumer.RunnerFunc
	paused atomic.Bool
}

func (p *pausable) Pause(context.Context) error  { p.paused.Store(true); return nil }
func (p *pausable) Resume(context.Context) error { p.paused.Store(false); return nil }

var _ broker.Pauser = (*pausable)(nil)

func TestSupervisorPausesAnyPauser(t *testing.T) {
	p := &pausable{}
	sup := &consumer.Supervisor{}
	_ = sup.Add("p", p)
	if err := sup.Pause(context.Background(), "p"); err != nil || !p.paused.Load() {
		t.Errorf("Pause(p) = %v, paused %v; want nil, true", err, p.paused.Load())
	}
	if err := sup.Resume(context.Background(), "p"); err != nil || p.paused.Load() {
		t.Errorf("Resume(p) = %v, paused %v; want nil, false", err, p.paused.Load())
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Review of issue 10 (round 3), item 1: a runner name becomes a log
// attribute, a metrics label value and a health key; one that is not valid
// UTF-8 or holds a control character is refused by Add and by Attach.
func TestSupervisorAddRejectsInvalidNames(t *testing.T) {
	r := consumer.RunnerFunc(func(ctx context.Context) error { return nil })
	for _, name := range []string{"caf\xe9", "a\nb", "tab\there"} {
		sup := &consumer.Supervisor{}
		if err := sup.Add(name, r); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Add(%q) = %v; want ErrInvalidConfig", name, err)
		}
		if h := sup.Health(); len(h.Runners) != 0 {
			t.Errorf("Add(%q) left a runner: %+v", name, h)
		}
		c := newBacklogConsumer(t, &backlogSource{})
		if _, err := c.Attach(name, nil); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Attach(%q) = %v; want ErrInvalidConfig", name, err)
		}
		if c.Name() == name {
			t.Errorf("a refused Attach(%q) renamed the consumer", name)
		}
	}
}

// plainAttach is a Supervised runner whose Attach fails with an error of
// its own, that does not wrap broker.ErrInvalidConfig.
type plainAttach struct{ consumer.RunnerFunc }

func (plainAttach) Attach(string, func(consumer.Event)) (func(consumer.Event), error) {
	return nil, errors.New("not today")
}

// Review round 3, item 5: Add's doc says a failing Attach is invalid
// configuration, whatever the runner's error wraps.
func TestSupervisorAddWrapsAPlainAttachError(t *testing.T) {
	sup := &consumer.Supervisor{}
	err := sup.Add("x", plainAttach{})
	if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(fmt.Sprint(err), "not today") {
		t.Errorf("Add of a runner whose Attach fails with a plain error = %v; want it wrapped in ErrInvalidConfig", err)
	}
}

// emitsInAttach calls emit from inside Attach, as a runner that reports its
// state at once may.
type emitsInAttach struct{ consumer.RunnerFunc }

func (emitsInAttach) Attach(_ string, emit func(consumer.Event)) (func(consumer.Event), error) {
	emit(consumer.Event{Kind: consumer.EventConnected})
	return nil, nil
}

// Review round 3, item 3: Add held the Supervisor's lock while it called
// Attach, and emit takes that lock: an Attach that emits deadlocked Add.
func TestSupervisorAddOfARunnerThatEmitsInAttach(t *testing.T) {
	sup := &consumer.Supervisor{OnEvent: func(consumer.Event) {}}
	done := make(chan error, 1)
	go func() { done <- sup.Add("x", emitsInAttach{}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Add did not return within 10s: it deadlocks when Attach calls emit")
	}
}

// customBacklog is a runner of another kind than *Consumer with a Backlog
// method of its own, that panics, or hangs ignoring its context until
// release is closed.
type customBacklog struct {
	consumer.RunnerFunc
	panics  bool
	release chan struct{}
	calls   atomic.Int64
}

func (r *customBacklog) Backlog(ctx context.Context) (broker.Backlog, error) {
	r.calls.Add(1)
	if r.panics {
		panic("runner backlog boom")
	}
	<-r.release
	return broker.Backlog{Messages: 1}, nil
}

// Review round 3, item 2: Supervisor.Backlog called a custom runner's
// Backlog unprotected. A panic there must be an error (health's full report
// and the Prometheus collector call it: a panic would kill the process),
// and a hang must not keep the caller past its ctx.
func TestSupervisorBacklogOfACustomRunnerIsGuarded(t *testing.T) {
	panics := &customBacklog{panics: true}
	hangs := &customBacklog{release: make(chan struct{})}
	defer close(hangs.release)
	sup := &consumer.Supervisor{}
	_ = sup.Add("panics", panics)
	_ = sup.Add("hangs", hangs)

	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("Supervisor.Backlog panicked: %v", p)
			}
		}()
		if _, err := sup.Backlog(context.Background(), "panics"); err == nil || !strings.Contains(err.Error(), "runner backlog boom") {
			t.Errorf("Backlog of a runner whose Backlog panics = %v; want an error saying so", err)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := sup.Backlog(ctx, "hangs"); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Backlog of a hanging runner = %v; want the caller's ctx error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Backlog of a runner that hangs did not return within 10s of a 50ms ctx")
	}
	// Without a deadline of the caller's, the 2 s bound of every backlog
	// call holds, and callers share the call in progress.
	go func() { _, err := sup.Backlog(context.Background(), "hangs"); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Backlog of a hanging runner without a deadline = %v; want DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Backlog of a runner that hangs did not return within 10s without a deadline (bound: 2s)")
	}
	if n := hangs.calls.Load(); n != 1 {
		t.Errorf("the hanging runner's Backlog was called %d times; want 1 (one call in progress at a time)", n)
	}
}

// failingSource fails every Receive: its consumer's Run fails at once.
type failingSource struct{ backlogSource }

func (*failingSource) Receive(context.Context) (broker.Delivery, error) {
	return nil, errors.New("connection refused")
}

// Review round 3, item 4: a consumer's own hook sees it stop when the
// Supervisor stops it while it waits to be restarted, and when the restart
// policy gives up, as OnEvent does.
func TestRunnersHookSeesTheStopOfARunnerThatFailed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		restart retry.Policy
	}{
		{"stopped in its restart delay", retry.Constant(time.Hour)},
		{"restart policy gave up", retry.PolicyFunc(func() backoff.BackOff { return &backoff.StopBackOff{} })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hooked, log eventLog
			c, err := consumer.New(&failingSource{}, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
				consumer.WithEventHook(hooked.add), consumer.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			sup := &consumer.Supervisor{Logger: quiet, OnEvent: log.add, Restart: tc.restart}
			if err := sup.Add("orders", c); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- sup.Run(ctx) }()
			waitFor(t, "the failure", func() bool { return len(hooked.of("orders", consumer.EventFailed)) == 1 })
			waitFor(t, "restarting or stopped", func() bool {
				return len(log.of("orders", consumer.EventRestarting))+len(log.of("orders", consumer.EventStopped)) > 0
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if n := len(log.of("orders", consumer.EventStopped)); n != 1 {
				t.Errorf("OnEvent got %d stopped events; want 1", n)
			}
			if n := len(hooked.of("orders", consumer.EventStopped)); n != 1 {
				t.Errorf("the consumer's own hook got %d stopped events; want 1", n)
			}
		})
	}
}

// Review round 3, item 6: a consumer added to a Supervisor and also run by
// hand made the Supervisor restart it forever on ErrAlreadyRunning. That is
// a programming error restarting cannot fix: Run fails with it.
func TestSupervisorFailsOnAConsumerRunByHand(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: quiet, Restart: retry.Constant(time.Millisecond)}
	if err := sup.Add("q", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hand := make(chan error, 1)
	go func() { hand <- c.Run(ctx) }()
	waitFor(t, "the run by hand", func() bool { return c.State() == consumer.StateRunning })
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, consumer.ErrAlreadyRunning) {
			t.Errorf("Supervisor.Run = %v; want ErrAlreadyRunning", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Supervisor.Run still restarting after 10s (restarts %d, health %+v)", stateOf(sup.Health(), "q").Restarts, sup.Health())
		cancel()
		<-done
	}
	cancel()
	<-hand
}

// Review of issue 10: a runner that failed fatally (which stops the whole
// Supervisor) was never reported as stopped: OnEvent saw EventFailed and
// then nothing, unlike a runner whose restart policy gave up.
func TestIssue10ReviewFatalFailureIsReportedAsStopped(t *testing.T) {
	errBad := errors.New("bad credentials")
	var mu sync.Mutex
	var kinds []consumer.EventKind
	var stopErr error
	s := &consumer.Supervisor{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OnEvent: func(e consumer.Event) {
		if e.Runner != "fatal" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		kinds = append(kinds, e.Kind)
		if e.Kind == consumer.EventStopped {
			stopErr = e.Err
		}
	}}
	if err := s.Add("fatal", consumer.RunnerFunc(func(context.Context) error { return broker.Fatal(errBad) })); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); !errors.Is(err, errBad) {
		t.Fatalf("Supervisor.Run = %v; want the fatal error", err)
	}
	// OnEvent is queued: wait for the stop to reach it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got, serr := slices.Clone(kinds), stopErr
		mu.Unlock()
		if slices.Contains(got, consumer.EventStopped) {
			if !errors.Is(serr, errBad) {
				t.Errorf("EventStopped.Err = %v; want the fatal error", serr)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events of the fatal runner: %v; want an EventStopped after EventFailed", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Health().Runners[0].State; st != consumer.StateFailed {
		t.Errorf("state after a fatal failure = %v; want failed (health keeps why)", st)
	}
}
