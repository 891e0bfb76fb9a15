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

// A Runner is anything a Supervisor can run: a *Consumer, a RunnerFunc, a
// health.Watchdog. Run must return when ctx is done.
//
// A Runner may implement more, and the Supervisor uses what it finds:
// Supervised (takes the name it is added under, shares its events),
// Shutdown(ctx) error (a graceful stop the Supervisor calls once the runner
// will not run again), State() State (its finer state in Health),
// broker.Pauser (Supervisor.Pause and Resume) and
// Backlog(ctx) (broker.Backlog, error) (Supervisor.Backlog). *Consumer
// implements them all.
//
// A runner that returns an error wrapping ErrAlreadyRunning (a *Consumer
// that is also run by hand) fails fatally: restarting cannot fix it.
type Runner interface {
	Run(ctx context.Context) error
}

// RunnerFunc adapts a function to a Runner.
type RunnerFunc func(ctx context.Context) error

// Run calls f(ctx).
func (f RunnerFunc) Run(ctx context.Context) error { return f(ctx) }

// A Supervised runner takes part in its Supervisor's naming and events.
// *Consumer is one; a runner of another kind implements it to get the same.
type Supervised interface {
	Runner
	// Attach is called by Supervisor.Add, once, before the runner's first
	// Run. The runner takes name, the name it is added under, as its own
	// for its logs, metrics and events, and from then on passes each of its
	// events to emit, which never blocks (the Supervisor queues them for
	// its OnEvent hook). The Supervisor reports the runner's stops itself:
	// an EventStopped passed to emit is dropped.
	//
	// Attach may call emit before it returns; it must not call the
	// Supervisor's methods (Add holds the Supervisor's lock).
	//
	// Attach returns the runner's own event hook, or nil: the Supervisor
	// calls it with its events about the runner (EventStarting,
	// EventFailed, EventRestarting, and EventStopped when the Supervisor
	// stops a runner that is not running: in its restart delay, or when the
	// restart policy gave up), synchronously, so that hooks set on the
	// runner see its whole life; it must not block. An error from Attach
	// fails Add.
	Attach(name string, emit func(Event)) (hook func(Event), err error)
}

type shutdowner interface {
	Shutdown(ctx context.Context) error
}

type stater interface {
	State() State
}

// A Supervisor runs a set of named runners tied to one context, restarts the
// ones that fail, reports their health, and stops them all gracefully.
//
// The zero value is ready to use; the exported fields may be set before Run and
// must not be changed after. A Supervisor is safe for concurrent use: Health,
// Backlog, Pause and Resume may be called from any goroutine while Run runs.
// Run may be called once.
//
// A runner that returns an error while the Supervisor's context is live is
// restarted after a delay that grows with each consecutive failure (with
// jitter) and decays back to the shortest once the runner stayed up for
// RestartReset. A runner failing with an error for which IsFatal is true (such
// as invalid configuration) is not restarted: the Supervisor stops every
// runner and Run returns that error. A runner that returns nil is done.
//
// # Names
//
// Add names a runner once for everything: a Supervised runner (a *Consumer)
// takes the name as its own, so that its logs, events, metrics labels and
// health entry all say "orders" for a consumer added as "orders", whatever
// its WithName.
//
// # Stopping
//
// When Run's context is done, the Supervisor cancels the context it passed
// to every runner's Run and waits for them. Each consumer then drains as its
// own Run does on a cancelled context: within its drain timeout
// (WithDrainTimeout), after which its remaining handlers are abandoned and
// their messages given back. That is the one drain budget of a supervised
// consumer; set it per consumer, below the platform's grace period (a
// Kubernetes terminationGracePeriodSeconds). To stop a single consumer with
// a deadline of the caller's, call its Shutdown(ctx).
//
// The Supervisor installs no signal handlers: pass Run a context from
// signal.NotifyContext.
type Supervisor struct {
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

	// evMu guards events, apart from mu: emit may be called from inside a
	// runner's Attach, which Add calls holding mu.
	evMu   sync.Mutex
	events chan Event // non-nil while Run delivers events
}

