package main

import (
	"context"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// retryLater sends a failed message back through the broker's delayed-retry
// queue instead of requeueing it at once: the runtime gives it back with
// RequeueAfter, so it waits at least base, 2×base, 4×base… (at most max) in
// the retry queue before its next delivery, and no worker is held while it
// waits. At least, not exactly: the retry queue is one queue with a
// per-message TTL, and RabbitMQ expires messages only at its head, so a
// message with a short delay can wait behind one with a longer delay.
// Permanent errors pass through (the runtime dead-letters them at once), and
// so do errors that carry their own retry.After delay. On the last delivery
// of the budget the runtime dead-letters the message, whatever the delay.
//
// Put it outside Recover, so that panics are delayed too.
func retryLater(base, max time.Duration) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			err := next.Handle(ctx, m)
			if err == nil || retry.IsPermanent(err) {
				return err
			}
			if _, ok := retry.RetryAfter(err); ok {
				return err
			}
			return retry.After(err, backoff(base, max, m.Attempt))
		})
	}
}

// backoff returns the delay after the given failed attempt: base, 2×base,
// 4×base…, at most max.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}
