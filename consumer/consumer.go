package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// A Consumer takes deliveries from a Source, runs a Handler on each with
// bounded concurrency, and settles every delivery according to the result:
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
	src broker.Source
	h   Handler
	o   options
	log *slog.Logger
	sup atomic.Pointer[func(Event)] // the Supervisor's event sink, if any

	backlog backlogCache // the source's backlog, asked at most every BacklogInterval (backlog.go)

	pmu    sync.Mutex // serialises Pause and Resume, source calls included
	mu     sync.Mutex
	cur    *run // the Run in progress, or nil
	closed bool // no Run may start: Shutdown/Close called, or a Run stopped for good
	paused bool
}

// New returns a Consumer that handles deliveries from src with h.
// It returns an error wrapping ErrInvalidConfig when src or h is nil or an
// option is out of range.
func New(src broker.Source, h Handler, opts ...Option) (*Consumer, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if isNil(src) {
		return nil, fmt.Errorf("%w: nil source", broker.ErrInvalidConfig)
	}
	if isNil(h) {
		return nil, fmt.Errorf("%w: nil handler", broker.ErrInvalidConfig)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.build()
	if len(o.middleware) > 0 {
		h = Chain(o.middleware...)(h)
		if isNil(h) {
			return nil, fmt.Errorf("%w: middleware returned a nil handler", broker.ErrInvalidConfig)
		}
	}
	c := &Consumer{src: src, h: h, o: o, log: o.logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("consumer", o.name)
	if es, ok := src.(broker.EventSource); ok {
		es.SetEventHook(c.emitSource)
	}
	return c, nil
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

// Name returns the consumer's name (WithName).
func (c *Consumer) Name() string { return c.o.name }

// Run takes and handles deliveries until ctx is done, Shutdown or Close is
// called, or the source fails, and then drains (see Lifecycle).
//
// If ctx is already done, Run takes nothing: it closes the source and
// returns nil at once.
//
// It returns nil after a clean stop on ctx; an error wrapping ErrDrainTimeout
// when handlers had to be abandoned; ErrConsumerClosed after Shutdown or Close
// (also when Run is called after them); or the source's error.
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
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopGrace)
		defer cancel()
		c.closeSource(cctx)
		c.emit(Event{Kind: EventStopped})
		return nil
	}
	r := newRun(c, ctx)
	c.cur = r
	c.mu.Unlock()

	err := r.run(ctx)
	defer r.release()

	c.mu.Lock()
	c.cur = nil
	if err == nil || ctx.Err() != nil || r.closing.Load() {
		c.closed = true
	}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		// Bounded by what is left of the drain budget, plus stopGrace.
		c.closeSource(r.hard)
		c.emit(Event{Kind: EventStopped})
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
// nil. ctx alone bounds it: when ctx is done first, the handlers still
// running are cancelled with cause ErrDrainTimeout and their messages left to
// be redelivered, the source is closed without waiting for the broker any
// longer, and Shutdown returns ctx.Err() — within stopGrace (100 ms) plus, at
// most, the one settle call each worker may be in (see WithSettleTimeout;
// for a hung broker the source's Close gives up at once). The consumer's
// WithDrainTimeout does not apply to Shutdown; with a ctx that is never done,
// Shutdown waits for every handler, as net/http waits for every connection.
// Run returns ErrConsumerClosed. Shutdown is idempotent.
func (c *Consumer) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	r := c.cur
	c.mu.Unlock()
	if r == nil {
		return c.src.Close(ctx)
	}
	r.requestStop(true)
	stop := context.AfterFunc(ctx, func() { r.endBudget(ErrDrainTimeout) })
	defer stop()
	<-r.done
	switch {
	case ctx.Err() != nil && r.abandoned > 0:
		return ctx.Err()
	case r.abandoned > 0:
		// Run's context ended first, and with it the WithDrainTimeout budget.
		return fmt.Errorf("queuekit: consumer %s: %d handlers abandoned: %w", c.o.name, r.abandoned, ErrDrainTimeout)
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
		ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
		defer cancel()
		return c.src.Close(ctx)
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

// closeSource closes the source, bounded by ctx, and logs a failure.
func (c *Consumer) closeSource(ctx context.Context) {
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("queuekit: closing a %T source panicked: %v", c.src, p)
			}
		}()
		return c.src.Close(ctx)
	}()
	if err != nil {
		c.log.Warn("queuekit: closing source", "error", safeError(err))
	}
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
	if r := c.cur; r != nil {
		r.setIntake(pausedIntake())
	}
	c.mu.Unlock()
	if p, ok := c.src.(broker.Pauser); ok {
		// Outside c.mu: a source may emit events (and hooks may call State)
		// while it pauses, and a network round trip must not block Health.
		if perr := p.Pause(ctx); perr != nil {
			err = fmt.Errorf("queuekit: pause source: %w", perr)
		}
	}
	return true, err
}

