package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// A Consumer takes deliveries from a Source, runs a Handler on each with
// bounded concurrency (or, made with NewBatch, a BatchHandler on batches of
// them), and settles every delivery according to the result:
// nil → Ack; a permanent error (retry.Permanent) → DeadLetter at once; any
// other error → Requeue, until the delivery budget (WithMaxDeliveries) is
// spent, then DeadLetter with the reason in the message headers.
//
// A Consumer is safe for concurrent use. Its methods may be called from any
// goroutine; Run must not be called twice at once.
//
// # Lifecycle
//
// Run blocks until ctx is done, Shutdown or Close is called, or the source
// fails. Stopping is graceful: intake stops first (deliveries received but not
// started are given back), in-flight handlers finish within the drain timeout,
// and at the deadline their contexts are cancelled with cause ErrDrainTimeout
// and their messages given back to be redelivered. Run then closes the source.
// When Run returns because the source failed, the source is left open and Run
// may be called again (a Supervisor does so, with backoff).
//
// A handler that ignores its context cannot be stopped: Go has no way to kill
// a goroutine. At the drain deadline its message is given back and its result,
// whenever it comes, is dropped; Run returns without waiting for it.
type Consumer struct {
	src   broker.Source
	h     Handler    // nil for a batch consumer
	batch *batchMode // a batch consumer's handler and settings (NewBatch), or nil
	o     options
	ident atomic.Pointer[identity]    // the name and logger; Supervisor.Add (Attach) replaces them
	sup   atomic.Pointer[func(Event)] // the Supervisor's event sink, if any

	backlog backlogCache // the source's backlog, asked at most every BacklogInterval (backlog.go)

	gate    gate               // how many workers take deliveries (gate.go)
	limiter concurrencyLimiter // WithAdaptiveConcurrency's, or nil
	ks      *killSwitch        // WithKillSwitch's, or nil (killswitch.go)

	pmu    sync.Mutex // serialises Pause and Resume, source calls included
	mu     sync.Mutex
	cur    *run // the Run in progress, or nil
	closed bool // no Run may start: Shutdown/Close called, or a Run stopped for good
	paused bool // by Pause
	// tripped: the kill switch holds the intake stopped. The intake is
	// open iff !paused && !tripped. Written under pmu and mu.
	tripped bool
	// srcPaused: the source was last told to pause (paused || tripped as
	// last applied). Guarded by pmu.
	srcPaused bool
	stats     Stats // the counters of the finished Runs (see Stats); guarded by mu
}

// New returns a Consumer that handles deliveries from src with h.
// It returns an error wrapping ErrInvalidConfig when src or h is nil or an
// option is out of range.
func New(src broker.Source, h Handler, opts ...Option) (*Consumer, error) {
	if isNil(h) {
		if isNil(src) {
			return nil, fmt.Errorf("%w: nil source", broker.ErrInvalidConfig)
		}
		return nil, fmt.Errorf("%w: nil handler", broker.ErrInvalidConfig)
	}
	return newConsumer(src, h, nil, opts)
}

// newConsumer is New, and NewBatch with bm (then h is nil).
func newConsumer(src broker.Source, h Handler, bm *batchMode, opts []Option) (*Consumer, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if isNil(src) {
		return nil, fmt.Errorf("%w: nil source", broker.ErrInvalidConfig)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.build()
	if bm != nil && hasMiddleware(o.middleware) {
		return nil, fmt.Errorf("%w: WithMiddleware wraps a per-message Handler, not a BatchHandler", broker.ErrInvalidConfig)
	}
	if bm == nil {
		var err error
		if h, err = wrap(h, o.middleware); err != nil {
			return nil, err
		}
	}
	c := &Consumer{src: src, h: h, batch: bm, o: o}
	c.gate.init(o.concurrency)
	if o.killSwitch != nil {
		c.ks = newKillSwitch(*o.killSwitch)
	}
	if o.newLimiter != nil {
		l, err := o.newLimiter(o.concurrency)
		if err != nil {
			return nil, err
		}
		c.limiter = l
		c.gate.setLimit(l.limit())
	}
	c.setName(o.name)
	if es, ok := src.(broker.EventSource); ok {
		es.SetEventHook(c.emitSource)
	}
	return c, nil
}

// wrap applies mw to h as Chain does, checking each step: a middleware that
// panics or returns a nil handler is a configuration error, not a panic on
// the first message.
func wrap(h Handler, mw []Middleware) (_ Handler, err error) {
	for i := len(mw) - 1; i >= 0; i-- {
		if mw[i] == nil {
			continue
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("%w: middleware %d of WithMiddleware panicked: %v", broker.ErrInvalidConfig, i, p)
				}
			}()
			h = mw[i](h)
		}()
		if err != nil {
			return nil, err
		}
		if isNil(h) {
			return nil, fmt.Errorf("%w: middleware %d of WithMiddleware returned a nil handler", broker.ErrInvalidConfig, i)
		}
	}
	return h, nil
}

