package consumer

import (
	"errors"
	"fmt"
)

// Errors of the runtime.
var (
	// ErrConsumerClosed is returned by Run after Shutdown or Close, like
	// net/http's ErrServerClosed.
	ErrConsumerClosed = errors.New("queuekit: consumer closed")
	// ErrDrainTimeout is the cause of a handler context cancelled because
	// the drain deadline passed. Read it with context.Cause.
	ErrDrainTimeout = errors.New("queuekit: drain deadline exceeded")
	// ErrAlreadyRunning is returned by Run while another Run of the same
	// consumer is in progress.
	ErrAlreadyRunning = errors.New("queuekit: consumer already running")
	// ErrUnknownRunner is returned by Supervisor.Pause and Resume for a
	// name that was never added.
	ErrUnknownRunner = errors.New("queuekit: unknown runner")
	// ErrNotPausable is returned by Supervisor.Pause and Resume for a runner
	// that cannot pause.
	ErrNotPausable = errors.New("queuekit: runner cannot pause")
	// ErrNotHandled is returned, wrapped, by a handler or middleware that
	// did not do the message's work because the consumer's intake stopped
	// while it waited (a rate limit's wait cut short by IntakeStopped).
	// When the intake the message was received under has stopped by the
	// time the handler returns (Pause, a kill-switch trip, the drain), the
	// runtime gives the message back with Release: SettledGiveBack, no
	// attempt spent, counted in Stats.GivenBack, not in Stats.Failed. While
	// that intake is still open it is an ordinary failure, which spends an
	// attempt, so that a message can never loop on it.
	ErrNotHandled = errors.New("queuekit: message not handled: intake stopped")
)

// isFailure reports whether a handler's err says the work failed in a way
// another try may mend: not nil, not permanent (retry.Permanent: the message
// is bad, not the dependency) and not ErrNotHandled (the work was not
// tried). The kill switch counts these by default, and an adaptive limiter
// is told of them.
func isFailure(err error) bool {
	if err == nil {
		return false
	}
	permanent, _ := classify(err)
	return !permanent && !safeIs(err, ErrNotHandled)
}

// PanicError is a handler panic turned into an error, by the runtime or by
// middleware.Recover. The message is treated as failed, like any other error:
// it is redelivered within the budget, then dead-lettered with the panic text.
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
	// Stack is the goroutine stack at the panic.
	Stack []byte
}

// Error returns "panic: " and the panic value.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Unwrap returns Value if it is an error, so errors.Is sees through a
// panic(err).
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
