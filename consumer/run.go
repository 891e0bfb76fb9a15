package consumer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// intake is one period of intake: open (ctx live until intake stops),
// paused (wake is closed on resume or stop), or final (stopping for good).
// The current intake is swapped atomically; workers load it once per delivery.
type intake struct {
	ctx     context.Context
	cancel  context.CancelFunc
	hctx    context.Context // the handlers' context for deliveries of this intake (IntakeStopped reads it)
	probe   bool            // opened while the kill switch probes: its successes close the switch
	stopped atomic.Bool     // set before cancel; a delivery received after it is given back
	wake    chan struct{}   // non-nil when paused
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

// slot is one worker's state. It is 64 bytes, a cache line (4+4+16+40,
// no padding needed; TestSlotIsOneCacheLine holds it to that), so that
// workers do not share lines.
type slot struct {
	state  atomic.Int32
	held   atomic.Int32    // the worker's slot of the gate (gateFree, gateHeld, gateProbe)
	d      broker.Delivery // written by the worker before state becomes slotRunning
	counts slotCounts      // written by the worker only (see Stats)
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
	leases    []leaseCache  // worker i's handler contexts of its last leases (handlerContext): the worker's only
	batches   []workerBatch // worker i's batch (batch_run.go); nil unless a batch consumer
	running   atomic.Int32  // handlers running, kept only for a concurrencyLimiter
	clock     *settleClock
	wg        sync.WaitGroup // workers not abandoned
	givenBack atomic.Int64
	stalled   atomic.Int64 // workers retrying a settlement the broker did not take
	// Counters for Stats that the message path does not touch (the
	// workers' own are in their slots).
	abandonedCount atomic.Int64
	abandonedExtra atomic.Int64 // deliveries of abandoned batches beyond one per handler (Stats.GivenBack)
	settleFails    atomic.Int64
	abandoned      int   // written by run before done is closed
	closeErr       error // the source's Close failed; written by Run before done is closed
}

func newRun(c *Consumer, ctx context.Context) *run {
	r := &run{
		c:          c,
		base:       context.WithValue(context.WithoutCancel(ctx), nameKey{}, c.name()),
		stopCh:     make(chan struct{}),
		abandonNow: make(chan struct{}),
		done:       make(chan struct{}),
		slots:      make([]slot, c.o.concurrency),
		leases:     make([]leaseCache, c.o.concurrency),
	}
	if c.batch != nil {
		r.batches = make([]workerBatch, c.o.concurrency)
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
	if c.paused || c.tripped {
		r.cur.Store(pausedIntake())
	} else {
		r.cur.Store(r.openIntake())
	}
	return r
}

func (r *run) openIntake() *intake {
	ctx, cancel := context.WithCancel(r.base)
	in := &intake{ctx: ctx, cancel: cancel}
	in.probe = r.c.ks != nil && r.c.ks.state.Load() == ksProbing
	// One context per intake, not per message: IntakeStopped finds the
	// intake in it.
	in.hctx = context.WithValue(r.handlerCtx, intakeKey{}, in)
	return in
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
	if k := c.ks; k != nil {
		// The window's clock runs while Run does; what an earlier Run saw
		// is stale.
		k.clear()
		stop, done := make(chan struct{}), make(chan struct{})
		go k.runClock(stop, done)
		defer func() { close(stop); <-done }()
	}
	c.gate.use(r.slots)
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
	settledBefore, givenBackBefore := r.settledCount(), r.givenBack.Load()
	c.mu.Lock()
	r.stopping.Store(true)
	r.setIntake(&intake{final: true})
	c.mu.Unlock()
	c.emit(Event{Kind: EventDraining})
	if r.closing.Load() {
		c.logger().Info("queuekit: draining", "budget", "the Shutdown context")
	} else {
		c.logger().Info("queuekit: draining", "drain_timeout", c.o.drainTimeout)
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
		Handled:   int(r.settledCount() - settledBefore),
		GivenBack: int(r.givenBack.Load() - givenBackBefore),
		Abandoned: abandoned,
		Duration:  time.Since(start),
	}
	c.emit(Event{Kind: EventDrained, Drain: rep})
	c.logger().Info("queuekit: drained", "handled", rep.Handled, "given_back", rep.GivenBack,
		"abandoned", rep.Abandoned, "duration", rep.Duration)

	switch {
	case r.failErr != nil:
		return fmt.Errorf("queuekit: consumer %s: %w", c.name(), r.failErr)
	case abandoned > 0:
		return fmt.Errorf("queuekit: consumer %s: %d handlers abandoned: %w", c.name(), abandoned, ErrDrainTimeout)
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
	handlers := 0
	for i := range r.slots {
		s := &r.slots[i]
		if !s.state.CompareAndSwap(slotRunning, slotAbandoned) {
			continue
		}
		// The worker no longer counts: it exits, unsettled, whenever its
		// handler returns, and Run does not wait for it.
		r.wg.Done()
		r.abandonedCount.Add(1)
		handlers++
		if r.batches != nil {
			// A batch is given back whole (batch_run.go).
			taken = append(taken, r.batches[i].ds...)
			r.abandonedExtra.Add(int64(len(r.batches[i].ds) - 1))
			continue
		}
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
		r.c.logger().Warn("queuekit: handler abandoned at drain deadline; message given back",
			"topic", m.Topic, "message_id", m.ID, "attempt", m.Attempt, "outcome", SettledAbandon.String(), "cause", cause)
	}
	return handlers
}

func (r *run) work(i int) {
	s := &r.slots[i]
	defer r.leases[i].end()
	g := &r.c.gate
	// held: the worker kept its gate slot from the delivery it just
	// settled, because the gate was not limited (see keep): taking and
	// giving back a slot per message would cost the message path two
	// atomic stores for nothing.
	held := false
	for {
		in := r.cur.Load()
		if in.final || in.wake != nil {
			if held {
				g.release(s)
				held = false
			}
			if in.final {
				r.wg.Done()
				return
			}
			<-in.wake
			continue
		}
		// A slot of the concurrency gate first: above the limit the worker
		// takes nothing until a slot frees or this intake stops (then it
		// looks at the next one: paused, or final).
		if !held && !g.acquire(s, in.ctx.Done()) {
			continue
		}
		held = false
		next := r.take(i, in)
		if next == takeAbandoned {
			// The drain gave the message back and released us. The gate
			// slot stays marked in this run's slots, which a restarted
			// Run's gate no longer counts.
			return
		}
		if next == takeNext && g.keep() {
			held = true
			continue
		}
		g.release(s)
		switch next {
		case takeExit:
			r.wg.Done()
			return
		case takeAwaitStop:
			<-in.ctx.Done()
		}
	}
}

// What a worker does after take.
const (
	takeNext      = iota // take the next delivery
	takeAwaitStop        // wait for the intake to stop, then take the next
	takeExit             // exit: the source failed
	takeAbandoned        // exit, released by the drain (no wg.Done)
)

// take receives one delivery under intake in on worker i, which holds a
// slot of the gate, and handles it. It says what the worker does next.
func (r *run) take(i int, in *intake) int {
	if r.batches != nil {
		return r.takeBatch(i, in)
	}
	s := &r.slots[i]
	s.state.Store(slotReceiving)
	d, m, lease, err := r.receive(in.ctx, true)
	if err != nil {
		s.state.Store(slotIdle)
		if in.ctx.Err() != nil && !safeIsFatal(err) {
			return takeNext // paused or stopping: look at the new intake
		}
		if safeIs(err, broker.ErrSourceClosed) {
			// Someone closed the source under us: restarting cannot help.
			err = broker.Fatal(err)
		}
		r.fail(fmt.Errorf("receive: %w", err))
		return takeExit
	}
	if in.stopped.Load() {
		r.giveBack(d, m)
		s.state.Store(slotIdle)
		return takeNext
	}
	if in.probe && r.c.ks.state.Load() == ksOpen {
		// Another probe failed and tripped the kill switch again; this
		// probe intake is about to stop. Give the delivery back unhandled
		// and wait for the stop (with the slot given back): handled, its
		// failure would be a probe's and spend an attempt, and the
		// workers would take and fail the queue's head in a loop until
		// the stop.
		r.giveBack(d, m)
		s.state.Store(slotIdle)
		return takeAwaitStop
	}
	if !r.process(i, in, d, m, lease) { // process moves the slot from receiving to running
		return takeAbandoned
	}
	return takeNext
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

// receive takes the next delivery from the source, its message and, with
// leased, its lease: nil for a delivery that is not broker.Leased, or whose
// Lease method panicked (user code: a panic there means no lease). The
// source is user code as much as the handler (a third-party adapter): a
// panic in Receive or Message, a nil delivery (typed or not) or a nil
// message is a broken source, which restarting will not mend — a fatal
// error of the run, never a crash of the process. One deferred recover
// covers the three calls: it costs the message path a few nanoseconds
// each time.
func (r *run) receive(ctx context.Context, leased bool) (d broker.Delivery, m *broker.Message, lease context.Context, err error) {
	inLease := false
	defer func() {
		if p := recover(); p != nil {
			if inLease {
				lease = nil // d and m stand
				return
			}
			d, m, lease = nil, nil, nil
			err = broker.Fatal(fmt.Errorf("queuekit: source %T panicked: %v", r.c.src, p))
		}
	}()
	d, err = r.c.src.Receive(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	if d == nil {
		return nil, nil, nil, broker.Fatal(errors.New("queuekit: source returned a nil delivery and no error"))
	}
	if m = d.Message(); m == nil {
		// A typed nil delivery panics above, in its Message method, or
		// returns nil here; either way there is nothing to handle or settle.
		return nil, nil, nil, broker.Fatal(fmt.Errorf("queuekit: source returned a %T delivery with a nil message", d))
	}
	if leased {
		if l, ok := d.(broker.Leased); ok {
			inLease = true
			lease = l.Lease()
		}
	}
	return d, m, lease, nil
}

// process runs the handler on d, received under intake in with its lease
// (nil if none), and settles it. It reports false when the drain deadline
// abandoned the delivery; the worker must then exit (its wg.Done is done
// already, by abandon or here).
func (r *run) process(i int, in *intake, d broker.Delivery, m *broker.Message, lease context.Context) bool {
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
	// A probe: received while the kill switch probes (see ksOutcome).
	probe := in.probe && r.c.ks.state.Load() == ksProbing
	// handlerContext, its common cases written out (it is too big to be
	// inlined, and this runs once per message).
	hctx, release := in.hctx, (func())(nil)
	if lease != nil {
		if lc := &r.leases[i]; lc[0].holds(in, lease) {
			hctx = lc[0].ctx
		} else {
			hctx, release = r.leaseContext(lc, in, lease)
		}
	}
	var err error
	idle := false // the slot was moved from running to idle already
	switch l := r.c.limiter; {
	case l != nil:
		err = r.callLimited(l, hctx, m)
	case release != nil || r.c.ks != nil:
		err = r.call(hctx, m)
	default:
		// The common case (no limiter, kill switch or context to release):
		// the handler and, when it succeeds, the Ack in one call.
		var at int
		var ackErr error
		err, at, ackErr = r.callAndAck(s, hctx, d, m)
		switch at {
		case fastAbandoned:
			return false
		case fastAcked:
			if ackErr == nil && r.c.o.observer == nil {
				// All that settled and count would do.
				inc(&s.counts.handled)
				return true
			}
			s.counts.count(nil, SettledAck, r.settled(d, m, nil, SettledAck, nil, 0, ackErr))
			return true
		case fastIdle:
			idle = true
		}
	}
	if release != nil {
		release()
	}
	if !idle && !s.state.CompareAndSwap(slotRunning, slotIdle) {
		return false
	}
	if err != nil && in.stopped.Load() && !r.abandoning.Load() && safeIs(err, ErrNotHandled) {
		// The handler did not do the work because this intake stopped
		// (IntakeStopped): give the message back unspent. Only then: with
		// the intake open it is an ordinary failure below, so that no
		// message can loop on ErrNotHandled.
		r.giveBack(d, m)
		return true
	}
	if r.c.ks != nil && !r.abandoning.Load() && r.c.ksOutcome(probe, err) {
		// A failure that counts of a message received before the kill
		// switch tripped (in flight at the trip, or the one that tripped
		// it): the outage, not the message, failed. Give it back unspent.
		// A failed probe is settled below, as any failure.
		r.giveBack(d, m)
		s.counts.countGivenBack()
		return true
	}
	st, serr := r.settle(d, m, err)
	s.counts.count(err, st, serr)
	return true
}

// handlerContext is the context a handler of a delivery under lease (nil
// if none) runs with, and a function to call when the handler returned, or
// nil: the run's handler context (carrying intake in, for IntakeStopped),
// and for a Leased delivery one that also ends, with cause
// ErrStaleDelivery, when its lease does. The context of a lease is made once per worker and lease (a lease
// lasts a consumer-group generation: thousands of messages) and kept per
// worker (leaseCtx), not once per message: a context, a cancel registration
// on the intake's and one on the lease's context per message cost five
// allocations and two shared locks, more than the rest of the runtime. lc is
// the worker's (r.leases, beside r.slots: a slot is one cache line). So,
// as with in.hctx, a handler's context does not end when the handler
// returns; it ends with its lease, its intake, or the worker, or when the
// worker has since handled deliveries of leaseCacheSize other leases.
func (r *run) handlerContext(lc *leaseCache, in *intake, lease context.Context) (ctx context.Context, release func()) {
	if lease == nil {
		return in.hctx, nil
	}
	if lc[0].holds(in, lease) {
		return lc[0].ctx, nil
	}
	return r.leaseContext(lc, in, lease)
}

// leaseCacheSize is how many lease contexts a worker keeps (leaseCache):
// a Kafka source's leases are per partition (a partition's lease ends when
// it is revoked), and a worker takes records of several partitions in
// turn; with one context kept, every change of partition made a new one
// (a context, two cancel registrations: ~0.5 µs, a few per cent of the
// Kafka benchmark's CPU with 4 partitions).
const leaseCacheSize = 8

// leaseCache is a worker's handler contexts of the last leases it handled
// deliveries of, the most recent first; unused entries are zero.
type leaseCache [leaseCacheSize]leaseCtx

// leaseContext is handlerContext for a lease (not nil) whose context is not
// lc[0]: another entry's, moved to the front, or a new one. A new one is
// kept at the front, when it can be, and the last entry ended to make room.
func (r *run) leaseContext(lc *leaseCache, in *intake, lease context.Context) (ctx context.Context, release func()) {
	if lc[0].ctx != nil && lc[0].in != in {
		// The first delivery of a new intake: the contexts of the old one
		// end (all of them: every entry is of the intake of the first).
		lc.end()
	}
	for j := 1; j < len(lc); j++ {
		if lc[j].ctx == nil {
			break // the entries after it are unused too
		}
		if lc[j].holds(in, lease) {
			e := lc[j]
			copy(lc[1:j+1], lc[:j])
			lc[0] = e
			return e.ctx, nil
		}
	}
	ctx, cancel := context.WithCancelCause(in.hctx)
	if lease.Err() != nil {
		// Over already: context.AfterFunc would cancel asynchronously,
		// after the handler started.
		cancel(broker.ErrStaleDelivery)
		return ctx, nil
	}
	stop := context.AfterFunc(lease, func() { cancel(broker.ErrStaleDelivery) })
	if reflect.TypeOf(lease).Kind() != reflect.Pointer {
		// Only a pointer is compared (above) with ==, which cannot panic
		// on pointers: a struct value may hold a map or a slice, in a field
		// or behind an interface field, and == panics on those although
		// reflect calls a type with interface fields comparable (review A).
		// Such a lease (a third-party source's; the standard library's
		// contexts are pointers) is not kept: its handler's context ends
		// when the handler returns.
		return ctx, func() { stop(); cancel(nil) }
	}
	lc[len(lc)-1].end()
	copy(lc[1:], lc[:len(lc)-1])
	lc[0] = leaseCtx{in: in, lease: lease, ctx: ctx, cancel: cancel, stop: stop}
	return ctx, nil
}

// end ends every context of lc (see leaseCtx.end).
func (lc *leaseCache) end() {
	for j := range lc {
		lc[j].end()
	}
}

// leaseCtx is a worker's handler context for the deliveries of one lease
// under one intake (see handlerContext).
type leaseCtx struct {
	in     *intake
	lease  context.Context
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool
}

// holds reports whether lc is a live context of lease under intake in. Only
// pointers are kept as lc.lease (see leaseContext), so == cannot panic: a
// lease of another dynamic type differs without a comparison of values.
func (lc *leaseCtx) holds(in *intake, lease context.Context) bool {
	return lc.ctx != nil && lc.lease == lease && lc.in == in && lc.ctx.Err() == nil
}

// end ends the context, if any, and its registration on the lease.
func (lc *leaseCtx) end() {
	if lc.ctx == nil {
		return
	}
	lc.stop()
	lc.cancel(nil)
	*lc = leaseCtx{}
}

func (r *run) call(ctx context.Context, m *broker.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = r.handlerPanicked(m, p)
		}
	}()
	return handlerResult(r.c.h.Handle(ctx, m))
}

// handlerPanicked logs the panic p of m's handler and returns it as the
// handler's error. It is called in the deferred function that recovered p,
// so that the stack is the handler's.
func (r *run) handlerPanicked(m *broker.Message, p any) error {
	pe := &PanicError{Value: p, Stack: debug.Stack()}
	r.c.logger().Error("queuekit: handler panicked", "topic", m.Topic, "message_id", m.ID,
		"attempt", m.Attempt, "outcome", "panic", "panic", fmt.Sprint(p), "stack", string(pe.Stack))
	return pe
}

// What callAndAck got to.
const (
	fastFailed    = iota // the handler failed (or panicked): nothing else done
	fastAbandoned        // the drain abandoned the delivery meanwhile: the worker exits
	fastIdle             // the slot is idle; the drain deadline passed: settle by the rules (give back)
	fastAcked            // the slot is idle and Ack was tried: ackErr is its error
)

// callAndAck is call, then, if the handler succeeded, what process and
// settle do for a success when no limiter or kill switch is set: the slot
// moved from running to idle (unless the drain abandoned it) and, unless
// the drain deadline passed meanwhile, the delivery acknowledged (the
// verdict on a success). One deferred recover covers the handler and Ack,
// the user code of the message path's second half: a recover costs a few
// nanoseconds per message. A panic in the handler is its error, as in call;
// one in Ack is the Ack's, as in apply.
func (r *run) callAndAck(s *slot, ctx context.Context, d broker.Delivery, m *broker.Message) (herr error, at int, ackErr error) {
	defer func() {
		if p := recover(); p != nil {
			if at == fastAcked {
				ackErr = settlePanicked(d, p)
				return
			}
			herr = r.handlerPanicked(m, p)
		}
	}()
	if herr = handlerResult(r.c.h.Handle(ctx, m)); herr != nil {
		return herr, fastFailed, nil
	}
	if !s.state.CompareAndSwap(slotRunning, slotIdle) {
		return nil, fastAbandoned, nil
	}
	if r.abandoning.Load() {
		return nil, fastIdle, nil
	}
	at = fastAcked
	return nil, fastAcked, d.Ack(r.clock.Context())
}

// callLimited calls the handler as call does, and reports its latency and
// outcome to the concurrency limiter, applying the limit it decides.
func (r *run) callLimited(l concurrencyLimiter, ctx context.Context, m *broker.Message) error {
	n := int(r.running.Add(1))
	start := time.Now()
	err := r.call(ctx, m)
	lat := time.Since(start)
	r.running.Add(-1)
	limit := guarded(-1, func() int { return l.observe(lat, isFailure(err), n) })
	if limit > 0 {
		r.c.gate.setLimit(limit)
	}
	return err
}