// Resume restarts intake after Pause. Resuming a running consumer does nothing.
// If the source fails to resume, the consumer stays paused and Resume returns
// the error.
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
	if r := c.cur; r != nil {
		r.awaitGiveBacks(ctx)
	}
	if p, ok := c.src.(broker.Pauser); ok {
		// Resume the source before the workers, so that they find it subscribed.
		if err := p.Resume(ctx); err != nil {
			return false, fmt.Errorf("queuekit: resume source: %w", err)
		}
	}
	c.mu.Lock()
	c.paused = false
	if r := c.cur; r != nil {
		r.setIntake(r.openIntake())
	}
	c.mu.Unlock()
	return true, nil
}

// State reports the consumer's state: StateRunning while it takes deliveries;
// StatePaused, StateDraining, StateStalled (a settlement the broker does not
// take is being tried again) or StateReconnecting (its source reports no
// connection) when it does not; StateStarting before Run and StateStopped
// after the last Run.
func (c *Consumer) State() State {
	c.mu.Lock()
	r, paused, closed := c.cur, c.paused, c.closed
	c.mu.Unlock()
	switch {
	case r == nil && closed:
		return StateStopped
	case r == nil && paused:
		return StatePaused
	case r == nil:
		return StateStarting
	case r.stopping.Load():
		return StateDraining
	case r.stalled.Load() > 0:
		return StateStalled
	case paused:
		return StatePaused
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
		e.Runner = c.o.name
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if c.o.hook != nil {
		if p := callHook(c.o.hook, e); p != nil {
			c.log.Error("queuekit: event hook panicked; the event is lost to it, nothing else", "event", e.Kind.String(), "panic", fmt.Sprint(p))
		}
	}
	if f := c.sup.Load(); f != nil {
		(*f)(e)
	}
}

// intake is one period of intake: open (ctx live until intake stops),
// paused (wake is closed on resume or stop), or final (stopping for good).
// The current intake is swapped atomically; workers load it once per delivery.
type intake struct {
	ctx     context.Context
	cancel  context.CancelFunc
	stopped atomic.Bool   // set before cancel; a delivery received after it is given back
	wake    chan struct{} // non-nil when paused
	final   bool
}

func pausedIntake() *intake { return &intake{wake: make(chan struct{})} }

// slot states: a worker's delivery is idle, being received (the worker is in
// Receive, or giving back what a Receive returned as intake stopped: Resume
// waits for it, see awaitGiveBacks), being handled, or abandoned by the
// drain deadline (the drain gave it back; the worker must not settle it).
const (
	slotIdle int32 = iota
	slotReceiving
	slotRunning
	slotAbandoned
)

type slot struct {
	state atomic.Int32
	d     broker.Delivery       // written by the worker before state becomes slotRunning
	_     [64 - 4 - 16 - 4]byte // one cache line per slot: workers do not share lines
}

// run is the state of one call to Run.
type run struct {
	c              *Consumer
	base           context.Context // ctx without its cancellation: values only
	handlerCtx     context.Context
	cancelHandlers context.CancelCauseFunc

	cur        atomic.Pointer[intake] // guarded for writes by c.mu
	stopping   atomic.Bool            // intake stopped for good
	closing    atomic.Bool            // stop requested by Shutdown or Close
	abandoning atomic.Bool            // the drain deadline passed

	stopOnce   sync.Once
	stopCh     chan struct{} // closed when the drain must begin
	abandonNow chan struct{} // closed by abandon, after abandoning is set
	done       chan struct{} // closed when Run returns

	// The drain budget: budget is done when the handlers still running
	// must be abandoned (the cause says why: WithDrainTimeout passed after
	// Run's ctx ended, Shutdown's ctx ended, or Close). hard is done
	// stopGrace later: settlements and the source's Close then give up.
	budget    context.Context
	endBudget context.CancelCauseFunc
	hard      context.Context
	endHard   context.CancelFunc
	stopWatch func() bool // stops the watch on budget that arms grace

	timerMu    sync.Mutex
	released   bool        // release ran: arm no timer
	grace      *time.Timer // ends hard, stopGrace after budget ended
	drainTimer *time.Timer // ends budget, WithDrainTimeout after Run's ctx ended

	failOnce sync.Once
	failErr  error // written before stopCh is closed by fail

	slots     []slot
	clock     *settleClock
	wg        sync.WaitGroup // workers not abandoned
	settled   atomic.Int64
	givenBack atomic.Int64
	stalled   atomic.Int64 // workers retrying a settlement the broker did not take
	abandoned int          // written by run before done is closed
}

func newRun(c *Consumer, ctx context.Context) *run {
	r := &run{
		c:          c,
		base:       context.WithValue(context.WithoutCancel(ctx), nameKey{}, c.o.name),
		stopCh:     make(chan struct{}),
		abandonNow: make(chan struct{}),
		done:       make(chan struct{}),
		slots:      make([]slot, c.o.concurrency),
	}
	r.handlerCtx, r.cancelHandlers = context.WithCancelCause(r.base)
	r.budget, r.endBudget = context.WithCancelCause(r.base)
	r.hard, r.endHard = context.WithCancel(r.base)
	r.stopWatch = context.AfterFunc(r.budget, func() {
		r.timerMu.Lock()
		defer r.timerMu.Unlock()
		if !r.released {
			r.grace = time.AfterFunc(stopGrace, r.endHard)
		}
	})
	if c.paused {
		r.cur.Store(pausedIntake())
	} else {
		r.cur.Store(r.openIntake())
	}
	return r
}

func (r *run) openIntake() *intake {
	ctx, cancel := context.WithCancel(r.base)
	return &intake{ctx: ctx, cancel: cancel}
}

// setIntake replaces the current intake and ends the old one. The caller
// holds c.mu. Once the drain installed the final intake, nothing replaces it:
// a Pause or Resume during the drain must not hand workers a new intake.
func (r *run) setIntake(next *intake) {
	if r.cur.Load().final {
		return
	}
	old := r.cur.Swap(next)
	if old.wake != nil {
		close(old.wake)
	}
	if old.cancel != nil {
		old.stopped.Store(true)
		old.cancel()
	}
}

func (r *run) requestStop(closing bool) {
	if closing {
		r.closing.Store(true)
	}
	r.stopOnce.Do(func() { close(r.stopCh) })
}

// startDrainTimer starts the WithDrainTimeout budget, once: Run's ctx ended
// or the source failed. A stop by Shutdown or Close has a budget of its own.
func (r *run) startDrainTimer() {
	r.timerMu.Lock()
	defer r.timerMu.Unlock()
	if !r.released && r.drainTimer == nil {
		r.drainTimer = time.AfterFunc(r.c.o.drainTimeout, func() { r.endBudget(ErrDrainTimeout) })
	}
}

// release stops the run's timers and ends its contexts, once Run is done.
func (r *run) release() {
	r.stopWatch()
	r.timerMu.Lock()
	r.released = true
	if r.grace != nil {
		r.grace.Stop()
	}
	if r.drainTimer != nil {
		r.drainTimer.Stop()
	}
	r.timerMu.Unlock()
	r.endHard()
	r.endBudget(nil)
}

func (r *run) fail(err error) {
	r.failOnce.Do(func() { r.failErr = err })
	r.requestStop(false)
}

func (r *run) run(ctx context.Context) error {
	c := r.c
	r.clock = startSettleClock(r.hard, c.o.settleTimeout)
	defer r.clock.Stop()
	r.wg.Add(len(r.slots))
	for i := range r.slots {
		go r.work(i)
	}
	c.emit(Event{Kind: EventRunning})

	select {
	case <-ctx.Done():
	case <-r.stopCh:
	}
	// The drain budget: WithDrainTimeout from the moment Run's ctx ends (now
	// or later) or the source failed; a Shutdown's ctx or a Close ends it
	// too (see Shutdown and Close).
	stopWatch := context.AfterFunc(ctx, r.startDrainTimer)
	defer stopWatch()
	if !r.closing.Load() {
		r.startDrainTimer()
	}

	// Phase 1: stop intake. Workers blocked in Receive return; a delivery that
	// arrives anyway is given back. In-flight handlers keep their contexts.
	// Snapshot the counters first: a delivery given back because of the stop
	// must count in this drain's report.
	start := time.Now()
	settledBefore, givenBackBefore := r.settled.Load(), r.givenBack.Load()
	c.mu.Lock()
	r.stopping.Store(true)
	r.setIntake(&intake{final: true})
	c.mu.Unlock()
	c.emit(Event{Kind: EventDraining})
	if r.closing.Load() {
		c.log.Info("queuekit: draining", "budget", "the Shutdown context")
	} else {
		c.log.Info("queuekit: draining", "drain_timeout", c.o.drainTimeout)
	}

	allDone := make(chan struct{})
	go func() { r.wg.Wait(); close(allDone) }()

	// Phase 2: wait for in-flight handlers, up to the end of the budget.
	abandoned := 0
	select {
	case <-allDone:
	case <-r.budget.Done():
		abandoned = r.abandon(context.Cause(r.budget))
	}
	// Workers that were settling when the deadline passed finish that
	// settlement (bounded by the settle timeout), then exit; abandoned
	// workers no longer count in r.wg.
	<-allDone
	r.cancelHandlers(ErrConsumerClosed) // no-op if already cancelled; releases resources
	r.abandoned = abandoned

	rep := DrainReport{
		Handled:   int(r.settled.Load() - settledBefore),
		GivenBack: int(r.givenBack.Load() - givenBackBefore),
		Abandoned: abandoned,
		Duration:  time.Since(start),
	}
	c.emit(Event{Kind: EventDrained, Drain: rep})
	c.log.Info("queuekit: drained", "handled", rep.Handled, "given_back", rep.GivenBack,
		"abandoned", rep.Abandoned, "duration", rep.Duration)

	switch {
	case r.failErr != nil:
		return fmt.Errorf("queuekit: consumer %s: %w", c.o.name, r.failErr)
	case abandoned > 0:
		return fmt.Errorf("queuekit: consumer %s: %d handlers abandoned: %w", c.o.name, abandoned, ErrDrainTimeout)
	}
	return nil
}

// abandon cancels the running handlers with cause and gives their messages
// back (phase 3: settlement with a deadline of its own). It returns how many
// handlers it abandoned.
func (r *run) abandon(cause error) int {
	r.abandoning.Store(true)
	close(r.abandonNow)
	// Take every running delivery first, so that each handler still running
	// at the deadline counts as abandoned, then cancel the handlers: their
	// results, however quickly they come, are dropped.
	var taken []broker.Delivery
	for i := range r.slots {
		s := &r.slots[i]
		if !s.state.CompareAndSwap(slotRunning, slotAbandoned) {
			continue
		}
		// The worker no longer counts: it exits, unsettled, whenever its
		// handler returns, and Run does not wait for it.
		r.wg.Done()
		taken = append(taken, s.d)
	}
	r.cancelHandlers(cause)
	ctx, cancel := context.WithTimeout(r.hard, r.c.o.settleTimeout)
	defer cancel()
	for _, d := range taken {
		m := d.Message()
		err := d.Requeue(ctx)
		r.observe(m, SettledAbandon, err)
		if err != nil {
			r.settleFailed(m, "requeue", err)
		}
		r.c.log.Warn("queuekit: handler abandoned at drain deadline; message given back",
			"topic", m.Topic, "message_id", m.ID, "attempt", m.Attempt, "outcome", SettledAbandon.String(), "cause", cause)
	}
	return len(taken)
}

func (r *run) work(i int) {
	for {
		in := r.cur.Load()
		if in.final {
			r.wg.Done()
			return
		}
		if in.wake != nil {
			<-in.wake
			continue
		}
		s := &r.slots[i]
		s.state.Store(slotReceiving)
		d, m, err := r.receive(in.ctx)
		if err != nil {
			s.state.Store(slotIdle)
			if in.ctx.Err() != nil && !safeIsFatal(err) {
				continue // paused or stopping: look at the new intake
			}
			if safeIs(err, broker.ErrSourceClosed) {
				// Someone closed the source under us: restarting cannot help.
				err = broker.Fatal(err)
			}
			r.fail(fmt.Errorf("receive: %w", err))
			r.wg.Done()
			return
		}
		if in.stopped.Load() {
			r.giveBack(d, m)
			s.state.Store(slotIdle)
			continue
		}
		if !r.process(i, d, m) { // process moves the slot from receiving to running
			return // abandoned: the drain already gave the message back and released us
		}
	}
}

// awaitGiveBacks waits, before a Resume, until no worker is still in a
// Receive that began before the Pause or still giving back what such a
// Receive returned. A delivery handed out just as intake stopped is released
// to the broker by its worker; had the source resubscribed first, the broker
// would deliver the messages behind it before the release put it back at
// the head, and order would be lost. The wait is bounded by ctx and by the
// settle timeout: a give-back that the broker does not take is retried
// while the consumer runs, and a hook that calls Resume from a worker must
// not wait for itself.
func (r *run) awaitGiveBacks(ctx context.Context) {
	deadline := time.Now().Add(r.c.o.settleTimeout)
	for i := 0; i < len(r.slots); {
		if r.slots[i].state.Load() != slotReceiving {
			i++
			continue
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// receive takes the next delivery from the source, and its message. The
// source is user code as much as the handler (a third-party adapter): a
// panic in Receive or Message, a nil delivery (typed or not) or a nil
// message is a broken source, which restarting will not mend — a fatal
// error of the run, never a crash of the process.
func (r *run) receive(ctx context.Context) (d broker.Delivery, m *broker.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			d, m = nil, nil
			err = broker.Fatal(fmt.Errorf("queuekit: source %T panicked: %v", r.c.src, p))
		}
	}()
	d, err = r.c.src.Receive(ctx)
	if err != nil {
		return nil, nil, err
	}
	if d == nil {
		return nil, nil, broker.Fatal(errors.New("queuekit: source returned a nil delivery and no error"))
	}
	if m = d.Message(); m == nil {
		// A typed nil delivery panics above, in its Message method, or
		// returns nil here; either way there is nothing to handle or settle.
		return nil, nil, broker.Fatal(fmt.Errorf("queuekit: source returned a %T delivery with a nil message", d))
	}
	return d, m, nil
}

// recoverSettle turns a panic in a delivery's settlement method (a broken
// adapter) into that settlement's error, which is tried again and reported
// like any failed settlement.
func recoverSettle(d broker.Delivery, err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("queuekit: settling a %T delivery panicked: %v", d, p)
	}
}

// process runs the handler on d and settles it. It reports false when the
// drain deadline abandoned the delivery; the worker must then exit.
func (r *run) process(i int, d broker.Delivery, m *broker.Message) bool {
	s := &r.slots[i]
	s.d = d
	s.state.Store(slotRunning)
	// Pairs with abandon: either abandon sees slotRunning and takes the
	// delivery, or we see abandoning and give it back ourselves.
	if r.abandoning.Load() {
		if s.state.CompareAndSwap(slotRunning, slotIdle) {
			r.giveBack(d, m)
			r.wg.Done()
		}
		return false
	}
	hctx, release := r.handlerContext(d)
	err := r.call(hctx, m)
	release()
	if !s.state.CompareAndSwap(slotRunning, slotIdle) {
		return false
	}
	r.settle(d, m, err)
	return true
}

// handlerContext is the context a handler of d runs with, and the function
// to call when the handler returned: the run's handler context, and for a
// Leased delivery one that also ends with its lease. Only leased deliveries
// pay for a context of their own.
func (r *run) handlerContext(d broker.Delivery) (context.Context, func()) {
	l, ok := d.(broker.Leased)
	if !ok {
		return r.handlerCtx, func() {}
	}
	lease := l.Lease()
	if lease == nil {
		return r.handlerCtx, func() {}
	}
	ctx, cancel := context.WithCancelCause(r.handlerCtx)
	stop := context.AfterFunc(lease, func() { cancel(broker.ErrStaleDelivery) })
	return ctx, func() { stop(); cancel(nil) }
}

func (r *run) call(ctx context.Context, m *broker.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			pe := &PanicError{Value: p, Stack: debug.Stack()}
			r.c.log.Error("queuekit: handler panicked", "topic", m.Topic, "message_id", m.ID,
				"attempt", m.Attempt, "outcome", "panic", "panic", fmt.Sprint(p), "stack", string(pe.Stack))
			err = pe
		}
	}()
	return r.c.h.Handle(ctx, m)
}

