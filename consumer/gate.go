package consumer

import (
	"sync"
	"sync/atomic"
	"time"
)

// gate bounds how many of the WithConcurrency workers take deliveries: worker
// i receives only while i < limit, so that at most limit handlers start at
// once. A worker at or above the limit finishes the handler it is running,
// then waits (without calling Receive) until the limit lets it in again or
// its intake stops.
//
// Gating by worker index costs the message path one atomic load of a word
// that changes rarely (no shared counter is written per message), and a
// lower limit always leaves the same workers running.
//
// The limit is the least of the consumer's concurrency n, the adaptive
// limit (setLimit; n when there is no WithAdaptiveConcurrency) and the kill
// switch's probe cap (setCap; none outside probing), never below 1. It lives
// on the Consumer, not the run: a Supervisor's restarted Run keeps it.
type gate struct {
	limit atomic.Int32 // the effective limit, read by every worker per delivery

	base atomic.Int32 // the adaptive limit, n without one; written under mu

	mu   sync.Mutex
	n    int32         // WithConcurrency's n
	cap  int32         // the kill switch's probe cap; 0 when not probing
	wake chan struct{} // closed, and replaced, when the effective limit changes
}

func (g *gate) init(n int) {
	g.n = int32(n)
	g.base.Store(int32(n))
	g.limit.Store(int32(n))
	g.wake = make(chan struct{})
}

// setLimit sets the adaptive limit (WithAdaptiveConcurrency calls it with
// what its limiter decided), clamped to [1, n].
func (g *gate) setLimit(n int) {
	b := clamp32(n, g.n)
	if b == g.base.Load() {
		return // the common case, without the lock
	}
	g.mu.Lock()
	g.base.Store(b)
	g.apply()
	g.mu.Unlock()
}

// setCap sets the kill switch's probe cap; 0 removes it.
func (g *gate) setCap(n int) {
	g.mu.Lock()
	if n <= 0 {
		g.cap = 0
	} else {
		g.cap = clamp32(n, g.n)
	}
	g.apply()
	g.mu.Unlock()
}

// apply recomputes the effective limit and wakes the waiting workers when
// it changed. The caller holds g.mu.
func (g *gate) apply() {
	eff := g.base.Load()
	if g.cap > 0 && g.cap < eff {
		eff = g.cap
	}
	if eff == g.limit.Load() {
		return
	}
	g.limit.Store(eff)
	close(g.wake)
	g.wake = make(chan struct{})
}

// admits reports whether worker i may take a delivery now.
func (g *gate) admits(i int) bool { return int32(i) < g.limit.Load() }

// wait blocks worker i until the limit admits it or stop is closed (its
// intake stopped: Pause, a trip, the drain). The wake channel is taken
// under g.mu together with a fresh look at the limit, so that a change
// between the worker's check and its wait is never missed.
func (g *gate) wait(i int, stop <-chan struct{}) {
	g.mu.Lock()
	ch := g.wake
	admitted := g.admits(i)
	g.mu.Unlock()
	if admitted {
		return
	}
	select {
	case <-ch:
	case <-stop:
	}
}

func clamp32(n int, hi int32) int32 {
	switch {
	case n < 1:
		return 1
	case n > int(hi):
		return hi
	}
	return int32(n)
}

// concurrencyLimiter is what WithAdaptiveConcurrency installs (adaptive.go):
// the runtime reports every handler's latency and outcome to observe and
// applies the limit it returns (gate.setLimit); limit is the limit to start
// with.
type concurrencyLimiter interface {
	observe(latency time.Duration, failed bool, inFlight int) (limit int)
	limit() int
}
