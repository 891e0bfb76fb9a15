package consumer

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Adaptive configures adaptive concurrency (WithAdaptiveConcurrency): the
// number of handlers allowed to run at once shrinks when their latency or
// failure rate rises, and grows back when it recovers, between Min and the
// consumer's WithConcurrency n (never above it, so never above a prefetch
// of at least n), starting at n. The zero value means every default.
//
// The limit moves once per window of handler results (AIMD). It shrinks,
// multiplied by Backoff, when more than half of the window's handlers
// failed (errors that are not permanent and not ErrNotHandled), or when
// the window's median latency is above Tolerance times the baseline in two
// windows in a row (one slow window is chance). Otherwise it grows by one,
// if the window used it (handlers in flight reached the limit less one).
// Results of handlers that started before a decrease are not counted: they
// ran under the old limit.
//
// The baseline is the latency of the handler when this consumer's load is
// not what slows it. It follows lower medians down, and moves up only when
// shrinking did not help: when, twice in a row, the latency did not fall
// with the limit over the last two decreases, the dependency is slow for
// everyone, not overloaded by this consumer; the limiter then takes that
// latency as the new baseline and undoes those decreases. At Min, it takes
// the latency as it is. So a dependency that slows down because it is overloaded gets fewer
// calls from this consumer, about as many as keep its latency within
// Tolerance of its unloaded latency, with no loss of throughput (it could
// not serve more); a dependency that is merely slower costs a few windows
// of a lower limit.
//
// The latency is the handler's, middleware included: a rate limit's waits
// count (they shrink the limit toward what the rate allows).
type Adaptive struct {
	// Min is the lowest limit, default 1. It must not exceed the
	// consumer's concurrency.
	Min int
	// Tolerance is the ratio of a window's median latency to the baseline
	// above which the limit shrinks, default 2.0; it must be above 1.
	Tolerance float64
	// Window is the number of handler results per decision, default
	// max(10, 2×limit) with the limit of the moment: about two round trips
	// at any limit.
	Window int
	// Backoff is the factor the limit is multiplied by when it shrinks,
	// default 0.8; it must be in (0, 1).
	Backoff float64
}

// maxAdaptiveWindow bounds Window: the limiter keeps one window of
// latencies.
const maxAdaptiveWindow = 1 << 16

// withDefaults returns a with its zero fields set to their defaults.
func (a Adaptive) withDefaults() Adaptive {
	if a.Min == 0 {
		a.Min = 1
	}
	if a.Tolerance == 0 {
		a.Tolerance = 2
	}
	if a.Backoff == 0 {
		a.Backoff = 0.8
	}
	return a
}

// validate reports whether a (defaults applied) can drive a consumer of
// concurrency n.
func (a Adaptive) validate(n int) error {
	switch {
	case a.Min < 1 || a.Min > n:
		return fmt.Errorf("%w: adaptive concurrency: Min %d, want 1 to the concurrency (%d)", broker.ErrInvalidConfig, a.Min, n)
	case math.IsNaN(a.Tolerance) || a.Tolerance <= 1 || math.IsInf(a.Tolerance, 0):
		return fmt.Errorf("%w: adaptive concurrency: Tolerance %v, want a finite number above 1", broker.ErrInvalidConfig, a.Tolerance)
	case a.Window < 0 || a.Window > maxAdaptiveWindow:
		return fmt.Errorf("%w: adaptive concurrency: Window %d, want 0 (default) to %d", broker.ErrInvalidConfig, a.Window, maxAdaptiveWindow)
	case math.IsNaN(a.Backoff) || a.Backoff <= 0 || a.Backoff >= 1:
		return fmt.Errorf("%w: adaptive concurrency: Backoff %v, want a number in (0, 1)", broker.ErrInvalidConfig, a.Backoff)
	}
	return nil
}

// WithAdaptiveConcurrency makes the consumer's concurrency adapt to its
// handler's latency and failures (see Adaptive), between a.Min and
// WithConcurrency's n, starting at n. Stats.Limit reports the current
// limit. Off by default: without it, n handlers run at once. New returns
// an error wrapping broker.ErrInvalidConfig when a is out of range.
func WithAdaptiveConcurrency(a Adaptive) Option {
	return func(o *options) {
		o.newLimiter = func(n int) (concurrencyLimiter, error) {
			l, err := newAdaptiveLimiter(a, n, time.Now)
			if err != nil {
				return nil, err
			}
			return l, nil
		}
	}
}

// baselineDown is how far the baseline moves toward a lower window median
// each window: a single fast window moves it a quarter of the way, so that
// one lucky window does not make every normal one look congested.
const baselineDown = 0.25

// baselineSamples scales the step down for small windows, whose median is
// noisy: a window of n results moves the baseline at most n/baselineSamples
// of the way. Without it, the lowest medians of windows of 10 at a low limit
// would drag the baseline below the usual latency, and every ordinary window
// would look congested.
const baselineSamples = 256

// adaptiveLimiter is the algorithm of Adaptive: fed every handler result
// (observe), it returns the limit on handlers at once. It is safe for
// concurrent use: observe takes a mutex (it does no allocation and, at the
// end of a window, sorts the window's latencies), limit is one atomic load.
// now is its clock, injected so that tests run it on simulated time.
type adaptiveLimiter struct {
	min, max  int
	tolerance float64
	backoff   float64
	window    int // fixed window size, or 0: max(10, 2×limit)
	now       func() time.Time

	cur atomic.Int64 // the limit; written under mu

	mu       sync.Mutex
	lat      []time.Duration // latencies of this window's successes; capacity: the largest window
	results  int             // results in this window, failures included
	failures int
	peak     int     // the most handlers in flight seen in this window
	baseline float64 // the no-load latency estimate, ns; 0 until the first window
	// After a decrease, until the end of the next window, results of
	// handlers that started before it are stale: they ran under the old
	// limit and say nothing of the new one. Zero otherwise.
	decreasedAt time.Time
	// The last windows (nsteps of them, the latest last) that decreased
	// the limit for latency in a row: their limit and median, to tell
	// whether the latency follows the limit down.
	steps        [2]step
	nsteps       int
	unresponsive int  // decreases in a row that the latency did not follow
	restore      int  // the limit before the first of them
	suspect      bool // the last window was congested and held the limit
}

