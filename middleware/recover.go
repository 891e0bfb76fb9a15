package middleware

import (
	"context"
	"runtime/debug"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Recover returns middleware that turns a panic in the handlers inside it into
// a *consumer.PanicError carrying the panic value and the stack. The message
// then fails like any other: it is retried within the budget and
// dead-lettered with the panic text. Put it inside Log and Metrics, so that
// they see the panic as an error (see the package doc for the order).
//
// The runtime recovers panics too, as a last line of defence, so a panic in
// middleware outside Recover is still contained to its message.
func Recover() consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = &consumer.PanicError{Value: p, Stack: debug.Stack()}
				}
			}()
			return next.Handle(ctx, m)
		})
	}
}
