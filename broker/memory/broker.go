package memory

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// ErrBrokerClosed is returned by Publish and Source after Broker.Close.
var ErrBrokerClosed = errors.New("memory: broker closed")

// ErrConnectionDropped is the error of the EventReconnecting emitted by
// Source.DropConnection.
var ErrConnectionDropped = errors.New("memory: connection dropped")

// A Broker is an in-process broker of named queues, with the semantics of a
// real one: prefetch, acknowledgement, requeue with a delivery count, a
// dead-letter queue per queue, and fault injection for tests.
//
// A Broker is safe for concurrent use. Use NewBroker; the zero value is not
// usable. Queues are created on first use (Publish or Source) and live as long
// as the Broker. After Close, Publish and Source return ErrBrokerClosed.
type Broker struct {
	ackDelay atomic.Int64 // time.Duration; read without the lock on every settlement

	// mu guards every queue, source and outstanding delivery of the broker.
	// One lock keeps each operation to a single lock round trip; the broker
	// does no I/O, so nothing slow ever runs under it (hooks run outside).
	mu      sync.Mutex
	queues  map[string]*queue
	sources map[*Source]struct{}
	closed  bool
}

// NewBroker returns an empty Broker.
func NewBroker() *Broker {
	return &Broker{queues: make(map[string]*queue), sources: make(map[*Source]struct{})}
}

// DeadLetterQueue returns the name of the dead-letter queue of queue:
// queue + ".dlq". It is an ordinary queue that can be consumed.
func DeadLetterQueue(queue string) string { return queue + ".dlq" }

// QueueStats counts what happened to a queue.
type QueueStats struct {
	// Ready counts messages waiting to be delivered.
	Ready int
	// Unacked counts messages handed out and not yet settled.
	Unacked int
	// Delayed counts messages waiting out a RequeueAfter delay.
	Delayed int
	// Consumers counts the open sources of the queue.
	Consumers int
	// Published counts messages published to the queue (for a dead-letter
	// queue, messages dead-lettered into it).
	Published int
	// Delivered counts deliveries handed out, redeliveries included.
	Delivered int
	// Acked counts acknowledged deliveries.
	Acked int
	// Requeued counts deliveries given back by Requeue or RequeueAfter.
	Requeued int
	// Returned counts deliveries given back by the broker because their
	// source closed, was cancelled or dropped its connection, and deliveries
	// given back unhandled by Release.
	Returned int
	// DeadLettered counts messages moved to DeadLetterQueue(queue).
	DeadLettered int
	// Redriven and Purged count, for a dead-letter queue, the dead letters
	// that DeadLetters.Redrive sent back and DeadLetters.Purge deleted (see
	// Broker.DeadLettersOf). Ready, of a dead-letter queue, does not count
	// them any more.
	Redriven int
	Purged   int
}

// queue returns the named queue, creating it. The caller holds b.mu.
func (b *Broker) queue(name string) *queue {
	q := b.queues[name]
	if q == nil {
		q = &queue{name: name}
		b.queues[name] = q
	}
	return q
}

// Publish appends copies of msgs to queue, in order, creating the queue on
// first use: all of them or, on error, none. Each copy's Topic is queue; its
// ID is "<queue>-<n>" (n counting from 1) if the message's ID is empty, and
// its Time is now if the message's Time is zero; Attempt is ignored. Publish
// has the signature of broker.Publisher's (see Publisher for one with a Close
// of its own). It returns ctx's error if ctx is done, an error wrapping
// broker.ErrInvalidConfig for an empty queue name or a nil message, and
// ErrBrokerClosed after Close.
func (b *Broker) Publish(ctx context.Context, queue string, msgs ...*broker.Message) error {
	return b.publish(ctx, nil, queue, msgs)
}

