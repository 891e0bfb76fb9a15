package consumer

import (
	"context"
	"sync/atomic"
	"time"
)

// settleClock hands out the contexts deliveries are settled with. They are
// derived from the run's values but not its cancellation, so that a stopping
// consumer can still acknowledge finished work, and bounded by the settle
// timeout, so that a hung broker cannot hold a worker forever.
//
// Making a context per message would cost a clock read, a timer and several
// allocations on the hot path. Instead one goroutine makes a fresh context
// every quarter of the timeout; workers load the current one atomically. A
// worker therefore settles with a context that has between three quarters and
// all of the settle timeout left (less only if the clock goroutine is starved).
type settleClock struct {
	cur  atomic.Pointer[context.Context]
	stop chan struct{}
	done chan struct{}
}

func startSettleClock(base context.Context, timeout time.Duration) *settleClock {
	c := &settleClock{stop: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(base, timeout)
	c.cur.Store(&ctx)
	go c.run(base, timeout, cancel)
	return c
}

// run rotates the context until stop. It owns the cancel functions; it keeps
// those of the contexts a worker may still hold (the last few) and cancels the
// older ones, which have expired by then anyway, to release their timers.
func (c *settleClock) run(base context.Context, timeout time.Duration, first context.CancelFunc) {
	defer close(c.done)
	const keep = 6 // 6 quarters > the timeout: older contexts have expired
	cancels := []context.CancelFunc{first}
	t := time.NewTicker(max(timeout/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ctx, cancel := context.WithTimeout(base, timeout)
			c.cur.Store(&ctx)
			cancels = append(cancels, cancel)
			if len(cancels) > keep {
				cancels[0]()
				cancels = append(cancels[:0], cancels[1:]...)
			}
		case <-c.stop:
			for _, cancel := range cancels {
				cancel()
			}
			return
		}
	}
}

// Context returns the current settlement context.
func (c *settleClock) Context() context.Context { return *c.cur.Load() }

// Stop ends the clock and cancels its contexts. Call it only when no
// settlement can be in progress.
func (c *settleClock) Stop() {
	close(c.stop)
	<-c.done
}
