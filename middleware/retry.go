package middleware

import (
	"context"
	"errors"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/internal/errtree"
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
// shutdown is not held up by in-process retries. A failure whose retries
// were cut short that way is returned wrapping consumer.ErrNotHandled as
// well as the last error: the runtime gives the message back without
// spending an attempt (the policy would have tried again; a deploy must not
// dead-letter a message on its last delivery that one more try would have
// handled). An error wrapping consumer.ErrNotHandled (a RateLimit inside
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
			if err != nil {
				// An error whose Unwrap tree is unbounded (a cycle) would
				// make errors.Is below walk for ever: it becomes a plain,
				// retryable error (as the runtime does, see errtree).
				err = errtree.Bound(err)
			}
			if err == nil || retry.IsPermanent(err) || ctx.Err() != nil || errors.Is(err, consumer.ErrNotHandled) {
				return err
			}
			stopped := consumer.IntakeStopped(ctx)
			if closed(stopped) {
				return &cutShortError{err}
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
			err = retry.Do(wctx, p, func(context.Context) error {
				if first { // Do's first call stands for the attempt that already failed
					first = false
					return err
				}
				actx, cancel := context.WithCancel(ctx)
				defer cancel()
				err := errtree.Bound(next.Handle(actx, m))
				if errors.Is(err, consumer.ErrNotHandled) {
					stop() // not a failure to retry: the work was not done
				}
				return err
			})
			if err != nil && ctx.Err() == nil && closed(stopped) && !retry.IsPermanent(err) && !errors.Is(err, consumer.ErrNotHandled) {
				return &cutShortError{err}
			}
			return err
		})
	}
}

// closed reports whether c is closed; a nil c (outside a consumer) never is.
func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// cutShortError is a failure whose in-process retries stopped because the
// consumer's intake stopped. It wraps both the last error and
// consumer.ErrNotHandled, so that the runtime gives the message back
// without spending an attempt.
type cutShortError struct{ err error }

func (e *cutShortError) Error() string {
	return e.err.Error() + " (in-process retries cut short: intake stopped)"
}

func (e *cutShortError) Unwrap() []error { return []error{e.err, consumer.ErrNotHandled} }
