package broker

import "errors"

// Errors of the adapter contract.
var (
	// ErrStaleDelivery is returned when settling a delivery that outlived the
	// connection, channel or generation it came on. The broker redelivers it.
	ErrStaleDelivery = errors.New("queuekit: stale delivery")
	// ErrSourceClosed is returned by Receive after Close.
	ErrSourceClosed = errors.New("queuekit: source closed")
	// ErrAlreadySettled is returned when a delivery is settled twice.
	ErrAlreadySettled = errors.New("queuekit: delivery already settled")
	// ErrInvalidConfig is wrapped by every configuration error from a
	// constructor, of an adapter or of the runtime. Such errors are fatal: a
	// Supervisor does not restart a runner that fails with one.
	ErrInvalidConfig = errors.New("queuekit: invalid configuration")
	// ErrPublisherClosed is returned by Publish after the Publisher's Close.
	ErrPublisherClosed = errors.New("queuekit: publisher closed")
)

// FatalError marks an error that restarting cannot fix, such as invalid
// configuration or a broker refusing access. A Supervisor does not restart a
// runner that fails with a FatalError: it stops all runners and returns it.
type FatalError struct {
	Err error
}

// Fatal marks err as fatal. Fatal(nil) is nil.
func Fatal(err error) error {
	if err == nil {
		return nil
	}
	return &FatalError{Err: err}
}

// Error returns the wrapped error's text.
func (e *FatalError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *FatalError) Unwrap() error { return e.Err }

// IsFatal reports whether err is marked with Fatal anywhere in its chain, or
// wraps ErrInvalidConfig.
func IsFatal(err error) bool {
	var fe *FatalError
	return errors.As(err, &fe) || errors.Is(err, ErrInvalidConfig)
}
