package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/retry"
)

// A Runner is anything a Supervisor can run: a *Consumer, or a RunnerFunc.
// Run must return when ctx is done. A Runner may also implement
// Shutdown(ctx) error (graceful stop with a deadline), State() State (health),
// and Pause(ctx) error / Resume(ctx) error; *Consumer implements them all.
type Runner interface {
	Run(ctx context.Context) error
}

// RunnerFunc adapts a function to a Runner.
type RunnerFunc func(ctx context.Context) error

// Run calls f(ctx).
func (f RunnerFunc) Run(ctx context.Context) error { return f(ctx) }

type shutdowner interface {
	Shutdown(ctx context.Context) error
}

type stater interface {
	State() State
}

type pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// A Supervisor runs a set of named runners tied to one context, restarts the
// ones that fail, reports their health, and stops them all gracefully.
//
// The zero value is ready to use; the exported fields may be set before Run and
// must not be changed after. A Supervisor is safe for concurrent use: Health,
// Pause and Resume may be called from any goroutine while Run runs. Run may
// be called once.
//
// A runner that returns an error while the Supervisor's context is live is
// restarted after a delay that grows with each consecutive failure (with
// jitter) and decays back to the shortest once the runner stayed up for
// RestartReset. A runner failing with an error for which IsFatal is true (such
// as invalid configuration) is not restarted: the Supervisor stops every
// runner and Run returns that error. A runner that returns nil is done.
//
// The Supervisor installs no signal handlers: pass Run a context from
// signal.NotifyContext.
type Supervisor struct {
	// DrainTimeout, if positive, bounds the graceful stop of runners that
	// implement Shutdown (as *Consumer does) once Run's context is done.
	// Zero leaves each consumer to its own drain timeout (WithDrainTimeout).
	DrainTimeout time.Duration
	// Restart spaces out restarts after failures. Nil means exponential steps
	// of 100ms, 200ms, 400ms… up to 30s with equal jitter: each delay is
	// between half its step and the step (the first 50–100ms), so each is at
	// least the previous one.
	Restart retry.Policy
	// RestartReset is how long a runner must have run before a failure for its
	// restart delay to start again from the shortest. Zero means 1 minute.
	RestartReset time.Duration
	// Logger receives lifecycle logs. Nil means slog.Default().
	Logger *slog.Logger
	// OnEvent, if set, receives every event of the Supervisor and its
	// runners. Events are queued and delivered in order by one goroutine, so a
	// slow hook never stalls a consumer; when 1024 events are waiting, new ones
	// are dropped. Run delivers the queued events before it returns, so a hook
	// that never returns keeps Run from returning.
	OnEvent func(Event)

	mu      sync.Mutex
	entries []*entry
	byName  map[string]*entry
	started bool
	events  chan Event // non-nil while Run delivers events
}

type entry struct {
	name string
	r    Runner
	// shutdown receives the result of the Shutdown that Run calls on a
	// stop when DrainTimeout is set (nil otherwise); capacity 1.
	shutdown chan error

	mu       sync.Mutex
	state    State
	since    time.Time
	restarts int
	lastErr  error
}

func (e *entry) set(s State, err error) {
	e.mu.Lock()
	e.state, e.since = s, time.Now()
	if err != nil {
		e.lastErr = err
	}
	e.mu.Unlock()
}

// Add registers a runner under a unique name. It must be called before Run.
// It returns an error for a nil runner, an empty or duplicate name, or when
// Run has started.
func (s *Supervisor) Add(name string, r Runner) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r == nil:
		return fmt.Errorf("%w: nil runner %q", broker.ErrInvalidConfig, name)
	case name == "":
		return fmt.Errorf("%w: empty runner name", broker.ErrInvalidConfig)
	case s.byName[name] != nil:
		return fmt.Errorf("%w: duplicate runner name %q", broker.ErrInvalidConfig, name)
	case s.started:
		return fmt.Errorf("queuekit: supervisor: Add(%q) after Run", name)
	}
	if s.byName == nil {
		s.byName = make(map[string]*entry)
	}
	e := &entry{name: name, r: r, state: StateStarting, since: time.Now()}
	s.entries = append(s.entries, e)
	s.byName[name] = e
	if c, ok := r.(*Consumer); ok {
		sink := func(ev Event) {
			if ev.Kind == EventStopped {
				return // the Supervisor reports its runners' stops itself
			}
			ev.Runner = name
			s.emit(ev)
		}
		c.sup.Store(&sink)
	}
	return nil
}

