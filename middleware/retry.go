package middleware

import (
	"context"
	"errors"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Retry returns middleware that retries a failing handler in process, under
// policy p (nil means retry.Default), before the error reaches the runtime.
// Every attempt has a context of its own: the first runs on the handler's
// context, and each retry on a fresh child of it, cancelled when that retry
// returns. Nothing an attempt does to its context (a Timeout inside Retry
// expiring, say) reaches the next one, so a Timeout inside Retry limits each
// attempt, not the sum. (The first attempt does not get a child context of
// its own because that would cost several allocations per message on the
// path where nothing fails.)
// Permanent errors (retry.Permanent) are not retried; retry.After delays are
// honoured; Retry never sleeps past the handler context's deadline and stops
// when that context is done (for example at the drain deadline).
//
// Retry also stops when the consumer's intake stops (consumer.IntakeStopped:
// Pause, a kill-switch trip, the drain): an attempt already running finishes,
// but no further attempt starts and no backoff is waited out, so that a
// shutdown is not held up by in-process retries; the last error goes to the
// runtime, which requeues the message (or, for a kill switch that tripped,
// gives it back). An error wrapping consumer.ErrNotHandled (a RateLimit inside
// Retry whose wait was cut short) is never retried.
//
// In-process retries hold a consumer slot while they wait. Keep them short and
// few, and leave longer waits to the broker's redelivery (the delivery budget)
// or to delayed requeue.
func Retry(p retry.Policy) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			// The first attempt is made here rather than inside retry.Do so
			// that the common case, success at once, allocates nothing.
			err := next.Handle(ctx, m)
			if err == nil || retry.IsPermanent(err) || ctx.Err() != nil || errors.Is(err, consumer.ErrNotHandled) {
				return err
			}
			stopped := consumer.IntakeStopped(ctx)
			select {
			case <-stopped:
				return err
			default:
			}
			// Do waits and decides on wctx, which also ends when intake
			// stops; the attempts run on children of ctx, so that an
			// attempt running when intake stops is not cut short by it.
			wctx, stop := context.WithCancel(ctx)
			defer stop()
			if stopped != nil {
				go func() {
					select {
					case <-stopped:
						stop()
					case <-wctx.Done():
					}
				}()
			}
			first := true
			return retry.Do(wctx, p, func(context.Context) error {
				if first { // Do's first call stands for the attempt that already failed
					first = false
					return err
				}
				actx, cancel := context.WithCancel(ctx)
				defer cancel()
				err := next.Handle(actx, m)
				if errors.Is(err, consumer.ErrNotHandled) {
					stop() // not a failure to retry: the work was not done
				}
				return err
			})
		})
	}
}
