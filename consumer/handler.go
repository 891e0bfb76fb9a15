package consumer

import (
	"context"

	"github.com/queuekit/queuekit/broker"
)

// A Handler processes one message.
//
// Handle returns nil when the message was handled: the runtime then
// acknowledges it. A non-nil error means the message was not handled: the
// runtime gives it back to the broker for another delivery, until the delivery
// budget is spent, and then dead-letters it with the error text. An error
// marked with retry.Permanent is dead-lettered at once. An error wrapping
// ErrNotHandled, returned once the intake the message came in under has
// stopped (see IntakeStopped), gives the message back without spending an
// attempt.
//
// ctx is cancelled when the handler must give up: at the drain deadline (cause
// ErrDrainTimeout), when the consumer is closed, or when the source fenced
// the delivery (a Kafka partition given to another member: cause
// broker.ErrStaleDelivery, see broker.Leased). A handler that returns after
// its ctx is done has its message redelivered, whatever it returns.
//
// ctx does not end when the handler returns: it is shared with the
// handler's later messages (one context per intake, and on Kafka per worker
// and consumer-group generation, so that a message costs no context of its
// own). What a handler ties to it — context.AfterFunc, a goroutine waiting
// for Done, a transaction begun with it — lasts until then unless the
// handler ends it itself; derive a context with context.WithCancel and
// cancel it before returning to bound such work to one message.
type Handler interface {
	Handle(ctx context.Context, m *broker.Message) error
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, m *broker.Message) error

// Handle calls f(ctx, m).
func (f HandlerFunc) Handle(ctx context.Context, m *broker.Message) error { return f(ctx, m) }

// Middleware wraps a Handler with behaviour that runs around it.
type Middleware func(Handler) Handler

// Chain composes middleware: the first listed is the outermost, so
// Chain(a, b, c)(h) is a(b(c(h))).
func Chain(mw ...Middleware) Middleware {
	return func(h Handler) Handler {
		for i := len(mw) - 1; i >= 0; i-- {
			if mw[i] != nil {
				h = mw[i](h)
			}
		}
		return h
	}
}

type nameKey struct{}

// NameFromContext returns the name of the consumer (WithName) whose handler
// got ctx, for logs and metrics. It reports false outside a handler.
func NameFromContext(ctx context.Context) (string, bool) {
	name, ok := ctx.Value(nameKey{}).(string)
	return name, ok
}

type intakeKey struct{}

// IntakeStopped returns, in a handler's ctx (or a context derived from it),
// a channel that is closed when the intake the message was received under
// stops: the consumer was paused, its kill switch tripped, or it began to
// drain. The handler's ctx itself is not cancelled then (in-flight work is
// allowed to finish); IntakeStopped is for work that has not begun, such as
// a wait for a rate limiter's token, which should then give up and return an
// error wrapping ErrNotHandled so that the message is given back unspent.
//
// Outside a handler's context it returns a nil channel, which blocks
// forever in a select.
func IntakeStopped(ctx context.Context) <-chan struct{} {
	if in, ok := ctx.Value(intakeKey{}).(*intake); ok && in.ctx != nil {
		return in.ctx.Done()
	}
	return nil
}