// publish is Publish, refused once p (if not nil) is closed.
func (b *Broker) publish(ctx context.Context, p *Publisher, queue string, msgs []*broker.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if queue == "" {
		return fmt.Errorf("memory: publish: %w: empty queue name", broker.ErrInvalidConfig)
	}
	now := time.Now()
	entries := make([]*entry, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("memory: publish: %w: message %d is nil", broker.ErrInvalidConfig, i)
		}
		e := &entry{msg: copyMessage(m)}
		e.msg.Topic = queue
		e.msg.Attempt = 0
		if e.msg.Time.IsZero() {
			e.msg.Time = now
		}
		entries[i] = e
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case p != nil && p.closed:
		return fmt.Errorf("memory: publish to %q: %w", queue, broker.ErrPublisherClosed)
	case b.closed:
		return ErrBrokerClosed
	}
	q := b.queue(queue)
	dlq := isDeadLetterQueue(queue)
	for _, e := range entries {
		q.seq++
		if e.msg.ID == "" {
			e.msg.ID = messageID(queue, q.seq)
		}
		q.stats.Published++
		q.ready.pushBack(e)
		if dlq {
			q.recordDead(e, e.msg)
		}
	}
	q.wake()
	return nil
}

// messageID returns "<queue>-<seq>" in one allocation (concatenating
// FormatUint's string would make two).
func messageID(queue string, seq uint64) string {
	var a [64]byte
	buf := append(a[:0], queue...)
	buf = append(buf, '-')
	return string(strconv.AppendUint(buf, seq, 10))
}

// Stats returns the counters of queue. A queue never used has zero stats.
func (b *Broker) Stats(queue string) QueueStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[queue]
	if q == nil {
		return QueueStats{}
	}
	s := q.stats
	s.Ready = q.ready.len()
	s.Unacked = q.unacked
	s.Delayed = len(q.delayed)
	s.Consumers = q.sources
	return s
}

// DeadLetters returns copies of the dead letters of queue: the messages
// dead-lettered from it and those published to DeadLetterQueue(queue)
// directly, in the order they arrived, with the reason in their headers (see
// broker.Reason.Header). It is a record kept by the broker: consuming
// DeadLetterQueue(queue) does not change it; a dead letter leaves it when it
// is redriven or purged (see DeadLettersOf). A message dead-lettered by
// Delivery.DeadLetter has the Attempt it was delivered with.
func (b *Broker) DeadLetters(queue string) []broker.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[DeadLetterQueue(queue)]
	if q == nil {
		return nil
	}
	out := make([]broker.Message, 0, len(q.dead)-q.deadRemoved)
	for _, r := range q.dead {
		if !r.removed {
			out = append(out, copyMessage(&r.msg))
		}
	}
	return out
}

// SetAckDelay makes every later Ack, Requeue, RequeueAfter and DeadLetter
// wait d before it takes effect, to simulate a slow broker. If the settling
// call's context ends first, the call returns the context's error and the
// delivery stays unsettled: it is redelivered when its source closes.
// d <= 0 removes the delay.
func (b *Broker) SetAckDelay(d time.Duration) { b.ackDelay.Store(int64(max(d, 0))) }

// Close closes every source of the broker (their outstanding deliveries go
// back to their queues) and makes every message waiting out a RequeueAfter
// delay ready at once, so that nothing is lost and no timer outlives the
// broker. Later Publish and Source calls return ErrBrokerClosed; the
// counters, Stats and DeadLetters stay readable. Close is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	b.closed = true
	srcs := make([]*Source, 0, len(b.sources))
	for s := range b.sources {
		srcs = append(srcs, s)
	}
	for _, q := range b.queues {
		for e := range q.delayed {
			e.timer.Stop()
			e.timer = nil
			q.ready.pushBack(e)
		}
		clear(q.delayed)
		q.wake()
	}
	b.mu.Unlock()
	for _, s := range srcs {
		s.Close(context.Background())
	}
	return nil
}

// settleDelay waits out the ack delay, if any.
func (b *Broker) settleDelay(ctx context.Context) error {
	d := time.Duration(b.ackDelay.Load())
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// copyMessage returns a deep copy of m. Key and Body share one allocation.
func copyMessage(m *broker.Message) broker.Message {
	c := *m
	if n := len(m.Key) + len(m.Body); n > 0 {
		buf := make([]byte, n)
		k := copy(buf, m.Key)
		copy(buf[k:], m.Body)
		c.Key, c.Body = nil, nil
		if m.Key != nil {
			c.Key = buf[:k:k]
		}
		if m.Body != nil {
			c.Body = buf[k:]
		}
	} else {
		// Empty but non-nil: keep it so, without sharing a backing array.
		if m.Key != nil {
			c.Key = m.Key[:0:0]
		}
		if m.Body != nil {
			c.Body = m.Body[:0:0]
		}
	}
	if m.Header != nil {
		c.Header = maps.Clone(m.Header)
	}
	return c
}