// giveBack returns a delivery no handler has seen (it arrived as intake
// stopped) to the broker: with Release where the delivery has it, so that it
// keeps its place and spends no attempt, else with Requeue. A give-back that
// fails is tried again like any settlement: a delivery left unsettled would
// hold its prefetch slot for as long as the connection lasts.
func (r *run) giveBack(d broker.Delivery, m *broker.Message) {
	r.givenBack.Add(1)
	err := release(r.clock.Context(), d)
	if err != nil && retriableSettle(err) {
		err = r.retrySettle(m, "release", err, func(ctx context.Context) error { return release(ctx, d) })
	}
	r.observe(m, SettledGiveBack, err)
	if err != nil {
		r.settleFailed(m, "release", err)
	}
}

func release(ctx context.Context, d broker.Delivery) (err error) {
	defer recoverSettle(d, &err)
	if rl, ok := d.(broker.Releaser); ok {
		return rl.Release(ctx)
	}
	return d.Requeue(ctx)
}

// settle applies the settlement rules to a finished handler's result.
func (r *run) settle(d broker.Delivery, m *broker.Message, herr error) {
	s, delay := r.verdict(m, herr)
	var reason broker.Reason
	if s == SettledDeadLetter {
		reason = r.reason(m, herr)
	}
	err := r.apply(r.clock.Context(), d, s, reason, delay)
	if err != nil && retriableSettle(err) {
		err = r.retrySettle(m, s.String(), err, func(ctx context.Context) error { return r.apply(ctx, d, s, reason, delay) })
	}
	r.settled.Add(1)
	r.observe(m, s, err)
	switch {
	case err == nil:
		if s == SettledDeadLetter {
			r.c.emit(Event{Kind: EventDeadLettered, MessageID: m.ID, Err: safeError(herr)})
		}
	default:
		// Stale, already settled, or given up at the drain deadline: the
		// message stays with the broker, which delivers it again.
		r.settleFailed(m, s.String(), err)
	}
}

