package consumer

import (
	"fmt"
	"math"
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
// the window's mean latency is above Tolerance times the baseline, by more
// than its noise, in two windows in a row (one slow window is chance).
// Otherwise it grows by one, if the window used it (handlers in flight
// reached the limit less one). The window after a decrease is not counted:
// its results include those of handlers that ran under the old limit.
//
// The mean, not a percentile: with a latency of two modes (a cache that
// hits in microseconds or misses in milliseconds), a window's median or
// p90 jumps from one mode to the other with the share of misses it caught,
// while its mean moves by little, and by as little as its standard error
// says. The noise of a window is that standard error, twice: a mean within
// it of the threshold is no congestion.
//
// The baseline is the latency of the handler when this consumer's load is
// not what slows it: the mean over the first windows (but the very first,
// of handlers that all started at once), then following lower latencies
// down. It moves up only when shrinking did not help: when the latency did
// not fall with the limit over two decreases, twice in a row, or when, over
// the windows of an episode of decreases (until a window clearly below the
// threshold; since the last decrease that did help), the latency did not
// follow the limit (a least-squares fit of its logarithm to the limit's: a
// slope clearly under one half, where a dependency this consumer overloads
// gives one). The dependency is then
// slow for everyone, not overloaded by this consumer: the limiter takes
// that latency as the new baseline (and undoes the decreases the first way
// finds). At Min, it takes the latency as it is. So a dependency that slows
// down because it is overloaded gets fewer calls from this consumer, about
// as many as keep its latency within Tolerance of its unloaded latency,
// with no loss of throughput (it could not serve more); a dependency that
// is merely slower, or a latency that has modes, costs at most a few
// windows of a lower limit.
//
// The latency is the handler's, middleware included: a rate limit's waits
// count (they shrink the limit toward what the rate allows).
type Adaptive struct {
	// Min is the lowest limit, default 1. It must not exceed the
	// consumer's concurrency.
	Min int
	// Tolerance is the ratio of a window's mean latency to the baseline
	// above which (by more than the window's noise) the limit shrinks,
	// default 2.0; it must be above 1.
	Tolerance float64
	// Window is the number of handler results per decision, default
	// max(10, 2×limit) with the limit of the moment: about two round trips
	// at any limit.
	Window int
	// Backoff is the factor the limit is multiplied by when it shrinks,
	// default 0.8; it must be in (0, 1).
	Backoff float64
}

// maxAdaptiveWindow bounds Window: a decision at least every 65,536
// results.
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
			l, err := newAdaptiveLimiter(a, n)
			if err != nil {
				return nil, err
			}
			return l, nil
		}
	}
}

// noise is how many standard errors a window's mean latency must be above
// Tolerance times the baseline to count as congestion, or below the
// baseline to move it down, or below what the latency was at a higher limit
// to count as having followed the limit down. A window's mean is known only
// to within its standard error: with latency of two modes (a cache that
// hits or misses), the share of slow calls a window catches varies, and so
// does its mean; that is chance, not load.
const noise = 2

// baselineDown is how far the baseline moves each window toward a lower
// window mean (plus noise standard errors, so that a window that merely
// caught fewer slow calls than usual does not count).
const baselineDown = 0.25

// spreadSamples is the horizon, in results, of the long-run estimate of the
// latency's variance: a window moves it n/spreadSamples of the way to its
// own. It stands in for the window's own variance when that is lower: a
// window that caught none of a rare slow mode would otherwise look precise.
const spreadSamples = 1024

// warmupWindows is how many windows after the start make the first
// baseline, their mean, and take no decision on latency: the first results
// are of handlers that all started at once, the fastest first.
const warmupWindows = 16

// warmupDiscard is how many of the first windows do not count at all.
const warmupDiscard = 4

// judgeRatio is how far below a decrease's limit the limit must be for a
// window's latency to tell whether it followed the limit down: two
// default backoffs (0.64), not one (0.8), a step too small to tell a
// response from noise.
const judgeRatio = 0.7

// maxStepAge is how many windows back a decrease may be compared with:
// further back, the latency was of another moment (a dependency's queue
// that has since grown or drained).
const maxStepAge = 4

// minFit is how many windows of an episode of decreases make a fit of
// their latency to the limit worth reading.
const minFit = 16

// minElasticity is how closely the latency must follow the limit, over the
// windows of an episode of decreases, for them to count as congestion: by
// half (ln latency against ln limit, a slope of 0.5), where a dependency
// that this consumer overloads gives 1 and one slow for everyone 0.
const minElasticity = 0.5