// isNil reports whether v is nil or an interface holding a nil pointer or func
// (a typed nil such as (*memory.Source)(nil) or HandlerFunc(nil)), which
// would panic on first use.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Func, reflect.Map, reflect.Chan, reflect.Interface, reflect.Slice:
		return rv.IsNil()
	}
	return false
}

// Name returns the consumer's name: the name Supervisor.Add added it under,
// else WithName's.
func (c *Consumer) Name() string { return c.name() }

// identity is a consumer's name and the logger that carries it. It is
// replaced as a whole, so that events a source emits while Supervisor.Add
// renames the consumer read one or the other, never half of each.
type identity struct {
	name string
	log  *slog.Logger
}

// setName makes name the consumer's name, for its logs too.
func (c *Consumer) setName(name string) {
	log := c.o.logger
	if log == nil {
		log = slog.Default()
	}
	c.ident.Store(&identity{name: name, log: log.With("consumer", name)})
}

func (c *Consumer) name() string         { return c.ident.Load().name }
func (c *Consumer) logger() *slog.Logger { return c.ident.Load().log }

// Run takes and handles deliveries until ctx is done, Shutdown or Close is
// called, or the source fails, and then drains (see Lifecycle).
//
// If ctx is already done, Run takes nothing: it closes the source and
// returns nil at once.
//
// It returns nil after a clean stop on ctx; an error wrapping ErrDrainTimeout
// when handlers had to be abandoned; an error saying so when the source's
// Close failed (a final commit the broker refused: what was settled since
// the last commit may be delivered again); ErrConsumerClosed after Shutdown
// or Close (also when Run is called after them); or the source's error.
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrConsumerClosed
	case c.cur != nil:
		c.mu.Unlock()
		return ErrAlreadyRunning
	}
	if ctx.Err() != nil {
		// A context that is already done means "take nothing": starting the
		// workers first would let them receive (and handle) deliveries
		// before the run noticed. Stop as a run on ctx would.
		c.closed = true
		c.mu.Unlock()
		c.stopKillSwitch()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopGrace)
		defer cancel()
		c.closeSource(cctx)
		c.emit(Event{Kind: EventStopped})
		return nil
	}
	r := newRun(c, ctx)
	c.cur = r
	c.mu.Unlock()

	c.ksRunStarts()
	err := r.run(ctx)
	defer r.release()
	c.ksRunEnds()

	c.mu.Lock()
	c.foldStats(r)
	c.cur = nil
	if err == nil || ctx.Err() != nil || r.closing.Load() {
		c.closed = true
	}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		c.stopKillSwitch()
		// Bounded by what is left of the drain budget, plus stopGrace.
		if cerr := c.closeSource(r.hard); cerr != nil {
			// A final commit that failed, or a Close cut short: what was
			// settled may be delivered again. Not a loss, but not clean.
			r.closeErr = fmt.Errorf("queuekit: consumer %s: close source: %w", c.name(), cerr)
			if err == nil {
				err = r.closeErr
			}
		}
		c.emit(Event{Kind: EventStopped, Err: r.closeErr})
	}
	close(r.done)
	if r.closing.Load() {
		// Like net/http after Shutdown: the stop was asked for, the drain
		// outcome is Shutdown's to report.
		err = ErrConsumerClosed
	}
	return err
}

