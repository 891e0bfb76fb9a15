// Package middleware holds the standard handler wrappers of queuekit. Every
// middleware is a constructor returning a consumer.Middleware, even those with
// no arguments (Recover()), and they compose with consumer.Chain, where the
// first listed is the outermost.
//
// # Recommended order
//
//	h = consumer.Chain(
//		middleware.Log(logger),          // one line per delivery, with the final outcome
//		middleware.Metrics(recorder),    // one observation per delivery, retries included
//		middleware.Recover(),            // a panic below becomes a *consumer.PanicError
//		middleware.Retry(policy),        // in-process retries of transient errors
//		middleware.Timeout(time.Second), // innermost: bounds each attempt, not the sum
//	)(handler)
//
// Why this order: Log and Metrics outside Retry report one line and one
// observation per delivery (put them inside Retry to see each attempt
// instead). Recover inside them turns a panic into an error they can see; a
// panic unwinding through them would skip their reporting (the runtime still
// recovers it, as a last line of defence). Recover outside Retry means a panic
// is not retried in process: it fails the delivery, which the broker redelivers
// within the budget. Timeout inside Retry gives every attempt its own
// deadline; outside, the first slow attempt would use up the time of all the
// others (Watermill issue #467).
//
// # Rate limit
//
// RateLimit lets messages reach the handler at most at a rate, with the
// token bucket of golang.org/x/time/rate: one limiter per consumer, or one
// per key (a tenant, a customer), the number kept bounded (MaxKeys) and the
// keys' bytes too (a long key is kept as a digest). Once MaxKeys limiters
// are kept, a key without one starts with an empty bucket, so that cycling
// through more keys than MaxKeys gets no key past its rate: see
// RateLimitConfig.MaxKeys. It takes a config and may return an error, so
// build it before the chain:
//
//	rl, err := middleware.RateLimit(middleware.RateLimitConfig{Rate: 50, Burst: 10, OnWait: rec.OnWait})
//	h = consumer.Chain(middleware.Log(logger), middleware.Metrics(recorder), middleware.Recover(),
//		rl, middleware.Retry(policy), middleware.Timeout(time.Second))(handler)
//
// Put it outside Timeout, so that the wait does not use up the handler's
// time, and outside Retry: a delivery takes one token, however many
// in-process attempts it makes (inside Retry, a wait cut short would be
// retried). Log and Metrics outside it count the wait in the handler's
// duration; OnWait reports the wait alone. A waiting message holds its
// worker: with a low rate, a few workers are enough.
//
// A wait never delays a stop: when the consumer pauses, trips or drains
// (consumer.IntakeStopped) or the handler's context ends, the wait ends at
// once, its token goes back to the bucket, and the message goes back to the
// broker without spending an attempt (the error wraps
// consumer.ErrNotHandled).
//
// # Context
//
// Middleware passes the context down and never stores it. Retry gives each
// attempt a child context; Timeout cancels its context with cause
// ErrHandlerTimeout. The handler's context is also cancelled by the runtime at
// the drain deadline, with cause consumer.ErrDrainTimeout, and Retry stops
// retrying then.
//
// # Errors
//
// Middleware returns errors; it never acknowledges. Settlement is the
// runtime's job: see consumer.Consumer. Outcome classifies errors the same way
// for logs and metrics.
package middleware
