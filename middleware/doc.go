// Package middleware holds the standard handler wrappers of queuekit. Every
// middleware is a constructor returning a consumer.Middleware, even those with
// no arguments (Recover()), and they compose with consumer.Chain, where the
// first listed is the outermost.
//
// # Recommended order
//
//	h = consumer.Chain(
//		middleware.Recover(),            // outermost: a panic anywhere below becomes an error
//		middleware.Log(logger),          // sees the final outcome of all in-process attempts
//		middleware.Metrics(recorder),    // one measurement per delivery, including retries
//		middleware.Retry(policy),        // in-process retries of transient errors
//		middleware.Timeout(time.Second), // innermost: bounds each attempt, not the sum
//	)(handler)
//
// Why this order: Recover must be outside everything it protects. Log and
// Metrics outside Retry report one line and one observation per delivery
// (put them inside Retry to see each attempt instead). Timeout inside Retry
// gives every attempt its own deadline; outside, the first slow attempt would
// use up the time of all the others (Watermill issue #467).
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