// retrySettle tries a settlement that failed with err again. A settlement
// that failed for another reason than staleness (a slow or briefly
// unreachable broker) leaves the delivery outstanding, holding a prefetch
// slot. Try again, with backoff and a fresh context each time, until the
// broker takes it or the drain deadline passes; the worker takes no new
// delivery meanwhile, which is right: the broker is sick. While it tries, the
// consumer reports StateStalled, so that health shows what would otherwise
// hide behind "running" or "paused".
func (r *run) retrySettle(m *broker.Message, op string, err error, try func(context.Context) error) error {
	r.stalled.Add(1)
	defer r.stalled.Add(-1)
	wait := settleBackoffMin
	for err != nil && retriableSettle(err) && !r.abandoning.Load() {
		r.settleFailed(m, op, err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.abandonNow:
			t.Stop()
			continue
		}
		wait = min(2*wait, settleBackoffMax)
		ctx, cancel := context.WithTimeout(r.hard, r.c.o.settleTimeout)
		err = try(ctx)
		cancel()
	}
	return err
}

// The backoff between tries of a failed settlement.
const (
	settleBackoffMin = 50 * time.Millisecond
	settleBackoffMax = 5 * time.Second
)

// retriableSettle reports whether trying a failed settlement again may help:
// not for a stale or already settled delivery, which the broker has taken back.
func retriableSettle(err error) bool {
	return !safeIs(err, broker.ErrStaleDelivery) && !safeIs(err, broker.ErrAlreadySettled)
}