// Shutdown stops the consumer gracefully, like net/http's Server.Shutdown:
// it stops intake, waits for in-flight handlers to finish, closes the source
// (which commits what was settled, where the broker needs that) and returns
// nil, or an error saying the source's Close failed (a final commit the
// broker refused: what was settled since the last commit may be delivered
// again). ctx alone bounds it: when ctx is done first, the handlers still
// running are cancelled with cause ErrDrainTimeout and their messages left to
// be redelivered, the source is closed without waiting for the broker any
// longer, and Shutdown returns ctx.Err() about stopGrace (100 ms) later, for
// settlements in progress and the source's Close to give up (the bound
// holds for a source whose Close honours its ctx, as broker.Source
// requires). The consumer's WithDrainTimeout does not apply to Shutdown;
// with a ctx that is never done, Shutdown waits for every handler, as
// net/http waits for every connection.
// Run returns ErrConsumerClosed. Shutdown is idempotent.
func (c *Consumer) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	r := c.cur
	c.mu.Unlock()
	if r == nil {
		c.stopKillSwitch()
		return c.closeSource(ctx)
	}
	r.requestStop(true)
	stop := context.AfterFunc(ctx, func() { r.endBudget(ErrDrainTimeout) })
	<-r.done
	if !stop() {
		// ctx ended before Run was done: whatever it cut short (handlers,
		// a final ack, the source's Close) is left to be redelivered.
		return ctx.Err()
	}
	if r.abandoned == 0 && r.closeErr != nil {
		return r.closeErr
	}
	if r.abandoned > 0 {
		switch cause := context.Cause(r.budget); {
		case errors.Is(cause, ErrConsumerClosed):
			// Close abandoned them, while this Shutdown waited.
			return fmt.Errorf("queuekit: consumer %s: %d handlers abandoned by Close: %w", c.name(), r.abandoned, ErrConsumerClosed)
		default:
			// Run's context ended first, and with it the WithDrainTimeout
			// budget (or another Shutdown's ctx).
			return fmt.Errorf("queuekit: consumer %s: %d handlers abandoned: %w", c.name(), r.abandoned, ErrDrainTimeout)
		}
	}
	return nil
}

// Close stops the consumer at once: intake stops, running handlers are
// cancelled (cause ErrConsumerClosed) and their messages given back to be
// redelivered, and the source is closed with stopGrace (100 ms) for what it
// does on close. Nothing unsettled is acknowledged. Close is idempotent.
func (c *Consumer) Close() error {
	c.mu.Lock()
	c.closed = true
	r := c.cur
	c.mu.Unlock()
	if r == nil {
		c.stopKillSwitch()
		ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
		defer cancel()
		return c.closeSource(ctx)
	}
	r.requestStop(true)
	r.endBudget(ErrConsumerClosed)
	<-r.done
	return nil
}

// stopGrace is how long the stop goes on once the drain budget is spent:
// settlements in progress and the source's Close (a final commit, a group
// leave) get that much more, then are given up. What they did not finish
// the broker delivers again.
const stopGrace = 100 * time.Millisecond

// closeSource closes the source, bounded by ctx, and logs and returns a
// failure; a Close that panics (a broken adapter) is a failure too.
func (c *Consumer) closeSource(ctx context.Context) error {
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("queuekit: closing a %T source panicked: %v", c.src, p)
			}
		}()
		return c.src.Close(ctx)
	}()
	if err != nil {
		err = safeError(err)
		c.logger().Warn("queuekit: closing source", "error", err)
	}
	return err
}

// Pause stops intake without stopping the consumer: handlers already running
// finish and are settled, no new delivery is taken until Resume. If the source
// implements Pauser it is paused too (a RabbitMQ subscription is cancelled,
// so prefetched messages go back to the queue). Pausing a paused consumer does
// nothing. A consumer paused before Run starts paused.
func (c *Consumer) Pause(ctx context.Context) error {
	changed, err := c.pause(ctx)
	if changed {
		// Outside pmu: a hook may call Resume (or Pause) on this consumer.
		c.emit(Event{Kind: EventPaused, Err: err})
	}
	return err
}

func (c *Consumer) pause(ctx context.Context) (changed bool, err error) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.mu.Lock()
	if c.paused {
		c.mu.Unlock()
		return false, nil
	}
	c.paused = true
	if r := c.cur; r != nil && !c.tripped {
		r.setIntake(pausedIntake())
	}
	c.mu.Unlock()
	return true, c.pauseSource(ctx)
}

// pauseSource pauses the source, if it is a Pauser and not paused yet (a
// tripped kill switch may have paused it). The caller holds pmu, not mu: a
// source may emit events (and hooks may call State) while it pauses, and a
// network round trip must not block Health.
func (c *Consumer) pauseSource(ctx context.Context) error {
	if c.srcPaused {
		return nil
	}
	c.srcPaused = true
	if p, ok := c.src.(broker.Pauser); ok {
		if err := p.Pause(ctx); err != nil {
			return fmt.Errorf("queuekit: pause source: %w", err)
		}
	}
	return nil
}

// Resume restarts intake after Pause. Resuming a running consumer does nothing.
// If the source fails to resume, the consumer stays paused and Resume returns
// the error. While the kill switch is tripped (WithKillSwitch), Resume only
// clears the pause: the intake reopens when the switch probes.
func (c *Consumer) Resume(ctx context.Context) error {
	resumed, err := c.resume(ctx)
	if resumed {
		// Outside pmu: a hook may call Pause (or Resume) on this consumer.
		c.emit(Event{Kind: EventResumed})
	}
	return err
}

