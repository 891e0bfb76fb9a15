package middleware

import (
	"context"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// ErrHandlerTimeout is the cause of a handler context cancelled by Timeout.
var ErrHandlerTimeout = fmt.Errorf("queuekit: handler timeout")

// Timeout returns middleware that bounds each call of the handlers inside it
// to d: their context is cancelled with cause ErrHandlerTimeout after d. When
// the handler returns an error after its time is up, Timeout returns an error
// wrapping both ErrHandlerTimeout and the handler's error. Put it inside
// Retry, so that it bounds each attempt. A d of zero or less means no limit.
func Timeout(d time.Duration) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		if d <= 0 {
			return next
		}
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			tctx, cancel := context.WithTimeoutCause(ctx, d, ErrHandlerTimeout)
			defer cancel()
			err := next.Handle(tctx, m)
			if err != nil && ctx.Err() == nil && context.Cause(tctx) == ErrHandlerTimeout {
				return fmt.Errorf("%w after %v: %w", ErrHandlerTimeout, d, err)
			}
			return err
		})
	}
}
