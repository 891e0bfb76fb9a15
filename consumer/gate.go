package consumer

import (
	"sync"
	"sync/atomic"
	"time"
)

// gate bounds how many handlers run at once: a count of slots. A worker
// takes a slot before it calls Receive and gives it back once the delivery
// is settled (or given back) — while the gate is not limited it keeps it for
// its next Receive instead (see keep) — so that once the handlers that were running
// when the limit dropped have finished, the workers in Receive or running
// a handler never outnumber the limit. Any free worker may take a free
// slot: which worker does not matter.
//
// Two limits apply:
//
//   - the base limit: the adaptive limit (setLimit; WithConcurrency's n
//     without WithAdaptiveConcurrency). Every slot held counts against it,
//     those of handlers that were running when it dropped included: a new
//     handler starts only when fewer than the limit hold a slot.
//   - the kill switch's probe cap (setCap; none outside probing). Only the
//     slots taken while the cap is set (the probes) count against it: a
//     straggler received before the trip, still running when the switch
//     probes (a call stuck on the dead dependency), does not hold up the
//     probe, although it still counts against the base limit.
//
// Each worker marks the slot it holds in its own slot (slot.held, on the
// worker's cache line). While no limit is below n (the common case) that
// is all: n workers cannot outnumber n, and the message path writes no
// shared word. While one is (limited), a worker takes its slot under mu,
// counting the slots the run's workers hold; a worker that finds no room
// waits, queued behind the others, and each slot given back wakes one.
// A worker that marked its slot on the fast path and then sees limited
// set gives it back and takes the slow path (limited is set before the
// count, the mark made before the look: one of the two sees the other).
//
// The limits live on the Consumer, not the run: a Supervisor's restarted
// Run keeps them. The slots counted are the current run's (use): a handler
// abandoned by an earlier Run's drain no longer counts.
type gate struct {
	limited atomic.Bool  // base < n, or a probe cap is set
	base    atomic.Int32 // the adaptive limit, n without one
	cap     atomic.Int32 // the kill switch's probe cap; 0 when not probing
	waiting atomic.Int32 // len(waiters), read without the lock by release

	mu      sync.Mutex
	n       int32           // WithConcurrency's n
	slots   []slot          // the current run's
	waiters []chan struct{} // workers waiting for a slot, first come first woken
}

// The values of slot.held.
const (
	gateFree  int32 = iota // the worker holds no slot
	gateHeld               // it holds one
	gateProbe              // it holds one taken while the probe cap was set
)

func (g *gate) init(n int) {
	g.n = int32(n)
	g.base.Store(int32(n))
}

// use makes the gate count the slots of a Run's workers.
func (g *gate) use(slots []slot) {
	g.mu.Lock()
	g.slots = slots
	g.wakeAllLocked()
	g.mu.Unlock()
}

// limit is how many handlers may run at once now: the base limit, or the
// probe cap when that is lower.
func (g *gate) limit() int {
	l := g.base.Load()
	if c := g.cap.Load(); c > 0 && c < l {
		l = c
	}
	return int(l)
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
	g.changedLocked()
	g.mu.Unlock()
}

// setCap sets the kill switch's probe cap; 0 removes it.
func (g *gate) setCap(n int) {
	g.mu.Lock()
	if n <= 0 {
		g.cap.Store(0)
	} else {
		g.cap.Store(clamp32(n, g.n))
	}
	g.changedLocked()
	g.mu.Unlock()
}

// changedLocked follows a change of a limit: whether the gate is limited,
// and the waiting workers look again. The caller holds g.mu.
func (g *gate) changedLocked() {
	g.limited.Store(g.base.Load() < g.n || g.cap.Load() > 0)
	g.wakeAllLocked()
}

// acquire takes a slot for worker s, waiting until the limits allow one;
// it gives up, reporting false, once stop is closed (the worker's intake
// stopped: Pause, a trip, the drain).
func (g *gate) acquire(s *slot, stop <-chan struct{}) bool {
	if !g.limited.Load() {
		s.held.Store(gateHeld)
		if !g.limited.Load() {
			return true
		}
		g.release(s) // limited meanwhile: the count may have seen the mark
	}
	for {
		g.mu.Lock()
		if g.tryLocked(s) {
			g.mu.Unlock()
			return true
		}
		ch := make(chan struct{})
		g.waiters = append(g.waiters, ch)
		g.waiting.Add(1)
		// Queued, then counted again: a slot given back since the count
		// above either shows now or finds this worker queued and wakes it.
		if g.tryLocked(s) {
			g.removeLocked(ch)
			g.mu.Unlock()
			return true
		}
		g.mu.Unlock()
		select {
		case <-ch:
		case <-stop:
			g.mu.Lock()
			if !g.removeLocked(ch) {
				// Woken as the stop came: pass the wake-up on, so that
				// the slot it was for does not go unused.
				g.wakeOneLocked()
			}
			g.mu.Unlock()
			return false
		}
	}
}

// tryLocked takes a slot for s if the limits allow one now. The caller
// holds g.mu.
func (g *gate) tryLocked(s *slot) bool {
	c := g.cap.Load()
	var all, probes int32
	for i := range g.slots {
		switch g.slots[i].held.Load() {
		case gateHeld:
			all++
		case gateProbe:
			all++
			probes++
		}
	}
	switch {
	case all >= g.base.Load():
		return false
	case c > 0 && probes >= c:
		return false
	case c > 0:
		s.held.Store(gateProbe)
	default:
		s.held.Store(gateHeld)
	}
	return true
}

// keep reports whether a worker that holds a slot and is done with its
// delivery may keep the slot for its next one instead of giving it back and
// taking it again: while the gate is not limited and nobody waits, which
// is what acquire's fast path would find. A worker that keeps its slot is,
// for the counting, one that gave it back and took it again at once; a
// limit set after this look counts it as held, as it would count a slot
// just taken on the fast path (the mark was made long before the look).
func (g *gate) keep() bool {
	return !g.limited.Load() && g.waiting.Load() == 0
}

// release gives back worker s's slot and wakes the first waiting worker,
// if any.
func (g *gate) release(s *slot) {
	s.held.Store(gateFree)
	// After the store: a worker that queued before it is woken here, one
	// that queues after it counts the slot free.
	if g.waiting.Load() > 0 {
		g.mu.Lock()
		g.wakeOneLocked()
		g.mu.Unlock()
	}
}

// removeLocked takes ch out of the waiters; false if it was not there (it
// was woken). The caller holds g.mu.
func (g *gate) removeLocked(ch chan struct{}) bool {
	for i, w := range g.waiters {
		if w == ch {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			g.waiting.Add(-1)
			return true
		}
	}
	return false
}

// wakeOneLocked wakes the first waiting worker. The caller holds g.mu.
func (g *gate) wakeOneLocked() {
	if len(g.waiters) == 0 {
		return
	}
	close(g.waiters[0])
	g.waiters[0] = nil
	g.waiters = g.waiters[1:]
	g.waiting.Add(-1)
}

// wakeAllLocked wakes every waiting worker. The caller holds g.mu.
func (g *gate) wakeAllLocked() {
	for _, w := range g.waiters {
		close(w)
	}
	g.waiters = nil
	g.waiting.Store(0)
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