type entry struct {
	name string
	r    Runner
	hook func(Event) // the runner's own event hook (Supervised.Attach), or nil

	// backlog guards and rate-limits the Backlog method of a runner other
	// than a *Consumer (whose Backlog has a cache of its own).
	backlog backlogCache

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

// Add registers a runner under a unique name, before Run. A Supervised
// runner (a *Consumer) is attached: it takes name as its own, for its logs,
// events, metrics and health, and shares its events with the Supervisor
// (see Supervised). A runner must be added before it first runs, and to one
// Supervisor only.
//
// A name must be non-empty, valid UTF-8 and free of control characters: it
// becomes a log attribute, a metrics label value and a health report key.
//
// Add returns an error wrapping broker.ErrInvalidConfig for a nil runner, an
// invalid or duplicate name, or a runner whose Attach fails, whatever its
// error (a *Consumer that is running, stopped, or added already); and an
// error when Run has started.
func (s *Supervisor) Add(name string, r Runner) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r == nil:
		return fmt.Errorf("%w: nil runner %q", broker.ErrInvalidConfig, name)
	case checkName(name) != nil:
		return fmt.Errorf("queuekit: supervisor: Add: %w", checkName(name))
	case s.byName[name] != nil:
		return fmt.Errorf("%w: duplicate runner name %q", broker.ErrInvalidConfig, name)
	case s.started:
		return fmt.Errorf("queuekit: supervisor: Add(%q) after Run", name)
	}
	if s.byName == nil {
		s.byName = make(map[string]*entry)
	}
	e := &entry{name: name, r: r, state: StateStarting, since: time.Now()}
	if sr, ok := r.(Supervised); ok {
		hook, err := attach(sr, name, func(ev Event) {
			if ev.Kind == EventStopped {
				return // the Supervisor reports its runners' stops itself
			}
			ev.Runner = name
			s.emit(ev)
		})
		switch {
		case err != nil && errors.Is(err, broker.ErrInvalidConfig):
			return fmt.Errorf("queuekit: supervisor: Add(%q): %w", name, err)
		case err != nil:
			return fmt.Errorf("%w: supervisor: Add(%q): %w", broker.ErrInvalidConfig, name, safeError(err))
		}
		e.hook = hook
	}
	s.entries = append(s.entries, e)
	s.byName[name] = e
	return nil
}

// attach calls sr.Attach, turning a panic (a runner is user code) into an
// error.
func attach(sr Supervised, name string, emit func(Event)) (hook func(Event), err error) {
	defer func() {
		if p := recover(); p != nil {
			hook, err = nil, fmt.Errorf("%w: Attach of %T panicked: %v", broker.ErrInvalidConfig, sr, p)
		}
	}()
	return sr.Attach(name, emit)
}

// Run starts every runner and supervises them until ctx is done or a runner
// fails fatally. It then stops them all — each consumer drains within its
// own drain timeout (see Stopping) — and returns only when every runner and
// every goroutine Run started has returned.
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
		events := make(chan Event, 1024)
		evDone = make(chan struct{})
		go s.deliver(events, evDone)
		s.evMu.Lock()
		s.events = events
		s.evMu.Unlock()
	}
	s.mu.Unlock()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.supervise(ctx, cancel, e)
		}()
	}

	wg.Wait()

	if evDone != nil {
		s.evMu.Lock()
		close(s.events)
		s.events = nil
		s.evMu.Unlock()
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
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalShutdownTimeout)
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
		s.emitFor(e, Event{Kind: EventStarting, Runner: e.name})
		started := time.Now()
		e.set(StateRunning, nil)
		// A runner is user code: its error may be a typed nil whose Error
		// method panics. From here on only a description of it is kept.
		err := safeError(runSafely(ctx, e.r))
		// Tell shutdown from failure by our own ctx, not by the error's type:
		// a runner may return context.Canceled for reasons of its own.
		if ctx.Err() != nil || err == nil || safeIs(err, ErrConsumerClosed) {
			e.set(StateStopped, nil)
			if err != nil && ctx.Err() == nil {
				log.Info("queuekit: runner stopped", "error", err)
			}
			s.emit(Event{Kind: EventStopped, Runner: e.name, Err: err})
			return
		}
		e.set(StateFailed, err)
		s.emitFor(e, Event{Kind: EventFailed, Runner: e.name, Err: err})
		if pe, ok := err.(*PanicError); ok {
			log.Error("queuekit: runner panicked", "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
		}
		if safeIsFatal(err) || safeIs(err, ErrAlreadyRunning) {
			// ErrAlreadyRunning: the runner (a *Consumer) is also run by
			// someone else; restarting it cannot fix that.
			log.Error("queuekit: runner failed fatally; stopping the supervisor", "error", err)
			// It will not run again, and is not running to report its stop:
			// its hook and OnEvent hear it from here, as for a policy that
			// gave up. Its health stays "failed", with the error.
			s.emitFor(e, Event{Kind: EventStopped, Runner: e.name, Err: err})
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
			// The runner is not running to report its stop: its hook hears
			// it from here.
			s.emitFor(e, Event{Kind: EventStopped, Runner: e.name, Err: err})
			return
		}
		e.mu.Lock()
		e.restarts++
		n := e.restarts
		e.mu.Unlock()
		log.Warn("queuekit: runner failed; restarting", "error", err, "delay", d, "restarts", n)
		s.emitFor(e, Event{Kind: EventRestarting, Runner: e.name, Err: err, Delay: d, Restarts: n})
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			e.set(StateStopped, nil)
			s.emitFor(e, Event{Kind: EventStopped, Runner: e.name})
			return
		}
	}
}

