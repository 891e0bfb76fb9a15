package consumer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// workerBatch is one worker's batch: its deliveries and their messages,
// and room for their outcomes, reused from batch to batch (so a batch
// consumer holds at most MaxSize × concurrency deliveries). Only the worker
// writes it; abandon reads ds once it took the worker's slot from
// slotRunning to slotAbandoned, after which the worker no longer touches it
// (the worker writes ds before it stores slotRunning).
//
// ms[j] is ds[j]'s message as the source handed it over; the handler never
// sees ms but hs, a copy made for each call, which it may reorder, nil or
// overwrite: the runtime reads hs back only to map failure indexes to
// deliveries (batchOutcomes), and settles, budget-checks, logs and observes
// each delivery with its own ms[j].
type workerBatch struct {
	ds    []broker.Delivery
	ms    []*broker.Message
	hs    []*broker.Message // the handler's msgs
	lanes []lane            // ds[j]'s lane, asked once the batch is collected
	errs  []error
}

// lane is a delivery's lane (broker.Sequenced), when it has one.
type lane struct {
	id  uint64
	seq bool
}

// reset drops the batch's references, keeping its arrays.
func (wb *workerBatch) reset() {
	clear(wb.ds)
	clear(wb.ms)
	clear(wb.hs)
	clear(wb.errs)
	wb.ds, wb.ms, wb.hs, wb.errs = wb.ds[:0], wb.ms[:0], wb.hs[:0], wb.errs[:0]
	wb.lanes = wb.lanes[:0]
}

// askLanes fills wb.lanes. Lane is the source's code: when it panics, the
// source is broken (the runtime cannot keep its lanes in order), and the
// error is fatal, as for a source that returns a nil delivery; asking
// before the handler runs means the batch goes back unhandled.
func (wb *workerBatch) askLanes(src broker.Source) (err error) {
	wb.lanes = wb.lanes[:0]
	for _, d := range wb.ds {
		sq, ok := d.(broker.Sequenced)
		if !ok {
			wb.lanes = append(wb.lanes, lane{})
			continue
		}
		id, ok := safeLane(sq)
		if !ok {
			return broker.Fatal(fmt.Errorf("queuekit: source %T: Lane of a %T delivery panicked", src, d))
		}
		wb.lanes = append(wb.lanes, lane{id: id, seq: true})
	}
	return nil
}

// takeBatch is take for a batch consumer: worker i, which holds a slot of
// the gate, collects a batch under intake in, hands it to the batch handler
// and settles it. It says what the worker does next.
func (r *run) takeBatch(i int, in *intake) int {
	s := &r.slots[i]
	wb := &r.batches[i]
	s.state.Store(slotReceiving)
	err := r.collect(in, wb)
	if err == nil {
		err = wb.askLanes(r.c.src)
	}
	if err != nil {
		// Whatever was collected is given back unhandled; the error is what
		// a single Receive's would be.
		if in.ctx.Err() != nil && !safeIsFatal(err) {
			r.giveBackBatch(wb)
			s.state.Store(slotIdle)
			return takeNext // paused or stopping: look at the new intake
		}
		if safeIs(err, broker.ErrSourceClosed) {
			err = broker.Fatal(err)
		}
		// Fail first, so that the drain (whose deadline bounds a give-back
		// the broken source does not take) has begun.
		r.fail(fmt.Errorf("receive: %w", err))
		r.giveBackBatch(wb)
		s.state.Store(slotIdle)
		return takeExit
	}
	if in.stopped.Load() {
		// The intake stopped while the batch was collected: nothing of it
		// started, so all of it goes back, unspent.
		r.giveBackBatch(wb)
		s.state.Store(slotIdle)
		return takeNext
	}
	if in.probe && r.c.ks.state.Load() == ksOpen {
		// As in take: a failed probe tripped the kill switch again.
		r.giveBackBatch(wb)
		s.state.Store(slotIdle)
		return takeAwaitStop
	}
	if !r.processBatch(i, in, wb) {
		return takeAbandoned
	}
	return takeNext
}