// step is a decrease for latency: the limit it decreased, and the
// window's median latency at that limit.
type step struct {
	lim   int
	short float64
}

// newAdaptiveLimiter returns a limiter for a consumer of concurrency n,
// starting at n, or an error wrapping broker.ErrInvalidConfig.
func newAdaptiveLimiter(cfg Adaptive, n int, now func() time.Time) (*adaptiveLimiter, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(n); err != nil {
		return nil, err
	}
	size := cfg.Window
	if size == 0 {
		size = defaultWindow(n)
	}
	l := &adaptiveLimiter{
		min:       cfg.Min,
		max:       n,
		tolerance: cfg.Tolerance,
		backoff:   cfg.Backoff,
		window:    cfg.Window,
		now:       now,
		lat:       make([]time.Duration, 0, size),
	}
	l.cur.Store(int64(n))
	return l, nil
}

func defaultWindow(limit int) int { return max(10, 2*limit) }

// limit returns the current limit on handlers at once.
func (l *adaptiveLimiter) limit() int { return int(l.cur.Load()) }

// observe records the result of one handler: how long it ran, whether it
// failed in a way that counts against the limit, and how many handlers were
// in flight when it started, itself included. It returns the limit.
func (l *adaptiveLimiter) observe(latency time.Duration, failed bool, inFlight int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.decreasedAt.IsZero() && l.now().Sub(l.decreasedAt) < latency {
		return int(l.cur.Load()) // started before the last decrease
	}
	l.peak = max(l.peak, inFlight)
	l.results++
	if failed {
		l.failures++
	} else {
		l.lat = append(l.lat, latency) // within capacity: a window holds at most its size
	}
	lim := int(l.cur.Load())
	size := l.window
	if size == 0 {
		size = defaultWindow(lim)
	}
	if l.results >= size {
		lim = l.decide(lim)
		l.lat, l.results, l.failures, l.peak = l.lat[:0], 0, 0, 0
	}
	return lim
}

// decide ends a window: it returns the new limit, given the old, and
// updates the baseline. The caller holds mu.
func (l *adaptiveLimiter) decide(lim int) int {
	// This window's results all came after the last decrease: from now on,
	// a straggler from before it counts (and observe reads no clock until
	// the next decrease).
	l.decreasedAt = time.Time{}
	if 2*l.failures > l.results {
		l.nsteps, l.unresponsive, l.suspect = 0, 0, false
		return l.decrease(lim)
	}
	slices.Sort(l.lat)
	short := float64(l.lat[len(l.lat)/2]) // at least half the window succeeded
	if l.baseline == 0 {
		l.baseline = short
	}
	if short <= l.tolerance*l.baseline {
		l.nsteps, l.unresponsive, l.suspect = 0, 0, false
		if short < l.baseline {
			l.baseline += min(baselineDown, float64(len(l.lat))/baselineSamples) * (short - l.baseline)
		}
		if l.peak >= lim-1 {
			return l.set(lim + 1)
		}
		return lim
	}
	// Congested. A first congested window only holds the limit: one window
	// in a thousand is slow by chance, and shrinking on each would keep
	// the limit below the maximum for nothing.
	if l.nsteps == 0 && !l.suspect {
		l.suspect = true
		return lim
	}
	l.suspect = false
	// Whether the latency follows the limit down: compared with two
	// decreases back (one is too small a step to tell a response from
	// noise), it fell by at least half of what a latency proportional to
	// the limit would have. When it did not, twice in a row (the first
	// windows of a slowdown catch the dependency's queue still building),
	// the consumer's load is not what slows the handler: take its latency
	// as the new baseline, and undo the decreases that did not help. At
	// Min, where the consumer cannot do less, take it as the baseline too.
	if l.nsteps >= 2 {
		back := l.steps[l.nsteps-2]
		switch {
		case short <= back.short*(1+float64(lim)/float64(back.lim))/2:
			l.unresponsive = 0
		case l.unresponsive == 0:
			l.unresponsive, l.restore = 1, back.lim
		default:
			l.baseline, l.nsteps, l.unresponsive = short, 0, 0
			return l.set(l.restore)
		}
	}
	if lim <= l.min {
		l.baseline, l.nsteps, l.unresponsive = short, 0, 0
		return lim
	}
	if l.nsteps == len(l.steps) {
		copy(l.steps[:], l.steps[1:])
		l.nsteps--
	}
	l.steps[l.nsteps] = step{lim: lim, short: short}
	l.nsteps++
	return l.decrease(lim)
}

// decrease multiplies the limit by the backoff, not below min, and returns
// the new limit. The caller holds mu.
func (l *adaptiveLimiter) decrease(lim int) int {
	next := max(l.min, int(float64(lim)*l.backoff))
	if next < lim {
		l.decreasedAt = l.now()
	}
	return l.set(next)
}

// set stores the limit, within [min, max], and returns it. The caller
// holds mu.
func (l *adaptiveLimiter) set(lim int) int {
	lim = min(max(lim, l.min), l.max)
	l.cur.Store(int64(lim))
	return lim
}
