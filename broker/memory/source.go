package memory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// ErrCancelled is the error of a subscription cancelled by Source.Cancel(nil).
var ErrCancelled = errors.New("memory: subscription cancelled by the broker")

// SourceConfig configures a Source. The zero value is a valid configuration.
type SourceConfig struct {
	// Prefetch bounds the deliveries the source has handed out and not yet
	// settled: Receive blocks while that many are outstanding, like
	// RabbitMQ's basic.qos. 0 means 1. Set it to at least the consumer's
	// concurrency, or workers will wait on each other.
	Prefetch int
}

// A Source is a subscription to one queue of a Broker. It implements
// broker.Source, broker.Pauser, broker.StatusReporter, broker.EventSource
// and broker.BacklogReporter; its deliveries implement broker.Delivery,
// broker.DelayedRequeuer and broker.Releaser. Several sources of one queue compete for its
// messages, like consumers of a RabbitMQ queue.
//
// A Source is safe for concurrent use; Receive may be called from many
// goroutines at once. After Close, Receive returns broker.ErrSourceClosed.
type Source struct {
	b        *Broker
	q        *queue
	prefetch int

	// Guarded by b.mu.
	unacked   int
	out       delivery // sentinel of the list of outstanding deliveries, oldest first
	paused    bool
	cancelErr error // set by Cancel until Resume
	closed    bool

	// announced is set once the first Receive has emitted EventConnected
	// (or found the source closed or cancelled); written under b.mu, read
	// without it on every Receive.
	announced atomic.Bool

	// hookMu is held while the hook runs, so that Close, which clears the
	// hook under it, returns only after any running hook call returned. It
	// is never held together with b.mu: a hook may call into the broker.
	hookMu sync.Mutex
	hook   func(broker.Event)
}

// Source subscribes to queue, creating it on first use. It returns an error
// wrapping broker.ErrInvalidConfig if queue is empty or cfg.Prefetch is
// negative, and ErrBrokerClosed after Close.
func (b *Broker) Source(queue string, cfg SourceConfig) (*Source, error) {
	switch {
	case queue == "":
		return nil, fmt.Errorf("memory: source: %w: empty queue name", broker.ErrInvalidConfig)
	case cfg.Prefetch < 0:
		return nil, fmt.Errorf("memory: source: %w: prefetch %d, want >= 0", broker.ErrInvalidConfig, cfg.Prefetch)
	}
	s := &Source{b: b, prefetch: max(cfg.Prefetch, 1)}
	s.out.next, s.out.prev = &s.out, &s.out
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrBrokerClosed
	}
	s.q = b.queue(queue)
	s.q.sources++
	b.sources[s] = struct{}{}
	return s, nil
}

// Queue returns the name of the queue the source consumes.
func (s *Source) Queue() string { return s.q.name }

// Receive returns the next message of the queue, blocking while the queue is
// empty, the source is paused, or Prefetch deliveries are outstanding. It
// returns ctx's error when ctx is done first (no message is taken then),
// broker.ErrSourceClosed after Close, and an error wrapping the Cancel
// error while the subscription is cancelled.
func (s *Source) Receive(ctx context.Context) (broker.Delivery, error) {
	// Checked first so that a caller that is stopping does not take a
	// message only to give it back, which would spend one of its attempts.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !s.announced.Load() {
		s.announce()
	}
	b := s.b
	b.mu.Lock()
	for {
		switch {
		case s.closed:
			b.mu.Unlock()
			return nil, broker.ErrSourceClosed
		case s.cancelErr != nil:
			err := s.cancelErr
			b.mu.Unlock()
			return nil, fmt.Errorf("memory: subscription to %q: %w", s.q.name, err)
		case !s.paused && s.unacked < s.prefetch && s.q.ready.len() > 0:
			d := s.deliver(s.q.ready.popFront())
			b.mu.Unlock()
			return d, nil
		}
		ch := s.q.wait()
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		b.mu.Lock()
	}
}