// giveBackBatch gives back every delivery of wb, last first, and empties
// it: a source that puts a released message at the head of its queue
// (memory) then has them back in their order, and one that puts it back at
// its own place (Kafka, RabbitMQ) does not mind.
func (r *run) giveBackBatch(wb *workerBatch) {
	for j := len(wb.ds) - 1; j >= 0; j-- {
		r.giveBack(wb.ds[j], wb.ms[j])
	}
	wb.reset()
}

// collect fills wb with a batch received under intake in: it blocks for the
// first delivery, then takes more until the batch holds MaxSize or MaxWait
// passed since the first arrived; a broker.BatchReceiver collects the batch
// itself, in one call. It returns an error only when the source failed or
// the intake stopped before a delivery arrived (wb then holds what was
// collected, for the caller to give back); the end of MaxWait is no error,
// and neither is the intake stopping once deliveries arrived (the caller
// sees in.stopped and gives them back).
func (r *run) collect(in *intake, wb *workerBatch) error {
	cfg := r.c.batch.cfg
	if in.probe && r.c.ks.state.Load() == ksProbing {
		// A probe is one message, as for a Handler: a failed probe spends
		// one attempt, not one of each message of a batch.
		cfg.MaxSize = 1
	}
	if br, ok := r.c.src.(broker.BatchReceiver); ok {
		return r.receiveBatchInto(in.ctx, br, wb, cfg.MaxSize, cfg.MaxWait)
	}
	d, m, _, err := r.receive(in.ctx, false)
	if err != nil {
		return err
	}
	wb.ds, wb.ms = append(wb.ds, d), append(wb.ms, m)
	if cfg.MaxSize == 1 || cfg.MaxWait == 0 {
		return nil
	}
	// One context per batch, not per Receive: its deadline is the batch's.
	ctx, cancel := context.WithTimeout(in.ctx, cfg.MaxWait)
	defer cancel()
	for len(wb.ds) < cfg.MaxSize {
		d, m, _, err := r.receive(ctx, false)
		if err != nil {
			if in.ctx.Err() == nil && ctx.Err() != nil && !safeIsFatal(err) {
				return nil // MaxWait is over: the batch is what arrived
			}
			return err
		}
		wb.ds, wb.ms = append(wb.ds, d), append(wb.ms, m)
	}
	return nil
}

// receiveBatchInto collects a batch with br.ReceiveBatch into wb, guarded as
// receive guards Receive: a panic, no delivery and no error, a nil
// delivery or message are a fatal error of the run, and so are more
// deliveries than asked for (what it handed out is given back).
func (r *run) receiveBatchInto(ctx context.Context, br broker.BatchReceiver, wb *workerBatch, max int, wait time.Duration) (err error) {
	var ds []broker.Delivery
	func() {
		defer func() {
			if p := recover(); p != nil {
				ds = nil
				err = broker.Fatal(fmt.Errorf("queuekit: source %T panicked: %v", r.c.src, p))
			}
		}()
		ds, err = br.ReceiveBatch(ctx, max, wait)
	}()
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		return broker.Fatal(fmt.Errorf("queuekit: source %T returned no delivery and no error from ReceiveBatch", r.c.src))
	}
	for _, d := range ds {
		if isNil(d) || safeMessage(d) == nil {
			// Nothing can be settled: the others are lost to this run
			// too, and the broker redelivers them.
			return broker.Fatal(fmt.Errorf("queuekit: source %T returned a nil delivery or message from ReceiveBatch", r.c.src))
		}
	}
	for _, d := range ds {
		wb.ds, wb.ms = append(wb.ds, d), append(wb.ms, d.Message())
	}
	if len(ds) > max {
		return broker.Fatal(fmt.Errorf("queuekit: source %T returned %d deliveries from ReceiveBatch, asked for at most %d", r.c.src, len(ds), max))
	}
	return nil
}

// safeMessage is d.Message(), or nil when it panics (a broken source).
func safeMessage(d broker.Delivery) (m *broker.Message) {
	defer func() {
		if recover() != nil {
			m = nil
		}
	}()
	return d.Message()
}

