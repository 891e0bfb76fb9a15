package consumer

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
)

// settleClock hands out the contexts deliveries are settled with. They are
// derived from the run's values but not its cancellation, so that a stopping
// consumer can still acknowledge finished work, and bounded by the settle
// timeout, so that a hung broker cannot hold a worker forever.
//
// Making a context per message would cost a clock read, a timer and several
// allocations on the hot path. Instead one goroutine makes a fresh context
// every quarter of the timeout; workers load the current one atomically. A
// worker therefore settles with a context that has between three quarters and
// all of the settle timeout left (less only if the clock goroutine is starved).
type settleClock struct {
	cur  atomic.Pointer[context.Context]
	stop chan struct{}
	done chan struct{}
}

func startSettleClock(base context.Context, timeout time.Duration) *settleClock {
	c := &settleClock{stop: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(base, timeout)
	c.cur.Store(&ctx)
	go c.run(base, timeout, cancel)
	return c
}

// run rotates the context until stop. It owns the cancel functions; it keeps
// those of the contexts a worker may still hold (the last few) and cancels the
// older ones, which have expired by then anyway, to release their timers.
func (c *settleClock) run(base context.Context, timeout time.Duration, first context.CancelFunc) {
	defer close(c.done)
	const keep = 6 // 6 quarters > the timeout: older contexts have expired
	cancels := []context.CancelFunc{first}
	t := time.NewTicker(max(timeout/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ctx, cancel := context.WithTimeout(base, timeout)
			c.cur.Store(&ctx)
			cancels = append(cancels, cancel)
			if len(cancels) > keep {
				cancels[0]()
				cancels = append(cancels[:0], cancels[1:]...)
			}
		case <-c.stop:
			for _, cancel := range cancels {
				cancel()
			}
			return
		}
	}
}

// Context returns the current settlement context.
func (c *settleClock) Context() context.Context { return *c.cur.Load() }

// Stop ends the clock and cancels its contexts. Call it only when no
// settlement can be in progress.
func (c *settleClock) Stop() {
	close(c.stop)
	<-c.done
}

// recoverSettle turns a panic in a delivery's settlement method (a broken
// adapter) into that settlement's error, which is tried again and reported
// like any failed settlement.
func recoverSettle(d broker.Delivery, err *error) {
	if p := recover(); p != nil {
		*err = settlePanicked(d, p)
	}
}

// settlePanicked is the error of a settlement of d that panicked with p.
func settlePanicked(d broker.Delivery, p any) error {
	return fmt.Errorf("queuekit: settling a %T delivery panicked: %v", d, p)
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

// settle applies the settlement rules to a finished handler's result. It
// returns the settlement and its error, for the worker's counters.
func (r *run) settle(d broker.Delivery, m *broker.Message, herr error) (Settlement, error) {
	s, delay := r.verdict(m, herr)
	// A pointer, nil but for a dead letter: an Ack (the common case) then
	// neither clears nor copies a Reason.
	var reason *broker.Reason
	if s == SettledDeadLetter {
		rs := r.reason(m, herr)
		reason = &rs
	}
	return s, r.settled(d, m, herr, s, reason, delay, r.apply(r.clock.Context(), d, s, reason, delay))
}

// settled follows the settlement s of d (whose handler returned herr; with
// reason for a dead letter, delay for a delayed requeue), tried once with
// error err: tried again while that may help (see retrySettle), reported to
// the observer, logged and emitted. It returns the settlement's final error.
func (r *run) settled(d broker.Delivery, m *broker.Message, herr error, s Settlement, reason *broker.Reason, delay time.Duration, err error) error {
	if err != nil && retriableSettle(err) {
		err = r.retrySettle(m, s.String(), err, func(ctx context.Context) error { return r.apply(ctx, d, s, reason, delay) })
	}
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
	return err
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

// apply settles d with s: reason is a dead letter's (nil for the others),
// delay a delayed requeue's.
func (r *run) apply(ctx context.Context, d broker.Delivery, s Settlement, reason *broker.Reason, delay time.Duration) (err error) {
	defer recoverSettle(d, &err)
	switch s {
	case SettledAck:
		return d.Ack(ctx)
	case SettledDeadLetter:
		return d.DeadLetter(ctx, *reason)
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
		Err:       truncateReason(errorText(herr)),
		Attempts:  max(m.Attempt, 1),
		Source:    m.Topic,
		Permanent: permanent,
		Time:      time.Now(),
	}
	r.c.logger().Warn("queuekit: dead-lettering message", "topic", m.Topic, "message_id", m.ID,
		"attempt", reason.Attempts, "outcome", SettledDeadLetter.String(), "permanent", reason.Permanent, "error", reason.Err)
	return reason
}

// MaxReasonBytes bounds the error text a dead letter carries (the header
// broker.HeaderError): an error can be arbitrarily long (a wrapped response
// body, a stack), and a header past the broker's frame size would make the
// dead letter unpublishable — the message would then loop instead of
// reaching the dead-letter destination.
const MaxReasonBytes = 4096

// truncateReason cuts s to MaxReasonBytes at a UTF-8 boundary, saying how
// much was cut.
func truncateReason(s string) string {
	if len(s) <= MaxReasonBytes {
		return s
	}
	suffix := fmt.Sprintf(" … (truncated: %d bytes in all)", len(s))
	cut := MaxReasonBytes - len(suffix)
	// Step back over at most the continuation bytes of one rune: on bytes
	// that are not UTF-8 at all, stepping back "to a rune start" would walk
	// to the beginning of the text.
	for i := 0; i < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(s[cut]); i++ {
		cut--
	}
	return strings.ToValidUTF8(s[:cut], "\uFFFD") + suffix
}

func (r *run) observe(m *broker.Message, s Settlement, err error) {
	if f := r.c.o.observer; f != nil {
		defer func() {
			if p := recover(); p != nil {
				r.c.logger().Error("queuekit: observer panicked; the settlement stands", "topic", m.Topic, "message_id", m.ID,
					"outcome", s.String(), "panic", fmt.Sprint(p))
			}
		}()
		f(r.base, m, s, err)
	}
}

func (r *run) settleFailed(m *broker.Message, op string, err error) {
	r.settleFails.Add(1)
	r.c.logger().Warn("queuekit: settlement failed; the message stays with the broker",
		"topic", m.Topic, "message_id", m.ID, "attempt", m.Attempt, "outcome", op, "error", err)
	r.c.emit(Event{Kind: EventSettleFailed, MessageID: m.ID, Err: fmt.Errorf("%s: %w", op, err)})
}
