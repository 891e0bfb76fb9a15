package retry

import (
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/queuekit/queuekit/internal/errtree"
)

// PermanentError marks an error that retrying cannot fix, such as a payload
// that does not decode. Do returns it at once; the consumer runtime
// dead-letters the message on its first delivery.
type PermanentError struct {
	Err error
}

// Permanent marks err as permanent. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// Error returns the wrapped error's text.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// IsPermanent reports whether err, or any error it wraps, was marked with
// Permanent. backoff/v4's own PermanentError counts too. An error whose
// Unwrap tree is unbounded (an Unwrap that returns its own error, a cycle
// through Unwrap() []error, nested errors.Join of one error: more than
// 131,072 paths, which errors.As would walk for ever or until the stack
// overflows) is not permanent: its tree is not walked.
func IsPermanent(err error) bool {
	if err == nil || !errtree.Bounded(err) {
		return false
	}
	var pe *PermanentError
	if errors.As(err, &pe) {
		return true
	}
	var bpe *backoff.PermanentError
	return errors.As(err, &bpe)
}

// RetryAfterError is an error that asks to be retried after a delay, for
// example because a downstream service answered 429 with Retry-After.
type RetryAfterError struct {
	Err   error
	Delay time.Duration
}

// After marks err as retryable after delay d: Do waits d (instead of the
// policy's backoff) before the next attempt, and the consumer runtime requeues
// the message with that delay where the broker supports it. After(nil, d) is nil.
func After(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	if d < 0 {
		d = 0
	}
	return &RetryAfterError{Err: err, Delay: d}
}

// Error returns the wrapped error's text.
func (e *RetryAfterError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns the delay asked for with After anywhere in err's chain.
// An unbounded chain (see IsPermanent) asks for none.
func RetryAfter(err error) (time.Duration, bool) {
	if err == nil || !errtree.Bounded(err) {
		return 0, false
	}
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		return ra.Delay, true
	}
	return 0, false
}
