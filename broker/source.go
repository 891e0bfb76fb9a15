package broker

import (
	"context"
	"strconv"
	"time"
)

// A Source is what a broker adapter implements: a stream of deliveries.
//
// Receive must be safe for concurrent use: the runtime calls it from every
// worker goroutine at once. It blocks until a delivery is available or ctx is
// done, in which case it returns ctx's error (or an error wrapping it). A
// source that reconnects by itself keeps Receive blocked while it reconnects;
// it returns any other error only when it cannot go on, and should mark errors
// that restarting cannot fix with Fatal.
//
// Close stops intake for good, gives back to the broker every delivery the
// source holds that it has not handed out, and finishes the session (commits
// what was settled, leaves the consumer group). The runtime calls Close only
// after every delivery it received was settled or abandoned. Close is bounded
// by ctx, like net/http's Server.Shutdown: when ctx ends before Close is done,
// Close gives up what remains (a final commit, a group leave, the wait for a
// broker's answer), releases the source's connections and goroutines, and
// returns an error wrapping ctx's. Nothing is lost that way: what was not
// settled is delivered again, after the broker's session timeout at worst.
// After Close, Receive returns ErrSourceClosed. Close is idempotent; a second
// call returns once the first is done or its own ctx ends.
type Source interface {
	Receive(ctx context.Context) (Delivery, error)
	Close(ctx context.Context) error
}

// A Delivery is one message received from a Source, and the means to settle it.
// The runtime settles each delivery exactly once, with a context that is not
// the (possibly cancelled) run context but a fresh one bounded by the settle
// timeout.
//
// A delivery that outlived the connection or session it came on is stale: its
// Ack, Requeue and DeadLetter return an error wrapping ErrStaleDelivery and
// do nothing, and the broker redelivers the message.
type Delivery interface {
	// Message returns the message. It returns the same pointer every time.
	Message() *Message
	// Ack tells the broker the message was handled.
	Ack(ctx context.Context) error
	// Requeue gives the message back to the broker for another delivery.
	Requeue(ctx context.Context) error
	// DeadLetter moves the message to the dead-letter destination, with the
	// reason in its headers (see Reason.Header), and removes it from the source.
	DeadLetter(ctx context.Context, reason Reason) error
}

// A DelayedRequeuer is a Delivery that can give its message back to be
// redelivered after a delay, without holding a consumer slot while it waits.
// The runtime uses it when a handler error carries a retry-after delay
// (see retry.After).
type DelayedRequeuer interface {
	RequeueAfter(ctx context.Context, delay time.Duration) error
}

// A Releaser is a Delivery that can be given back without counting as an
// attempt. The runtime calls Release instead of Requeue for a delivery that no
// handler has seen: one that arrived just as intake stopped (Pause, drain).
// The broker should put the message back where it was (RabbitMQ: basic.nack
// with requeue; the memory broker: the head of the queue), and its next
// delivery must carry the same Attempt as this one. Errors are those of any
// settlement: ErrStaleDelivery or ErrAlreadySettled when there is nothing to
// give back, anything else is tried again with backoff. A Delivery that is
// not a Releaser is given back with Requeue.
type Releaser interface {
	Release(ctx context.Context) error
}

// A Leased delivery is valid only while a lease lasts, such as the Kafka
// consumer-group generation it was fetched in. Lease returns a context that
// the source cancels when it fences the delivery (the partition was given to
// another member); the runtime then cancels the handler's context with cause
// ErrStaleDelivery, so that work the source no longer owns stops instead of
// overlapping the new owner's.
type Leased interface {
	Lease() context.Context
}

// A Pauser is a Source that can stop and resume intake without closing, for
// example by cancelling its broker subscription. The runtime calls Pause when
// the consumer is paused and Resume when it resumes. A source that does not
// implement Pauser keeps what it prefetched while the consumer is paused.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// A StatusReporter is a Source that reports the state of its broker connection.
// Status must be cheap and must not block: Health calls it.
type StatusReporter interface {
	Status() Status
}

// Status is the connection state a StatusReporter reports.
type Status struct {
	// Connected is true when the source is connected and subscribed.
	Connected bool
	// Err is the reason the source is not connected, if any.
	Err error
}

// An EventSource is a Source that emits events (connected, reconnecting,
// cancelled…). The runtime installs a hook before the first Receive; the
// source must call it without blocking on it and must not call it after Close
// returned.
type EventSource interface {
	SetEventHook(func(Event))
}

// Reason says why a message is dead-lettered.
type Reason struct {
	// Err is the text of the last error.
	Err string `json:"error"`
	// Attempts is the number of deliveries the message had.
	Attempts int `json:"attempts"`
	// Source is the queue or topic the message came from.
	Source string `json:"source"`
	// Permanent is true when the error was permanent and not retried.
	Permanent bool `json:"permanent"`
	// Time is when the runtime gave up on the message.
	Time time.Time `json:"time,omitzero"`
}

// Header returns the reason as message headers (HeaderError and friends),
// merged over a copy of h. h is not modified.
func (r Reason) Header(h map[string]string) map[string]string {
	out := make(map[string]string, len(h)+5)
	for k, v := range h {
		out[k] = v
	}
	out[HeaderError] = r.Err
	out[HeaderAttempts] = strconv.Itoa(r.Attempts)
	out[HeaderSource] = r.Source
	out[HeaderPermanent] = strconv.FormatBool(r.Permanent)
	if !r.Time.IsZero() {
		out[HeaderFailedAt] = r.Time.UTC().Format(time.RFC3339Nano)
	}
	return out
}

// A TopologyDeclarer is a Source that can create, idempotently, the
// destinations it uses as its configuration describes them: the queue or
// topic, its dead-letter destination and its retry destinations. A source
// that is a TopologyDeclarer may also declare them by itself when it
// connects; DeclareTopology lets a program do it first, and fail early.
type TopologyDeclarer interface {
	DeclareTopology(ctx context.Context) error
}
