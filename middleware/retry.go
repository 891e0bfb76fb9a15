package middleware

import (
	"context"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Retry returns middleware that retries a failing handler in process, under
// policy p (nil means retry.Default), before the error reaches the runtime.
// Each attempt runs with a context of its own, a child of the handler's,
// cancelled when the attempt returns, so that an attempt's leftovers cannot
// outlive it and a Timeout inside Retry limits each attempt, not the sum.
// Permanent errors (retry.Permanent) are not retried; retry.After delays are
// honoured; Retry never sleeps past the handler context's deadline and stops
// when that context is done (for example at the drain deadline).
//
// In-process retries hold a consumer slot while they wait. Keep them short and
// few, and leave longer waits to the broker's redelivery (the delivery budget)
// or to delayed requeue.
func Retry(p retry.Policy) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
			return retry.Do(ctx, p, func(ctx context.Context) error {
				actx, cancel := context.WithCancel(ctx)
				defer cancel()
				return next.Handle(actx, m)
			})
		})
	}
}