// processBatch runs the batch handler on wb, received under intake in, and
// settles its deliveries. It reports false when the drain deadline
// abandoned the batch (abandon gave it back); the worker must then exit.
func (r *run) processBatch(i int, in *intake, wb *workerBatch) bool {
	s := &r.slots[i]
	s.d = wb.ds[0]
	s.state.Store(slotRunning)
	// Pairs with abandon, as in process.
	if r.abandoning.Load() {
		if s.state.CompareAndSwap(slotRunning, slotIdle) {
			r.giveBackBatch(wb)
			r.wg.Done()
		}
		return false
	}
	probe := in.probe && r.c.ks.state.Load() == ksProbing
	hctx, release := r.batchContext(&r.leases[i], in, wb.ds)
	// The handler gets a copy of the messages: what it does to its slice
	// cannot change which message the runtime settles (see workerBatch).
	wb.hs = append(wb.hs[:0], wb.ms...)
	var err error
	if l := r.c.limiter; l != nil {
		err = r.callBatchLimited(l, hctx, wb.hs, wb.ms[0])
	} else {
		err = r.callBatch(hctx, wb.hs, wb.ms[0])
	}
	if release != nil {
		release()
	}
	if !s.state.CompareAndSwap(slotRunning, slotIdle) {
		return false // abandon took the batch; the worker leaves wb alone
	}
	r.settleBatch(s, in, probe, wb, err)
	wb.reset()
	return true
}

// settleBatch settles each delivery of wb by its outcome, given the batch
// handler's result err (see BatchHandler).
func (r *run) settleBatch(s *slot, in *intake, probe bool, wb *workerBatch, err error) {
	n := len(wb.ds)
	if cap(wb.errs) < n {
		// Sized to the batch, not to MaxSize: most batches are far smaller.
		wb.errs = make([]error, n)
	}
	errs, misuse := batchOutcomes(err, wb.hs, wb.ms, wb.errs[:n])
	if misuse != nil {
		r.c.logger().Error("queuekit: the batch handler's failures cannot be told apart; the batch failed", "messages", n,
			"first_message_id", wb.ms[0].ID, "error", errorText(misuse))
	}
	// The lanes with a failed delivery so far: the later deliveries of such
	// a lane are given back unhandled, to come again after the failed one.
	// A batch rarely holds more than a few lanes: a slice beats a map.
	var failedLanes []uint64
	// The deliveries to give back or failed, settled last first once the
	// others are (see giveBackBatch). errs[j] is done with once read: its
	// slot then marks a give-back (errGiveBack) or holds a failure.
	back := false
	// Each message's error is bounded before it is looked at (see
	// handlerResult); a whole-batch failure is one error for all, bounded
	// once.
	var lastRaw, lastBound error
	for j, d := range wb.ds {
		m, e := wb.ms[j], errs[j]
		errs[j] = nil
		if e != nil {
			if lastRaw == nil || !sameError(e, lastRaw) {
				lastRaw, lastBound = e, handlerResult(e)
			}
			e = lastBound
		}
		if l := wb.lanes[j]; l.seq {
			if containsLane(failedLanes, l.id) {
				// After a failure in its lane, handled or not, it goes back.
				errs[j], back = errGiveBack, true
				continue
			}
			if e != nil {
				failedLanes = append(failedLanes, l.id)
			}
		}
		if e != nil && in.stopped.Load() && !r.abandoning.Load() && safeIs(e, ErrNotHandled) {
			errs[j], back = errGiveBack, true
			continue
		}
		if r.c.ks != nil && !r.abandoning.Load() && r.c.ksOutcome(probe, e) {
			errs[j], back = errGiveBack, true
			s.counts.countGivenBack()
			continue
		}
		if e != nil {
			// A failure is settled with the give-backs, last first.
			errs[j], back = e, true
			continue
		}
		st, serr := r.settle(d, m, nil)
		s.counts.count(nil, st, serr)
	}
	// Give-backs and failures last first: a source that puts a returned
	// message at the head of its queue (memory) delivers them again in
	// their order. errGiveBack is an *errors.errorString: == with another
	// error cannot panic (their dynamic types differ, or both are that).
	for j := len(wb.ds) - 1; back && j >= 0; j-- {
		switch e := errs[j]; {
		case e == errGiveBack:
			r.giveBack(wb.ds[j], wb.ms[j])
		case e != nil:
			st, serr := r.settle(wb.ds[j], wb.ms[j], e)
			s.counts.count(e, st, serr)
		}
		errs[j] = nil
	}
}

