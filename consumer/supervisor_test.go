package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
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