func (c *Consumer) resume(ctx context.Context) (bool, error) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.mu.Lock()
	paused := c.paused
	c.mu.Unlock()
	if !paused {
		return false, nil
	}
	if err := c.openIntakeLocked(ctx, true); err != nil {
		return false, err
	}
	return true, nil
}

// openIntakeLocked opens the intake unless the consumer is paused or its
// kill switch tripped: it waits for the give-backs of the stopped intake,
// resumes the source, then hands the workers an open intake. resuming is
// Resume's call: it clears the pause, once the source resumed (when that
// fails the consumer stays paused), or at once when the kill switch holds
// the intake stopped anyway. The caller holds pmu.
func (c *Consumer) openIntakeLocked(ctx context.Context, resuming bool) error {
	c.mu.Lock()
	paused, tripped, r := c.paused && !resuming, c.tripped, c.cur
	if tripped && resuming {
		c.paused = false
	}
	c.mu.Unlock()
	if paused || tripped {
		return nil
	}
	if r != nil {
		r.awaitGiveBacks(ctx)
	}
	if c.srcPaused {
		if p, ok := c.src.(broker.Pauser); ok {
			// Resume the source before the workers, so that they find it subscribed.
			if err := p.Resume(ctx); err != nil {
				return fmt.Errorf("queuekit: resume source: %w", err)
			}
		}
		c.srcPaused = false
	}
	c.mu.Lock()
	if resuming {
		c.paused = false
	}
	if r := c.cur; r != nil && !c.paused && !c.tripped && r.cur.Load().wake != nil {
		r.setIntake(r.openIntake())
	}
	c.mu.Unlock()
	return nil
}

// State reports the consumer's state: StateRunning while it takes deliveries
// (a probing kill switch included); StatePaused, StateTripped (its kill
// switch stopped intake), StateDraining, StateStalled (a settlement the
// broker does not take is being tried again) or StateReconnecting (its
// source reports no connection) when it does not; StateStarting before Run
// and StateStopped after the last Run.
func (c *Consumer) State() State {
	c.mu.Lock()
	r, paused, tripped, closed := c.cur, c.paused, c.tripped, c.closed
	c.mu.Unlock()
	switch {
	case r == nil && closed:
		return StateStopped
	case r == nil && paused:
		return StatePaused
	case r == nil && tripped:
		return StateTripped
	case r == nil:
		return StateStarting
	case r.stopping.Load():
		return StateDraining
	case r.stalled.Load() > 0:
		return StateStalled
	case paused:
		return StatePaused
	case tripped:
		return StateTripped
	}
	if sr, ok := c.src.(broker.StatusReporter); ok && !sourceConnected(sr) {
		return StateReconnecting
	}
	return StateRunning
}

// sourceConnected is sr.Status().Connected; a source whose Status panics
// counts as not connected.
func sourceConnected(sr broker.StatusReporter) bool {
	return guarded(false, func() bool { return sr.Status().Connected })
}

// sourceKinds maps a source's event kinds to the consumer's.
var sourceKinds = [...]EventKind{
	broker.EventConnected:    EventConnected,
	broker.EventReconnecting: EventReconnecting,
	broker.EventCancelled:    EventCancelled,
	broker.EventRebalanced:   EventRebalanced,
}

// emitSource passes a source's event on as the consumer's event of the same
// kind. Kinds this runtime does not know are dropped.
func (c *Consumer) emitSource(e broker.Event) {
	if e.Kind <= 0 || int(e.Kind) >= len(sourceKinds) {
		return
	}
	c.emit(Event{Kind: sourceKinds[e.Kind], Err: e.Err, Time: e.Time})
}

func (c *Consumer) emit(e Event) {
	if e.Runner == "" {
		e.Runner = c.name()
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	c.callHook(e)
	if f := c.sup.Load(); f != nil {
		(*f)(e)
	}
}

// callHook passes e to the consumer's own hooks (WithEventHook), if any,
// logging a panic instead of passing it on.
func (c *Consumer) callHook(e Event) {
	if c.o.hook != nil {
		if p := callHook(c.o.hook, e); p != nil {
			c.logger().Error("queuekit: event hook panicked; the event is lost to it, nothing else", "event", e.Kind.String(), "panic", fmt.Sprint(p))
		}
	}
}