// Health returns a snapshot of every runner's state. A runner the Supervisor
// considers running reports its own finer state (paused, tripped, draining,
// reconnecting) when it implements State() State, as *Consumer does. A
// consumer whose kill switch is tripped or probing says why in Reason; a
// tripped one is not ready, but it has not failed: the Supervisor leaves it
// to probe, and does not restart it.
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
		if c, ok := e.r.(*Consumer); ok && c != nil {
			rh.Reason = c.healthReason()
			if rh.State == StateTripped {
				if st := c.KillSwitch(); st.State == "open" {
					rh.Since = st.Since // when it tripped, not when Run started
				}
			}
		}
		if rh.State != StateRunning {
			h.Ready = false
		}
		h.Runners = append(h.Runners, rh)
	}
	return h
}

// Pause stops the intake of the named runner without losing messages (see
// Consumer.Pause). The runner must implement broker.Pauser, as *Consumer
// does. It returns errors wrapping ErrUnknownRunner or ErrNotPausable.
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

func (s *Supervisor) pauser(name string) (broker.Pauser, error) {
	r, err := s.runner(name)
	if err != nil {
		return nil, err
	}
	p, ok := r.(broker.Pauser)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotPausable, name)
	}
	return p, nil
}

func (s *Supervisor) runner(name string) (Runner, error) {
	s.mu.Lock()
	e := s.byName[name]
	s.mu.Unlock()
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRunner, name)
	}
	return e.r, nil
}

// Backlog reports what waits at the broker for the named runner: its
// Backlog method's answer (Consumer.Backlog, rate-limited and shared by all
// callers). It returns an error wrapping ErrUnknownRunner for a name that
// was never added, and one wrapping ErrNoBacklog for a runner without a
// Backlog method or whose source reports none. Package health's full report
// and promqueuekit's backlog collector read it for every runner.
//
// The Backlog method of a runner other than a *Consumer is called as
// Consumer.Backlog calls its source's: at most once per BacklogInterval
// (once a second after an error), one call at a time, each bounded by 2 s;
// a panic in it is returned as an error, and Backlog returns when ctx is
// done even if the method does not.
func (s *Supervisor) Backlog(ctx context.Context, name string) (broker.Backlog, error) {
	s.mu.Lock()
	e := s.byName[name]
	s.mu.Unlock()
	if e == nil {
		return broker.Backlog{}, fmt.Errorf("%w: %q", ErrUnknownRunner, name)
	}
	switch r := e.r.(type) {
	case *Consumer:
		if r == nil {
			break
		}
		return r.Backlog(ctx) // guarded and cached by the consumer
	case broker.BacklogReporter:
		return e.backlog.get(ctx, r)
	}
	return broker.Backlog{}, fmt.Errorf("%w: runner %q (%T) has no Backlog method", ErrNoBacklog, name, e.r)
}

// emitFor reports one of the Supervisor's events about runner e (starting,
// failed, restarting): to the runner's own hook (Supervised.Attach) and to
// OnEvent.
func (s *Supervisor) emitFor(e *entry, ev Event) {
	ev.Time = time.Now()
	if e.hook != nil {
		if p := callHook(e.hook, ev); p != nil {
			s.logger().Error("queuekit: runner event hook panicked; the event is lost to it, nothing else",
				"event", ev.Kind.String(), "runner", e.name, "panic", fmt.Sprint(p))
		}
	}
	s.emit(ev)
}

func (s *Supervisor) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	s.evMu.Lock()
	defer s.evMu.Unlock()
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
// running: it only closes what the runner holds (a source left open by a
// failed Run).
const finalShutdownTimeout = 5 * time.Second

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
