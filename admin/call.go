package admin

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Calls into user values (a runner's DeadLetters, a broker adapter, a
// BacklogReporter, their errors' Error methods) may panic, return a typed
// nil error, or block past their context. Every such call the handler makes
// goes through call: on a goroutine of its own, with a recover, its error
// described with consumer.ErrorText (and redacted) on that goroutine, and
// abandoned at the request's deadline (Config.Timeout) even when the method
// does not return: the abandoned goroutine finishes on its own.
//
// So that calls that never return cannot pile up (the index refreshes
// every 15 s), at most maxOutstanding calls per runner may be running at
// once, answered or abandoned; a call past that waits for one of them to
// return, until the request's deadline, and then fails with errBusy
// without starting anything.

// maxOutstanding bounds the running broker calls of one runner.
const maxOutstanding = 8

// errBusy is the error of a call refused because the runner's broker has
// maxOutstanding calls still running.
var errBusy = fmt.Errorf("queuekit: admin: %d earlier calls to this runner's broker have not returned within Config.Timeout; try again later: %w", maxOutstanding, context.DeadlineExceeded)

// gates holds the per-runner semaphores.
type gates struct {
	mu sync.Mutex
	m  map[string]chan struct{} // bounded: one per runner name the Supervisor knows
}

func (g *gates) acquire(ctx context.Context, runner string) (release func(), ok bool) {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[string]chan struct{})
	}
	c := g.m[runner]
	if c == nil {
		c = make(chan struct{}, maxOutstanding)
		g.m[runner] = c
	}
	g.mu.Unlock()
	select {
	case c <- struct{}{}:
		return func() { <-c }, true
	case <-ctx.Done():
		return nil, false
	}
}

// callError is an error whose text was read (safely) on the goroutine that
// produced it: reading it again cannot panic.
type callError struct {
	text string
	err  error
}

func (e *callError) Error() string { return e.text }
func (e *callError) Unwrap() error { return e.err }

// safeErr returns err with a text that cannot panic and shows no password.
func safeErr(err error) error {
	if err == nil {
		return nil
	}
	if ce, ok := err.(*callError); ok {
		return ce
	}
	return &callError{text: redact(consumer.ErrorText(err)), err: err}
}

// call runs f(ctx) as described above. op names the call in errors.
func call[T any](ctx context.Context, h *handler, runner, op string, f func(context.Context) (T, error)) (T, error) {
	var zero T
	if _, known := h.known(runner); !known {
		// An unknown name: no gate for it (the map stays bounded); the
		// Supervisor answers ErrUnknownRunner without calling anything.
		v, err := f(ctx)
		return v, safeErr(err)
	}
	release, ok := h.gates.acquire(ctx, runner)
	if !ok {
		return zero, errBusy
	}
	type answer struct {
		v   T
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		defer release()
		var a answer
		defer func() { ch <- a }()
		defer func() {
			if p := recover(); p != nil {
				a = answer{err: errors.New("queuekit: admin: " + op + " panicked")}
			}
		}()
		v, err := f(ctx)
		a = answer{v: v, err: safeErr(err)}
	}()
	select {
	case a := <-ch:
		return a.v, a.err
	case <-ctx.Done():
		return zero, fmt.Errorf("queuekit: admin: %s did not answer in time (Config.Timeout): %w", op, context.DeadlineExceeded)
	}
}

// known reports whether the Supervisor has a runner of that name.
func (h *handler) known(name string) (int, bool) {
	for i, r := range h.sup.Health().Runners {
		if r.Name == name {
			return i, true
		}
	}
	return -1, false
}

// The calls into a runner's dead letters, each through call.

func (h *handler) countDL(ctx context.Context, runner string, f broker.DeadLetterFilter) (int, error) {
	return call(ctx, h, runner, "dead letters Count", func(ctx context.Context) (int, error) {
		dl, err := h.sup.DeadLetters(runner)
		if err != nil {
			return 0, err
		}
		return dl.Count(ctx, f)
	})
}

func (h *handler) listDL(ctx context.Context, runner string, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	return call(ctx, h, runner, "dead letters List", func(ctx context.Context) (broker.DeadLetterPage, error) {
		dl, err := h.sup.DeadLetters(runner)
		if err != nil {
			return broker.DeadLetterPage{}, err
		}
		p, err := dl.List(ctx, q)
		for i := range p.Items {
			d := &p.Items[i]
			d.Reason.Err = redact(d.Reason.Err)
			if len(d.Message.Header) > 0 {
				hdr := make(map[string]string, len(d.Message.Header)) // a copy: the adapter's may be shared
				for k, v := range d.Message.Header {
					hdr[k] = redact(v)
				}
				d.Message.Header = hdr
			}
		}
		return p, err
	})
}

func (h *handler) redriveDL(ctx context.Context, runner string, sel broker.DeadLetterSelection, o broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return call(ctx, h, runner, "dead letters Redrive", func(ctx context.Context) (broker.DeadLetterResult, error) {
		dl, err := h.sup.DeadLetters(runner)
		if err != nil {
			return broker.DeadLetterResult{}, err
		}
		return dl.Redrive(ctx, sel, o)
	})
}

func (h *handler) purgeDL(ctx context.Context, runner string, sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	return call(ctx, h, runner, "dead letters Purge", func(ctx context.Context) (broker.DeadLetterResult, error) {
		dl, err := h.sup.DeadLetters(runner)
		if err != nil {
			return broker.DeadLetterResult{}, err
		}
		return dl.Purge(ctx, sel, dryRun)
	})
}

func (h *handler) backlog(ctx context.Context, runner string) (broker.Backlog, error) {
	return call(ctx, h, runner, "Backlog", func(ctx context.Context) (broker.Backlog, error) {
		return h.sup.Backlog(ctx, runner)
	})
}