// verdict applies the settlement rules to a finished handler's result.
func (r *run) verdict(m *broker.Message, herr error) (Settlement, time.Duration) {
	switch {
	case r.abandoning.Load():
		// The handler's context was cancelled because the consumer is
		// stopping: whatever it returned (a handler may well return nil on
		// ctx.Done() without having done its work), give the message back.
		// A duplicate is better than a loss.
		return SettledGiveBack, 0
	case herr == nil:
		return SettledAck, 0
	}
	permanent, delay := classify(herr)
	switch {
	case permanent || m.Attempt >= r.c.o.maxDeliveries:
		return SettledDeadLetter, 0
	case delay > 0:
		return SettledDelayedRequeue, delay
	}
	return SettledRequeue, 0
}

func (r *run) apply(ctx context.Context, d broker.Delivery, s Settlement, reason broker.Reason, delay time.Duration) (err error) {
	defer recoverSettle(d, &err)
	switch s {
	case SettledAck:
		return d.Ack(ctx)
	case SettledDeadLetter:
		return d.DeadLetter(ctx, reason)
	case SettledDelayedRequeue:
		if dr, ok := d.(broker.DelayedRequeuer); ok {
			return dr.RequeueAfter(ctx, delay)
		}
	}
	return d.Requeue(ctx)
}