// adaptiveLimiter is the algorithm of Adaptive: fed every handler result
// (observe), it returns the limit on handlers at once. It is safe for
// concurrent use: observe takes a mutex (it does no allocation: a window is
// a count, a sum and a sum of squares), limit is one atomic load.
// It reads no clock: it is a function of the results it is fed, in order.
type adaptiveLimiter struct {
	min, max  int
	tolerance float64
	backoff   float64
	window    int // fixed window size, or 0: max(10, 2×limit)

	cur atomic.Int64 // the limit; written under mu

	mu       sync.Mutex
	results  int // results in this window, failures included
	failures int
	// This window's successes: their count, and the sum of their
	// latencies and of their squares, in ns, less shift (the window's
	// first latency: it keeps the sums small, so the variance exact).
	n          int
	sum, sumsq float64
	shift      float64
	peak       int     // the most handlers in flight seen in this window
	baseline   float64 // the no-load mean latency estimate, ns
	spread     float64 // long-run variance of a latency, ns²
	warm       int     // windows seen, up to warmupWindows
	// Results still to be left out after a decrease: a window's worth,
	// and at least as many as were in flight when it was decided. They
	// include those of handlers that ran under the old limit, and would
	// mix its latency into the new limit's. Leaving out results by when
	// their handler started instead would not do: a window that counts
	// only handlers started after the decrease closes before the slowest
	// of them finish, and so looks faster than it is.
	skip int
	// The last decreases for latency (nsteps of them, the latest last),
	// at most maxStepAge windows back: their limit and window, to tell
	// whether the latency follows the limit down.
	steps  [4]step
	nsteps int
	// Windows in a row (compared with a decrease) whose latency did not
	// follow the limit down, and the limit of the decrease the first of
	// them was compared with.
	unresponsive int
	restore      int
	// The episode: the windows since the first decrease for latency that
	// no window clearly below the threshold followed (or since the last
	// one found to help): how their latency (ln) goes with the limit (ln),
	// as sums for a least-squares fit, and the decreases among them.
	fit       fit
	decreases int
	windows   int  // decided after the warm-up
	congested bool // the last window was congested
}

// fit is a least-squares fit of y against x, from sums.
type fit struct{ n, x, y, xx, xy, yy float64 }

func (f *fit) add(x, y float64) {
	f.n++
	f.x += x
	f.y += y
	f.xx += x * x
	f.xy += x * y
	f.yy += y * y
}

// slope returns the slope of the fit and its standard error, and false
// when there are fewer than minFit points or x hardly varies.
func (f *fit) slope() (b, se float64, ok bool) {
	if f.n < minFit {
		return 0, 0, false
	}
	sxx := f.xx - f.x*f.x/f.n
	sxy := f.xy - f.x*f.y/f.n
	syy := f.yy - f.y*f.y/f.n
	if sxx <= 0.05*0.05*f.n { // the limit's spread under 5%
		return 0, 0, false
	}
	b = sxy / sxx
	return b, math.Sqrt(max(0, syy-b*sxy) / (f.n - 2) / sxx), true
}

// step is a decrease for latency: the limit it decreased, and the
// window's mean latency at that limit and its standard error.
type step struct {
	lim      int
	mean, se float64
	at       int // the window, counted by windows
}

