package middleware

import (
	"context"
	"runtime/debug"

	"github.com/queuekit/queuekit/consumer"
)

// Recover returns middleware that turns a panic in the handlers inside it into
// a *consumer.PanicError carrying the panic value and the stack. The message
// then fails like any other: it is retried within the budget and
// dead-lettered with the panic text. Put it outermost, so that it also catches
// panics in the other middleware.
//
// The runtime recovers panics too, as a last line of defence; Recover exists
// so that the middleware outside it (Log, Metrics) sees the panic as an error.
func Recover() consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = &consumer.PanicError{Value: p, Stack: debug.Stack()}
				}
			}()
			return next.Handle(ctx, m)
		})
	}
}
