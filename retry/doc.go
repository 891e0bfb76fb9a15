// Package retry holds backoff policies and error classification for queuekit,
// built on github.com/cenkalti/backoff/v4.
//
// There is one entry point, Do, which runs an operation under a Policy:
//
//	err := retry.Do(ctx, retry.MaxAttempts(retry.Exponential(100*time.Millisecond, 5*time.Second), 5), op)
//
// # Policies
//
// Exponential (with full jitter) and Constant say how long to wait; MaxAttempts
// and MaxElapsed say when to stop. A Policy is an immutable value, safe to share
// between goroutines and to keep in a package variable: it hands out a fresh
// backoff.BackOff for every operation, because a BackOff is not safe to share.
//
// # Errors
//
// An operation classifies its own errors:
//
//   - Permanent(err): retrying cannot help (bad payload, validation). Do returns
//     at once, and the consumer runtime dead-letters the message on its first
//     delivery. IsPermanent reports it.
//   - After(err, d): retry, but not before d (a downstream said "slow down").
//     Do waits d instead of the policy's delay; the runtime requeues with that
//     delay where the broker supports it. RetryAfter reads it.
//   - any other error: retry under the policy.
//
// # Context
//
// Do passes ctx to every attempt and never sleeps past ctx's deadline: when the
// next attempt could not start in time, Do returns the last error at once
// rather than waiting to be cancelled.
package retry