// errGiveBack marks, in settleBatch, a delivery to give back.
var errGiveBack = errors.New("queuekit: give back")

func containsLane(lanes []uint64, lane uint64) bool {
	for _, l := range lanes {
		if l == lane {
			return true
		}
	}
	return false
}

// safeLane calls sq.Lane, a method of user code (a third-party source); ok
// is false when it panicked.
func safeLane(sq broker.Sequenced) (lane uint64, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return sq.Lane(), true
}

// batchContext is the context the batch handler of ds runs with, and a
// function to call when it returned, or nil (see handlerContext). When the
// deliveries share one lease (a Kafka batch comes from one generation) it
// is the worker's context of that lease; when they have several, or some
// have none, it is a context of the batch's own that ends when any of
// their leases does.
func (r *run) batchContext(lc *leaseCache, in *intake, ds []broker.Delivery) (context.Context, func()) {
	var leases []context.Context // distinct, as far as sameLease can tell
	unleased := false
	for _, d := range ds {
		var lease context.Context
		if l, ok := d.(broker.Leased); ok {
			lease = safeLease(l)
		}
		if lease == nil {
			unleased = true
			continue
		}
		if !containsLease(leases, lease) {
			leases = append(leases, lease)
		}
	}
	switch {
	case len(leases) == 0:
		return in.hctx, nil
	case len(leases) == 1 && !unleased:
		return r.handlerContext(lc, in, leases[0])
	}
	ctx, cancel := context.WithCancelCause(in.hctx)
	stops := make([]func() bool, 0, len(leases))
	for _, lease := range leases {
		if lease.Err() != nil {
			cancel(broker.ErrStaleDelivery)
			break
		}
		stops = append(stops, context.AfterFunc(lease, func() { cancel(broker.ErrStaleDelivery) }))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel(nil)
	}
}

// safeLease calls l.Lease, a method of user code (a third-party source): a
// panic there means no lease.
func safeLease(l broker.Leased) (lease context.Context) {
	defer func() {
		if recover() != nil {
			lease = nil
		}
	}()
	return l.Lease()
}

// containsLease reports whether leases holds lease. Only pointers are
// compared (see handlerContext: == on other dynamic types may panic); a
// lease of another kind is never found, so it gets a registration of its
// own.
func containsLease(leases []context.Context, lease context.Context) bool {
	if reflect.TypeOf(lease).Kind() != reflect.Pointer {
		return false
	}
	for _, l := range leases {
		if reflect.TypeOf(l).Kind() == reflect.Pointer && l == lease {
			return true
		}
	}
	return false
}

// callBatch runs the batch handler on hs, the handler's copy of the batch
// whose first message is first (the runtime's, for the log: hs[0] may be
// anything by then), turning a panic into a *PanicError for the whole batch.
func (r *run) callBatch(ctx context.Context, hs []*broker.Message, first *broker.Message) (err error) {
	n := len(hs)
	defer func() {
		if p := recover(); p != nil {
			pe := &PanicError{Value: p, Stack: debug.Stack()}
			r.c.logger().Error("queuekit: batch handler panicked; the batch failed", "messages", n,
				"first_message_id", first.ID, "outcome", "panic", "panic", fmt.Sprint(p), "stack", string(pe.Stack))
			err = pe
		}
	}()
	return r.c.batch.h.HandleBatch(ctx, hs)
}

// callBatchLimited is callLimited for a batch: the limiter sees one call
// per batch, with the batch's latency, failed when the whole batch failed.
func (r *run) callBatchLimited(l concurrencyLimiter, ctx context.Context, hs []*broker.Message, first *broker.Message) error {
	n := int(r.running.Add(1))
	start := time.Now()
	err := r.callBatch(ctx, hs, first)
	lat := time.Since(start)
	r.running.Add(-1)
	// batchErrors' walk is bounded; a whole-batch failure is bounded before
	// it is classified (see handlerResult).
	failed := err != nil && batchErrors(err) == nil && isFailure(handlerResult(err))
	limit := guarded(-1, func() int { return l.observe(lat, failed, n) })
	if limit > 0 {
		r.c.gate.setLimit(limit)
	}
	return err
}