func (r *run) reason(m *broker.Message, herr error) broker.Reason {
	permanent, _ := classify(herr)
	reason := broker.Reason{
		Err:       errorText(herr),
		Attempts:  max(m.Attempt, 1),
		Source:    m.Topic,
		Permanent: permanent,
		Time:      time.Now(),
	}
	r.c.log.Warn("queuekit: dead-lettering message", "topic", m.Topic, "message_id", m.ID,
		"attempt", reason.Attempts, "outcome", SettledDeadLetter.String(), "permanent", reason.Permanent, "error", reason.Err)
	return reason
}

func (r *run) observe(m *broker.Message, s Settlement, err error) {
	if f := r.c.o.observer; f != nil {
		defer func() {
			if p := recover(); p != nil {
				r.c.log.Error("queuekit: observer panicked; the settlement stands", "topic", m.Topic, "message_id", m.ID,
					"outcome", s.String(), "panic", fmt.Sprint(p))
			}
		}()
		f(m, s, err)
	}
}

func (r *run) settleFailed(m *broker.Message, op string, err error) {
	r.c.log.Warn("queuekit: settlement failed; the message stays with the broker",
		"topic", m.Topic, "message_id", m.ID, "attempt", m.Attempt, "outcome", op, "error", err)
	r.c.emit(Event{Kind: EventSettleFailed, MessageID: m.ID, Err: fmt.Errorf("%s: %w", op, err)})
}