// Run starts every runner and supervises them until ctx is done or a runner
// fails fatally. It then stops them all — calling Shutdown with DrainTimeout
// on runners that have it — and returns only when every runner and every
// goroutine Run started has returned.
//
// It returns nil after a stop caused by ctx, or the fatal error.
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("queuekit: supervisor: Run called twice")
	}
	s.started = true
	entries := s.entries
	var evDone chan struct{}
	if s.OnEvent != nil {
		s.events = make(chan Event, 1024)
		evDone = make(chan struct{})
		go s.deliver(s.events, evDone)
	}
	s.mu.Unlock()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	if s.DrainTimeout > 0 {
		for _, e := range entries {
			if _, ok := e.r.(shutdowner); ok {
				e.shutdown = make(chan error, 1)
			}
		}
	}
	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.supervise(ctx, cancel, e)
		}()
	}

	<-ctx.Done()
	if s.DrainTimeout > 0 {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), s.DrainTimeout)
		for _, e := range entries {
			if sd, ok := e.r.(shutdowner); ok {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := sd.Shutdown(dctx)
					if errors.Is(err, context.DeadlineExceeded) && dctx.Err() != nil {
						// Shutdown says ctx.Err(), as net/http's does: name
						// what it means here.
						err = fmt.Errorf("queuekit: drain past the supervisor's DrainTimeout of %v: %w: %w", s.DrainTimeout, ErrDrainTimeout, err)
					}
					if err != nil {
						s.logger().Warn("queuekit: runner shutdown", "runner", e.name, "error", err)
					}
					e.shutdown <- err
				}()
			}
		}
		wg.Wait()
		dcancel()
	} else {
		wg.Wait()
	}

	if evDone != nil {
		s.mu.Lock()
		close(s.events)
		s.events = nil
		s.mu.Unlock()
		<-evDone
	}
	if err := context.Cause(ctx); broker.IsFatal(err) {
		return err
	}
	return nil
}

// supervise runs one runner until ctx is done, restarting it after failures.
func (s *Supervisor) supervise(ctx context.Context, fatal context.CancelCauseFunc, e *entry) {
	// Whatever ends the supervision — ctx done during a restart delay, the
	// restart policy giving up, a fatal failure — a runner that holds broker
	// resources (a *Consumer whose failed Run left its source open) is shut
	// down, so that nothing it holds outlives Supervisor.Run.
	defer func() {
		if sd, ok := e.r.(shutdowner); ok {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.finalShutdownTimeout())
			defer cancel()
			if err := sd.Shutdown(sctx); err != nil && !errors.Is(err, ErrDrainTimeout) {
				s.logger().Warn("queuekit: runner shutdown", "runner", e.name, "error", err)
			}
		}
	}()
	var bo backoff.BackOff
	log := s.logger().With("runner", e.name)
	for {
		e.set(StateStarting, nil)
		s.emit(Event{Kind: EventStarting, Runner: e.name})
		started := time.Now()
		e.set(StateRunning, nil)
		// A runner is user code: its error may be a typed nil whose Error
		// method panics. From here on only a description of it is kept.
		err := safeError(runSafely(ctx, e.r))
		// Tell shutdown from failure by our own ctx, not by the error's type:
		// a runner may return context.Canceled for reasons of its own.
		if ctx.Err() != nil || err == nil || safeIs(err, ErrConsumerClosed) {
			if ctx.Err() != nil && safeIs(err, ErrConsumerClosed) && e.shutdown != nil {
				// The Supervisor's own graceful Shutdown (DrainTimeout)
				// stopped it, so Run says only ErrConsumerClosed: report
				// how the drain went instead (nil when clean, the drain
				// timeout otherwise), as Run does without DrainTimeout.
				err = safeError(<-e.shutdown)
				if safeIs(err, ErrConsumerClosed) {
					err = nil // it was closed already
				}
			}
			e.set(StateStopped, nil)
			if err != nil && ctx.Err() == nil {
				log.Info("queuekit: runner stopped", "error", err)
			}
			s.emit(Event{Kind: EventStopped, Runner: e.name, Err: err})
			return
		}
		e.set(StateFailed, err)
		s.emit(Event{Kind: EventFailed, Runner: e.name, Err: err})
		if pe, ok := err.(*PanicError); ok {
			log.Error("queuekit: runner panicked", "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
		}
		if safeIsFatal(err) {
			log.Error("queuekit: runner failed fatally; stopping the supervisor", "error", err)
			fatal(broker.Fatal(fmt.Errorf("runner %s: %w", e.name, err)))
			return
		}
		if bo == nil || time.Since(started) >= s.restartReset() {
			bo = s.newRestartBackOff()
		}
		d := nextBackOff(bo)
		if d == backoff.Stop {
			log.Error("queuekit: runner failed; restart policy gave up", "error", err)
			e.set(StateStopped, err)
			s.emit(Event{Kind: EventStopped, Runner: e.name, Err: err})
			return
		}
		e.mu.Lock()
		e.restarts++
		n := e.restarts
		e.mu.Unlock()
		log.Warn("queuekit: runner failed; restarting", "error", err, "delay", d, "restarts", n)
		s.emit(Event{Kind: EventRestarting, Runner: e.name, Err: err, Delay: d, Restarts: n})
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			e.set(StateStopped, nil)
			s.emit(Event{Kind: EventStopped, Runner: e.name})
			return
		}
	}
}