// announce emits EventConnected once, on the first Receive. The subscription
// is active from Broker.Source on, but the hook is installed after that (the
// runtime installs it before its first Receive), so the first Receive is
// when the hook can learn of it, as it learns of a RabbitMQ or Kafka source
// subscribing on its first Receive.
func (s *Source) announce() {
	s.b.mu.Lock()
	first := !s.announced.Load()
	s.announced.Store(true)
	ok := first && !s.closed && s.cancelErr == nil
	s.b.mu.Unlock()
	if ok {
		s.emit(broker.Event{Kind: broker.EventConnected})
	}
}

// deliver hands e out. The caller holds b.mu.
func (s *Source) deliver(e *entry) *delivery {
	e.deliveries++
	d := &delivery{src: s, e: e, msg: copyMessage(&e.msg)}
	d.msg.Attempt = e.deliveries
	s.unacked++
	s.q.unacked++
	s.q.stats.Delivered++
	d.prev, d.next = s.out.prev, &s.out
	s.out.prev.next = d
	s.out.prev = d
	return d
}

// release removes d from the outstanding list. The caller holds b.mu.
func (s *Source) release(d *delivery) {
	d.prev.next = d.next
	d.next.prev = d.prev
	d.prev, d.next = nil, nil
	s.unacked--
	s.q.unacked--
}

// giveBack returns every outstanding delivery's message to the head of the
// queue, oldest at the head, and makes the deliveries stale. The caller holds
// b.mu and wakes the queue.
func (s *Source) giveBack() {
	for d := s.out.prev; d != &s.out; {
		prev := d.prev
		s.release(d)
		d.state = stateStale
		s.q.ready.pushFront(d.e)
		s.q.stats.Returned++
		d = prev
	}
}

// Close ends the subscription. Every outstanding delivery goes back to the
// head of the queue, to be redelivered (to another source) with Attempt+1;
// settling one afterwards returns an error wrapping broker.ErrStaleDelivery.
// Receive returns broker.ErrSourceClosed, and the event hook is not called
// once Close has returned. Close is idempotent and returns nil.
func (s *Source) Close(context.Context) error {
	b := s.b
	b.mu.Lock()
	if !s.closed {
		s.closed = true
		s.giveBack()
		s.q.sources--
		delete(b.sources, s)
		s.q.wake()
	}
	b.mu.Unlock()
	s.hookMu.Lock()
	s.hook = nil
	s.hookMu.Unlock()
	return nil
}

