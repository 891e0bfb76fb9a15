package consumer

import (
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/errtree"
	"github.com/queuekit/queuekit/retry"
)

// The runtime calls into values users made: their errors' Error, Unwrap, Is
// and As methods, the observer, event hooks, codecs. None of those may take
// the process down (a panic on a worker goroutine would, with every message
// in flight), and none may make a message unsettleable. The functions here
// are the runtime's only ways into them.

// ErrorText returns err.Error(), or, when that panics, a text saying which
// error could not describe itself; "" for nil. The usual cause is a typed
// nil: a function returning a nil *MyErr as an error gives a non-nil error
// whose Error method dereferences a nil receiver. The runtime describes
// handler errors with it (dead-letter reasons, Health); middleware that
// records an error's text should too.
func ErrorText(err error) string { return errorText(err) }

func errorText(err error) (s string) {
	if err == nil {
		return ""
	}
	defer func() {
		if p := recover(); p != nil {
			if v := reflect.ValueOf(err); v.Kind() == reflect.Pointer && v.IsNil() {
				s = fmt.Sprintf("queuekit: the error is a nil %T (a typed nil returned as a non-nil error), whose Error method panicked: %v", err, p)
				return
			}
			s = fmt.Sprintf("queuekit: the Error method of %T panicked: %v", err, p)
		}
	}()
	return err.Error()
}

// safeError wraps an error whose Error method panics, so that whoever reads
// it later (a log handler, a hook, Health) gets errorText's description
// instead of a panic. Errors that describe themselves are returned as they are.
func safeError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := describes(err); ok {
		return err
	}
	return &undescribedError{text: errorText(err), err: err}
}

// describes calls err.Error() and reports whether it returned.
func describes(err error) (s string, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return err.Error(), true
}

// undescribedError is an error whose own Error method panics, wrapped with a
// text that says so. It does not unwrap to the original: its Is, As and
// Unwrap methods may panic just the same.
type undescribedError struct {
	text string
	err  error
}

func (e *undescribedError) Error() string { return e.text }

// handlerResult is what the runtime makes of an error returned by user code
// (a handler with its middleware, a batch handler's failure of a message)
// before it inspects it: the error itself, unless its Unwrap tree is
// unbounded (an Unwrap returning its own error, nested errors.Join of one
// error), which errors.Is and errors.As would walk for ever or until the
// stack overflows. Such an error is replaced by a plain one that keeps its
// text (bounded) and does not unwrap: an ordinary, retryable failure (see
// errtree.Bound). A single chain costs a few pointer steps.
func handlerResult(err error) error {
	if err == nil {
		return nil
	}
	return errtree.Bound(err)
}

// sameError reports whether a and b are the same error value; false where
// == would panic (an uncomparable dynamic type).
func sameError(a, b error) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// classify is verdict's view of a handler error: permanent, and the
// retry-after delay it asks for. errors.As walks the user's Unwrap and As
// methods, which may panic like Error: such an error is an ordinary failure.
func classify(err error) (permanent bool, delay time.Duration) {
	defer func() {
		if recover() != nil {
			permanent, delay = false, 0
		}
	}()
	if retry.IsPermanent(err) {
		return true, 0
	}
	if d, ok := retry.RetryAfter(err); ok && d > 0 {
		return false, d
	}
	return false, 0
}

// guarded returns f(), or fallback when f panics. It is for calls into user
// values off the per-message path (it costs a closure).
func guarded[T any](fallback T, f func() T) (v T) {
	defer func() {
		if recover() != nil {
			v = fallback
		}
	}()
	return f()
}

// safeIs is errors.Is, with a panic in the chain's methods reported as false,
// and so is an unbounded chain (see handlerResult).
func safeIs(err, target error) bool {
	if !errtree.Bounded(err) {
		return false
	}
	return guarded(false, func() bool { return errors.Is(err, target) })
}

// safeIsFatal is IsFatal, with a panic in the chain's methods reported as
// false, and so is an unbounded chain (see handlerResult).
func safeIsFatal(err error) bool {
	if !errtree.Bounded(err) {
		return false
	}
	return guarded(false, func() bool { return broker.IsFatal(err) })
}

// callHook calls a user hook with recover: a hook that panics loses its own
// call, nothing else. It returns the panic value, if any, for the caller to log.
func callHook[T any](f func(T), v T) (panicked any) {
	defer func() { panicked = recover() }()
	f(v)
	return nil
}