// Health returns a snapshot of every runner's state. A runner the Supervisor
// considers running reports its own finer state (paused, draining,
// reconnecting) when it implements State() State, as *Consumer does.
func (s *Supervisor) Health() Health {
	s.mu.Lock()
	entries := s.entries
	s.mu.Unlock()
	h := Health{Ready: len(entries) > 0, Runners: make([]RunnerHealth, 0, len(entries))}
	for _, e := range entries {
		e.mu.Lock()
		rh := RunnerHealth{Name: e.name, State: e.state, Since: e.since, Restarts: e.restarts}
		if e.lastErr != nil {
			rh.LastError = errorText(e.lastErr)
		}
		e.mu.Unlock()
		if st, ok := e.r.(stater); ok && rh.State == StateRunning {
			rh.State = stateOf(st)
		}
		if rh.State != StateRunning {
			h.Ready = false
		}
		h.Runners = append(h.Runners, rh)
	}
	return h
}

// Pause stops the intake of the named runner without losing messages (see
// Consumer.Pause). It returns ErrUnknownRunner or ErrNotPausable.
func (s *Supervisor) Pause(ctx context.Context, name string) error {
	p, err := s.pauser(name)
	if err != nil {
		return err
	}
	return p.Pause(ctx)
}

// Resume restarts the intake of a runner paused with Pause.
func (s *Supervisor) Resume(ctx context.Context, name string) error {
	p, err := s.pauser(name)
	if err != nil {
		return err
	}
	return p.Resume(ctx)
}

func (s *Supervisor) pauser(name string) (pauser, error) {
	s.mu.Lock()
	e := s.byName[name]
	s.mu.Unlock()
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRunner, name)
	}
	p, ok := e.r.(pauser)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotPausable, name)
	}
	return p, nil
}

func (s *Supervisor) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.events == nil {
		return
	}
	select {
	case s.events <- ev:
	default: // the hook is behind: drop rather than stall a consumer
	}
}

func (s *Supervisor) deliver(events <-chan Event, done chan<- struct{}) {
	defer close(done)
	for ev := range events {
		if p := callHook(s.OnEvent, ev); p != nil {
			s.logger().Error("queuekit: supervisor OnEvent hook panicked; the event is lost to it, nothing else",
				"event", ev.Kind.String(), "runner", ev.Runner, "panic", fmt.Sprint(p))
		}
	}
}

func (s *Supervisor) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// finalShutdownTimeout bounds the Shutdown of a runner that is no longer
// running (it only closes what the runner holds).
func (s *Supervisor) finalShutdownTimeout() time.Duration {
	if s.DrainTimeout > 0 {
		return s.DrainTimeout
	}
	return 5 * time.Second
}

func (s *Supervisor) restartReset() time.Duration {
	if s.RestartReset > 0 {
		return s.RestartReset
	}
	return time.Minute
}

func (s *Supervisor) newRestartBackOff() (bo backoff.BackOff) {
	if s.Restart != nil {
		defer func() {
			if p := recover(); p != nil {
				s.logger().Error("queuekit: supervisor Restart policy panicked; using the default", "panic", fmt.Sprint(p))
				bo = nil
			}
			if bo == nil {
				bo = &equalJitter{next: 100 * time.Millisecond, max: 30 * time.Second}
			}
		}()
		return s.Restart.NewBackOff()
	}
	return &equalJitter{next: 100 * time.Millisecond, max: 30 * time.Second}
}

// runSafely runs r, turning a panic into a *PanicError: a runner is user
// code, and a panic in it is a failure of that runner (restarted like any
// other), never the death of the process.
func runSafely(ctx context.Context, r Runner) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return r.Run(ctx)
}

// nextBackOff is bo.NextBackOff(); a policy that panics waits a second.
func nextBackOff(bo backoff.BackOff) time.Duration {
	return guarded(time.Second, bo.NextBackOff)
}

// stateOf is st.State(); a State method that panics reports StateFailed.
func stateOf(st stater) State { return guarded(StateFailed, st.State) }

// equalJitter doubles a ceiling up to max and draws each delay from
// [ceiling/2, ceiling], so delays never shrink between consecutive failures.
type equalJitter struct {
	next, max time.Duration
}

func (b *equalJitter) NextBackOff() time.Duration {
	c := b.next
	b.next = min(2*b.next, b.max)
	return c/2 + time.Duration(rand.Int64N(int64(c/2)+1))
}

func (b *equalJitter) Reset() {}