// Backlog implements broker.BacklogReporter: Messages is the number of ready
// messages of the source's queue (those handed out and not settled, and those
// waiting out a RequeueAfter delay, are not counted, as RabbitMQ counts
// messages_ready), Consumers the number of open sources of the queue, and
// Partitions is nil. It does not block; it returns ctx's error if ctx is done.
func (s *Source) Backlog(ctx context.Context) (broker.Backlog, error) {
	if err := ctx.Err(); err != nil {
		return broker.Backlog{}, err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return broker.Backlog{Messages: int64(s.q.ready.len()), Consumers: s.q.sources}, nil
}

// Pause stops Receive from handing out messages until Resume; a blocked
// Receive stays blocked. Outstanding deliveries stay valid and can be settled,
// as on a RabbitMQ channel whose consumer was cancelled. Pause never fails.
func (s *Source) Pause(context.Context) error {
	s.b.mu.Lock()
	s.paused = true
	s.b.mu.Unlock()
	return nil
}

// Resume undoes Pause, and also resubscribes a source cancelled by Cancel
// (emitting broker.EventConnected). It never fails.
func (s *Source) Resume(context.Context) error {
	s.b.mu.Lock()
	wasCancelled := s.cancelErr != nil && !s.closed
	s.paused = false
	s.cancelErr = nil
	s.q.wake()
	s.b.mu.Unlock()
	if wasCancelled {
		s.emit(broker.Event{Kind: broker.EventConnected})
	}
	return nil
}

// Status reports the source as connected unless it is closed or cancelled.
func (s *Source) Status() broker.Status {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	switch {
	case s.closed:
		return broker.Status{Err: broker.ErrSourceClosed}
	case s.cancelErr != nil:
		return broker.Status{Err: s.cancelErr}
	}
	return broker.Status{Connected: true}
}

// SetEventHook sets the function the source calls with its events:
// EventConnected on the first Receive (the hook should be set before it), and
// around the faults injected by DropConnection, Cancel and Resume
// (EventReconnecting, EventConnected, EventCancelled). The hook is called on
// the goroutine that called Receive or injected the fault, never with the
// broker's lock held, and never after Close returned.
func (s *Source) SetEventHook(f func(broker.Event)) {
	s.hookMu.Lock()
	s.hook = f
	s.hookMu.Unlock()
}

func (s *Source) emit(e broker.Event) {
	e.Time = time.Now()
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	if s.hook != nil {
		s.hook(e)
	}
}

// DropConnection simulates a dropped connection, for tests: every
// outstanding delivery of s becomes stale (settling it returns an error
// wrapping broker.ErrStaleDelivery and does nothing) and its message goes
// back to the head of the queue, to be redelivered with Attempt+1. The source
// "reconnects" at once: it emits EventReconnecting (Err ErrConnectionDropped)
// then EventConnected, and Receive goes on working. It does nothing after Close.
func (s *Source) DropConnection() {
	s.b.mu.Lock()
	if s.closed {
		s.b.mu.Unlock()
		return
	}
	s.giveBack()
	s.q.wake()
	s.b.mu.Unlock()
	s.emit(broker.Event{Kind: broker.EventReconnecting, Err: ErrConnectionDropped})
	s.emit(broker.Event{Kind: broker.EventConnected})
}

// Cancel simulates the broker cancelling the subscription (a deleted queue,
// a RabbitMQ basic.cancel), for tests. It emits EventCancelled with err
// (ErrCancelled if err is nil); then every outstanding delivery goes back to
// the queue and becomes stale, and Receive, including calls already blocked,
// returns an error wrapping err until Resume resubscribes. It does nothing
// after Close.
func (s *Source) Cancel(err error) {
	if err == nil {
		err = ErrCancelled
	}
	s.b.mu.Lock()
	closed := s.closed
	s.b.mu.Unlock()
	if closed {
		return
	}
	// Emitted before Receive can see the cancellation, so that whoever
	// handles Receive's error has seen the event first.
	s.emit(broker.Event{Kind: broker.EventCancelled, Err: err})
	s.b.mu.Lock()
	if !s.closed {
		s.cancelErr = err
		s.giveBack()
		s.q.wake()
	}
	s.b.mu.Unlock()
}

// Delivery states.
const (
	statePending uint8 = iota
	stateSettled
	stateStale
)

// delivery is one handed-out message. Its message is a copy owned by the
// consumer; the broker keeps the original in e. prev, next and state are
// guarded by Broker.mu.
type delivery struct {
	msg        broker.Message
	src        *Source
	e          *entry
	prev, next *delivery
	state      uint8
}

var (
	_ broker.Source          = (*Source)(nil)
	_ broker.Pauser          = (*Source)(nil)
	_ broker.StatusReporter  = (*Source)(nil)
	_ broker.EventSource     = (*Source)(nil)
	_ broker.BacklogReporter = (*Source)(nil)
	_ broker.Delivery        = (*delivery)(nil)
	_ broker.DelayedRequeuer = (*delivery)(nil)
	_ broker.Releaser        = (*delivery)(nil)
)

func (d *delivery) Message() *broker.Message { return &d.msg }

// Ack removes the message from the queue.
func (d *delivery) Ack(ctx context.Context) error {
	return d.settle(ctx, opAck, broker.Reason{}, 0)
}

// Requeue puts the message back at the head of the queue, where RabbitMQ
// would put it back (its original position, for the oldest message), so that
// it is the next to be delivered, with Attempt+1.
func (d *delivery) Requeue(ctx context.Context) error {
	return d.settle(ctx, opRequeue, broker.Reason{}, 0)
}

// Release gives back a delivery that no handler saw: the message goes back
// to the head of the queue and this delivery does not count as an attempt
// (its next delivery has the same Attempt), as RabbitMQ's nack-requeue of a
// delivery never handed to a handler keeps the message's place. The consumer
// runtime calls it for deliveries that arrive as intake stops.
func (d *delivery) Release(ctx context.Context) error {
	return d.settle(ctx, opRelease, broker.Reason{}, 0)
}

// RequeueAfter releases the delivery at once (it stops counting against
// prefetch) and makes the message ready again after delay, at the tail of the
// queue, like a message republished through a delay queue. delay <= 0 is
// Requeue.
func (d *delivery) RequeueAfter(ctx context.Context, delay time.Duration) error {
	if delay <= 0 {
		return d.settle(ctx, opRequeue, broker.Reason{}, 0)
	}
	return d.settle(ctx, opRequeueAfter, broker.Reason{}, delay)
}

// DeadLetter moves the message to DeadLetterQueue(queue), with the reason in
// its headers, and records it for Broker.DeadLetters.
func (d *delivery) DeadLetter(ctx context.Context, reason broker.Reason) error {
	return d.settle(ctx, opDeadLetter, reason, 0)
}

const (
	opAck = iota
	opRequeue
	opRequeueAfter
	opDeadLetter
	opRelease
)

func (d *delivery) settle(ctx context.Context, op int, reason broker.Reason, delay time.Duration) error {
	s := d.src
	b := s.b
	if err := b.settleDelay(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch d.state {
	case stateSettled:
		return fmt.Errorf("memory: message %s: %w", d.msg.ID, broker.ErrAlreadySettled)
	case stateStale:
		return fmt.Errorf("memory: message %s: %w", d.msg.ID, broker.ErrStaleDelivery)
	}
	d.state = stateSettled
	s.release(d)
	q, e := s.q, d.e
	d.e = nil // let an acked message be collected even if the delivery is kept
	switch op {
	case opAck:
		q.stats.Acked++
	case opRequeue:
		q.stats.Requeued++
		q.ready.pushFront(e)
	case opRelease:
		q.stats.Returned++
		e.deliveries-- // not an attempt: no handler saw it
		q.ready.pushFront(e)
	case opRequeueAfter:
		q.stats.Requeued++
		if q.delayed == nil {
			q.delayed = make(map[*entry]struct{})
		}
		q.delayed[e] = struct{}{}
		e.timer = time.AfterFunc(delay, func() { b.readyDelayed(q, e) })
	case opDeadLetter:
		q.stats.DeadLettered++
		if reason.Source == "" {
			reason.Source = q.name
		}
		if reason.Attempts == 0 {
			reason.Attempts = e.deliveries
		}
		dlq := b.queue(DeadLetterQueue(q.name))
		dm := e.msg // the Header map is replaced below; Key and Body are never written
		dm.Topic = dlq.name
		dm.Header = reason.Header(e.msg.Header)
		de := &entry{msg: dm}
		dlq.stats.Published++
		dlq.ready.pushBack(de)
		dm.Attempt = e.deliveries // the record keeps the attempt it was dead-lettered at
		dlq.recordDead(de, dm)
		dlq.wake()
	}
	// A settlement frees prefetch, and a requeue makes a message ready:
	// either may unblock a Receive.
	q.wake()
	return nil
}

// readyDelayed ends e's RequeueAfter delay. It runs on the timer's goroutine.
func (b *Broker) readyDelayed(q *queue, e *entry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := q.delayed[e]; !ok {
		return // Close already made it ready
	}
	delete(q.delayed, e)
	e.timer = nil
	q.ready.pushBack(e)
	q.wake()
}