// newAdaptiveLimiter returns a limiter for a consumer of concurrency n,
// starting at n, or an error wrapping broker.ErrInvalidConfig.
func newAdaptiveLimiter(cfg Adaptive, n int) (*adaptiveLimiter, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(n); err != nil {
		return nil, err
	}
	l := &adaptiveLimiter{
		min:       cfg.Min,
		max:       n,
		tolerance: cfg.Tolerance,
		backoff:   cfg.Backoff,
		window:    cfg.Window,
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
	if l.skip > 0 {
		l.skip--
		return int(l.cur.Load())
	}
	l.peak = max(l.peak, inFlight)
	l.results++
	if failed {
		l.failures++
	} else {
		if l.n == 0 {
			l.shift = float64(latency)
		}
		x := float64(latency) - l.shift
		l.n++
		l.sum += x
		l.sumsq += x * x
	}
	lim := int(l.cur.Load())
	size := l.window
	if size == 0 {
		size = defaultWindow(lim)
	}
	if l.results >= size {
		lim = l.decide(lim)
		l.results, l.failures, l.peak = 0, 0, 0
		l.n, l.sum, l.sumsq = 0, 0, 0
	}
	return lim
}

// decide ends a window: it returns the new limit, given the old, and
// updates the baseline. The caller holds mu.
func (l *adaptiveLimiter) decide(lim int) int {
	if 2*l.failures > l.results {
		l.endEpisode()
		l.congested = false
		return l.decrease(lim)
	}
	// At least half the window succeeded: n ≥ 1.
	n := float64(l.n)
	mean := l.shift + l.sum/n
	variance := 0.0
	if l.n > 1 {
		variance = max(0, (l.sumsq-l.sum*l.sum/n)/(n-1))
	}
	if l.warm < warmupWindows {
		// Warming up: the first windows are of handlers that all started
		// at once, the fastest done first; the baseline is the mean of
		// the next ones.
		l.warm++
		if k := l.warm - warmupDiscard; k > 0 {
			l.baseline += (mean - l.baseline) / float64(k)
			l.spread += (variance - l.spread) / float64(k)
		}
		return l.grow(lim)
	}
	l.spread += min(1, n/spreadSamples) * (variance - l.spread)
	se := math.Sqrt(max(variance, l.spread) / n)

	threshold := l.tolerance * l.baseline
	// Decreases more than maxStepAge windows back are forgotten.
	l.windows++
	kept := 0
	for _, s := range l.steps[:l.nsteps] {
		if l.windows-s.at <= maxStepAge {
			l.steps[kept] = s
			kept++
		}
	}
	if l.nsteps = kept; kept == 0 {
		l.unresponsive = 0
	}
	if l.decreases > 0 {
		// In an episode of decreases: whether, over its windows, the
		// latency follows the limit at all. A latency about the threshold
		// whatever the limit (windows congested or not by chance, none
		// clearly below it) is no congestion, and a fit over many windows
		// finds out what comparing two cannot.
		l.fit.add(math.Log(float64(lim)), math.Log(max(mean, 1)))
		if b, bse, ok := l.fit.slope(); ok && l.decreases >= 2 && b+noise*bse < minElasticity {
			return l.rebase(math.Exp(l.fit.y/l.fit.n), lim)
		}
	}
	if mean <= threshold+noise*se {
		// Not congested. Clearly not (below the threshold by more than
		// the noise), it ends the episode; within the noise of it, it
		// does not: the decreases of the last few windows still compare,
		// and the fit goes on.
		if mean+noise*se <= threshold {
			l.endEpisode()
		}
		l.congested = false
		if high := mean + noise*se; high < l.baseline {
			l.baseline += baselineDown * (high - l.baseline)
		}
		return l.grow(lim)
	}
	// Congested. A first congested window only holds the limit: one window
	// in a thousand is slow by chance, and shrinking on each would keep
	// the limit below the maximum for nothing.
	if l.nsteps == 0 && !l.congested {
		l.congested = true
		return lim
	}
	l.congested = false
	// Whether the latency follows the limit down, in a run of decreases:
	// compared with the latest at least 1/judgeRatio times the limit, it
	// fell by at least half of what a latency proportional to the limit
	// would have, by more than the noise. When it did not, twice in a row
	// (the first windows of a slowdown catch the dependency's queue still
	// building), the consumer's load is not what slows the handler: take
	// its latency as the new baseline, and undo the decreases that did not
	// help.
	for i := l.nsteps - 1; i >= 0; i-- {
		back := l.steps[i]
		if float64(lim) > judgeRatio*float64(back.lim) {
			continue
		}
		f := (1 + float64(lim)/float64(back.lim)) / 2
		switch {
		case mean+noise*math.Hypot(se, f*back.se) <= f*back.mean:
			// It did: the episode so far is congestion. Its fit starts
			// again from here, where the next decreases may not help.
			l.unresponsive = 0
			l.fit, l.decreases = fit{}, 1
			l.fit.add(math.Log(float64(lim)), math.Log(max(mean, 1)))
		case l.unresponsive == 0:
			l.unresponsive, l.restore = 1, back.lim
		default:
			return l.rebase(mean, l.restore)
		}
		break
	}
	// At Min, where the consumer cannot do less, take the latency as the
	// baseline.
	if lim <= l.min {
		return l.rebase(mean, lim)
	}
	if l.decreases == 0 {
		l.fit.add(math.Log(float64(lim)), math.Log(max(mean, 1)))
	}
	l.decreases++
	if l.nsteps == len(l.steps) {
		copy(l.steps[:], l.steps[1:])
		l.nsteps--
	}
	l.steps[l.nsteps] = step{lim: lim, mean: mean, se: se, at: l.windows}
	l.nsteps++
	return l.decrease(lim)
}

// rebase takes mean as the baseline, forgets the decreases, and returns
// the limit set to lim. The caller holds mu.
func (l *adaptiveLimiter) rebase(mean float64, lim int) int {
	l.baseline, l.congested = mean, false
	l.endEpisode()
	return l.set(lim)
}

// endEpisode forgets the decreases for latency. The caller holds mu.
func (l *adaptiveLimiter) endEpisode() {
	l.nsteps, l.unresponsive, l.fit, l.decreases = 0, 0, fit{}, 0
}

// grow returns the limit after a window that was not congested: one more
// if the window used it (handlers in flight reached the limit less one).
// The caller holds mu.
func (l *adaptiveLimiter) grow(lim int) int {
	if l.peak >= lim-1 {
		return l.set(lim + 1)
	}
	return lim
}

// decrease multiplies the limit by the backoff, not below min, and returns
// the new limit; the results of the next window will not count. The caller
// holds mu, at the end of a window.
func (l *adaptiveLimiter) decrease(lim int) int {
	next := max(l.min, int(float64(lim)*l.backoff))
	if next < lim {
		size := l.window
		if size == 0 {
			size = defaultWindow(next)
		}
		l.skip = max(size, l.peak)
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
