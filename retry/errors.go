package retry

import (
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
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
// Permanent. backoff/v4's own PermanentError counts too.
func IsPermanent(err error) bool {
	if err == nil {
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
func RetryAfter(err error) (time.Duration, bool) {
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		return ra.Delay, true
	}
	return 0, false
}
