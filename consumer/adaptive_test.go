package consumer

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

func TestAdaptiveConfigIsValidated(t *testing.T) {
	tests := []struct {
		name string
		cfg  Adaptive
		n    int
	}{
		{"Min below zero", Adaptive{Min: -1}, 4},
		{"Min above the concurrency", Adaptive{Min: 5}, 4},
		{"Tolerance of 1", Adaptive{Tolerance: 1}, 4},
		{"Tolerance below 1", Adaptive{Tolerance: 0.5}, 4},
		{"Tolerance NaN", Adaptive{Tolerance: math.NaN()}, 4},
		{"Tolerance infinite", Adaptive{Tolerance: math.Inf(1)}, 4},
		{"Window below zero", Adaptive{Window: -1}, 4},
		{"Window too large", Adaptive{Window: maxAdaptiveWindow + 1}, 4},
		{"Backoff of 1", Adaptive{Backoff: 1}, 4},
		{"Backoff above 1", Adaptive{Backoff: 1.5}, 4},
		{"Backoff below zero", Adaptive{Backoff: -0.5}, 4},
		{"Backoff NaN", Adaptive{Backoff: math.NaN()}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newAdaptiveLimiter(tt.cfg, tt.n)
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("newAdaptiveLimiter(%+v, %d) error = %v; want one wrapping broker.ErrInvalidConfig", tt.cfg, tt.n, err)
			}
		})
	}
}

func TestAdaptiveZeroValueMeansTheDefaults(t *testing.T) {
	l, err := newAdaptiveLimiter(Adaptive{}, 32)
	if err != nil {
		t.Fatal(err)
	}
	if l.min != 1 || l.max != 32 || l.tolerance != 2 || l.backoff != 0.8 || l.window != 0 {
		t.Errorf("limiter of Adaptive{} = min %d max %d tolerance %v backoff %v window %d; want 1 32 2 0.8 0",
			l.min, l.max, l.tolerance, l.backoff, l.window)
	}
	if got := l.limit(); got != 32 {
		t.Errorf("limit() before any result = %d; want the concurrency, 32", got)
	}
}

// feed gives l the results of windows windows of handlers that each took
// latency (load-independent: a dependency slow for everyone), as a consumer
// running at its limit would. It returns the limit after each window.
func feed(l *adaptiveLimiter, latency time.Duration, failed bool, windows int) []int {
	var limits []int
	for range windows {
		lim := l.limit()
		for range defaultWindow(lim) {
			l.observe(latency, failed, lim)
		}
		limits = append(limits, l.limit())
	}
	return limits
}

// A handler whose latency rises 10× for reasons of its own (the consumer's
// load does not change it): the limit shrinks, then, as shrinking did not
// bring the latency down, takes it as the new normal and grows back; when
// the latency falls back, nothing shrinks.
func TestAdaptiveLatencyThatDoesNotFollowTheLoad(t *testing.T) {
	l, _ := newAdaptiveLimiter(Adaptive{}, 32)
	if got := feed(l, 5*time.Millisecond, false, 50); got[len(got)-1] != 32 {
		t.Fatalf("limits at a steady 5ms = %v; want 32 throughout", got)
	}
	slow := feed(l, 50*time.Millisecond, false, 60)
	if low := minOf(slow); low >= 32 || low < 16 {
		t.Errorf("lowest limit at 50ms = %d (limits %v); want it to shrink, by at most two backoffs (0.8² of 32 = 20)", low, slow)
	}
	if got := slow[len(slow)-1]; got != 32 {
		t.Errorf("limit after 60 windows at 50ms = %d (limits %v); want 32: the latency is the new normal", got, slow)
	}
	if after := feed(l, 5*time.Millisecond, false, 60); minOf(after) != 32 {
		t.Errorf("limits when the latency falls back to 5ms = %v; want 32 throughout", after)
	}
}

// A failure rate above one half shrinks the limit to Min, whatever the
// latency; successes grow it back.
func TestAdaptiveFailures(t *testing.T) {
	l, _ := newAdaptiveLimiter(Adaptive{Min: 2}, 16)
	feed(l, time.Millisecond, false, 5)
	failing := feed(l, time.Millisecond, true, 30)
	if got := failing[len(failing)-1]; got != 2 {
		t.Errorf("limit after 30 windows of failures = %d (limits %v); want Min, 2", got, failing)
	}
	ok := feed(l, time.Millisecond, false, 30)
	if got := ok[len(ok)-1]; got != 16 {
		t.Errorf("limit after 30 windows of successes = %d (limits %v); want 16", got, ok)
	}
}

// Once the limit shrank, the next window's results are not counted (a
// window's worth, at least as many as were in flight): they include those
// of the handlers that ran under the old limit.
func TestAdaptiveSkipsTheWindowAfterADecrease(t *testing.T) {
	l, _ := newAdaptiveLimiter(Adaptive{Window: 10}, 12)
	for range 10 {
		l.observe(time.Millisecond, true, 12)
	}
	if got := l.limit(); got != 9 {
		t.Fatalf("limit after a window of failures = %d; want 9", got)
	}
	for range 11 { // 12 were in flight at the decrease, more than a window
		l.observe(2*time.Millisecond, true, 12)
	}
	if got := l.limit(); got != 9 {
		t.Errorf("limit after 11 results following the decrease = %d; want 9 still", got)
	}
	l.observe(time.Millisecond/2, true, 9) // the 12th is left out too
	for range 9 {
		l.observe(time.Millisecond/2, true, 9)
	}
	if got := l.limit(); got != 9 {
		t.Errorf("limit after 21 results following the decrease = %d; want 9 still", got)
	}
	l.observe(time.Millisecond/2, true, 9) // the 10th counted
	if got := l.limit(); got != 7 {
		t.Errorf("limit after a window of fresh failures = %d; want 7", got)
	}
}

// Whatever it is fed, the limit stays within [Min, the concurrency].
func TestAdaptiveLimitStaysWithinBounds(t *testing.T) {
	for _, cfg := range []Adaptive{{Min: 3}, {Min: 3, Window: 1}, {Min: 17, Window: 5}, {Min: 1, Backoff: 0.01, Tolerance: 1.01}} {
		l, err := newAdaptiveLimiter(cfg, 17)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range 200_000 {
			lat := time.Duration(rng.ExpFloat64() * float64(time.Millisecond) * float64(1+i/10_000%4*10))
			got := l.observe(lat, rng.IntN(3) == 0, rng.IntN(40))
			if got < cfg.Min || got > 17 || got != l.limit() {
				t.Fatalf("%+v: observe #%d = %d, limit() = %d; want both equal, within [%d, 17]", cfg, i, got, l.limit(), cfg.Min)
			}
		}
	}
}

// seeds are the random seeds each simulation runs with: the thresholds of
// the tests below hold for seeds 1 to 30 (checked when they were set).
var seeds = []uint64{1, 2, 3}

// The must-show case on simulated time: a dependency that serves 32 calls
// at once in 5ms turns slow (12.5ms) and overloaded (8 at once: the rest
// wait) for 20s, so that with fixed concurrency the handler's latency rises
// 10×. Adaptive concurrency halves the calls waiting on the dependency and
// the latency, without losing throughput, and grows back after.
func TestAdaptiveOverloadedDependency(t *testing.T) {
	for _, jitter := range []float64{0.2, 0.5, 0.9} {
		for _, seed := range seeds {
			phases := []depPhase{dep(20*time.Second, 32, 5*time.Millisecond), dep(40*time.Second, 8, 12500*time.Microsecond), dep(60*time.Second, 32, 5*time.Millisecond)}
			fixed := simulate(32, nil, phases, jitter, seed)
			l, _ := newAdaptiveLimiter(Adaptive{}, 32)
			adaptive := simulate(32, l, phases, jitter, seed)

			fixedLat, adaptiveLat := fixed.lat[1]/time.Duration(fixed.done[1]), adaptive.lat[1]/time.Duration(adaptive.done[1])
			t.Logf("jitter %.1f, seed %d: completed before/during/after: fixed %v adaptive %v; mean latency during: fixed %v adaptive %v",
				jitter, seed, fixed.done, adaptive.done, fixedLat, adaptiveLat)
			if adaptive.done[0] != fixed.done[0] {
				t.Errorf("jitter %.1f, seed %d: completed before the slow stretch: adaptive %d, fixed %d; want the same (nothing to adapt to)", jitter, seed, adaptive.done[0], fixed.done[0])
			}
			if d := float64(adaptive.done[1]) / float64(fixed.done[1]); d < 0.95 {
				t.Errorf("jitter %.1f, seed %d: completed during the slow stretch: adaptive %d, fixed %d (%.3f); want at least 0.95 of fixed", jitter, seed, adaptive.done[1], fixed.done[1], d)
			}
			if d := float64(adaptive.done[2]) / float64(fixed.done[2]); d < 0.99 {
				t.Errorf("jitter %.1f, seed %d: completed after the slow stretch: adaptive %d, fixed %d (%.3f); want at least 0.99 of fixed", jitter, seed, adaptive.done[2], fixed.done[2], d)
			}
			if adaptiveLat > fixedLat*7/10 {
				t.Errorf("jitter %.1f, seed %d: mean latency during the slow stretch: adaptive %v, fixed %v; want adaptive below 0.7 of fixed", jitter, seed, adaptiveLat, fixedLat)
			}
			// From 2s into the stretch to its end, the limit stays below
			// the 32 that overload the dependency, about twice its 8.
			during := adaptive.limits[220:400]
			if m, hi := mean(during), maxOf(during); m < 8 || m > 24 || hi > 28 {
				t.Errorf("jitter %.1f, seed %d: limit from 2s into the slow stretch: mean %.1f, highest %d; want a mean in [8, 24], at most 28", jitter, seed, m, hi)
			}
			// Within 2s of the stretch's end the limit is back at 32, and stays.
			if after := adaptive.limits[420:]; minOf(after) != 32 {
				t.Errorf("jitter %.1f, seed %d: limit from 2s after the slow stretch, lowest %d; want 32", jitter, seed, minOf(after))
			}
		}
	}
}

// A dependency that turns 10× slower without being overloaded (its
// latency does not depend on the consumer's load): adaptive concurrency
// costs at most a few percent of throughput, for the time it takes to see
// that shrinking does not help.
func TestAdaptiveSlowDependency(t *testing.T) {
	for _, jitter := range []float64{0.2, 0.5, 0.9} {
		for _, seed := range seeds {
			phases := []depPhase{dep(20*time.Second, 0, 5*time.Millisecond), dep(40*time.Second, 0, 50*time.Millisecond), dep(60*time.Second, 0, 5*time.Millisecond)}
			fixed := simulate(32, nil, phases, jitter, seed)
			l, _ := newAdaptiveLimiter(Adaptive{}, 32)
			adaptive := simulate(32, l, phases, jitter, seed)
			t.Logf("jitter %.1f, seed %d: completed before/during/after: fixed %v adaptive %v", jitter, seed, fixed.done, adaptive.done)
			for i := range phases {
				if d := float64(adaptive.done[i]) / float64(fixed.done[i]); d < 0.96 {
					t.Errorf("jitter %.1f, seed %d, phase %d: completed: adaptive %d, fixed %d (%.3f); want at least 0.96 of fixed", jitter, seed, i, adaptive.done[i], fixed.done[i], d)
				}
			}
			if got := minOf(adaptive.limits[240:]); got != 32 {
				t.Errorf("jitter %.1f, seed %d: limit from 4s into the slow stretch, lowest = %d; want 32", jitter, seed, got)
			}
		}
	}
}

// A handler whose latency has two modes, independent of the load: a share
// p of its calls miss a cache and take 5ms, the others take 20µs. The
// window's latency then varies with the share of misses it happened to
// catch, which is not congestion: the limit must stay, whatever p (M4 of the
// issue 14 review: the median flipped between the modes and read as
// congestion; at p = 0.5 adaptive concurrency handled 40% of what fixed
// concurrency did).
func TestAdaptiveBimodalLatencyIsNotCongestion(t *testing.T) {
	for _, p := range []float64{0.02, 0.05, 0.2, 0.45, 0.5, 0.55, 0.8} {
		for _, seed := range seeds {
			phases := []depPhase{{until: 5 * time.Second, service: 20 * time.Microsecond, missShare: p, miss: 5 * time.Millisecond}}
			fixed := simulate(32, nil, phases, 0.5, seed)
			l, _ := newAdaptiveLimiter(Adaptive{}, 32)
			adaptive := simulate(32, l, phases, 0.5, seed)
			d := float64(adaptive.done[0]) / float64(fixed.done[0])
			t.Logf("p %.2f, seed %d: completed: fixed %d, adaptive %d (%.3f); limit: mean %.1f, lowest %d",
				p, seed, fixed.done[0], adaptive.done[0], d, mean(adaptive.limits), minOf(adaptive.limits))
			if d < 0.95 {
				t.Errorf("p %.2f, seed %d: completed: adaptive %d, fixed %d (%.3f); want at least 0.95 of fixed", p, seed, adaptive.done[0], fixed.done[0], d)
			}
		}
	}
}

// At a steady latency the limit does not move, however noisy the latency:
// a slow window now and then is not congestion.
func TestAdaptiveSteadyLatency(t *testing.T) {
	for _, jitter := range []float64{0, 0.5, 0.9} {
		l, _ := newAdaptiveLimiter(Adaptive{}, 32)
		r := simulate(32, l, []depPhase{dep(600*time.Second, 0, 5*time.Millisecond)}, jitter, 11)
		if lo := minOf(r.limits); lo < 25 {
			t.Errorf("jitter %.1f: lowest limit over 10 minutes of a steady 5ms = %d; want at least one backoff from 32 (25)", jitter, lo)
		}
	}
}

// Against a dependency that turns overloaded at full concurrency for ten
// minutes, the limit settles in a band around where its latency is
// Tolerance× the latency it has when not overloaded, and stays there: it
// does not creep back to the maximum over time (no decrease is taken for
// one that did not help, however noisy the latency). (A dependency
// overloaded from the start is the latency the limiter learns as normal:
// it cannot know better.)
func TestAdaptiveSteadyOverload(t *testing.T) {
	for _, c := range []struct{ n, servers int }{{64, 8}, {32, 4}} {
		for _, jitter := range []float64{0.2, 0.5, 0.9} {
			l, _ := newAdaptiveLimiter(Adaptive{}, c.n)
			r := simulate(c.n, l, []depPhase{dep(10*time.Second, c.n, 5*time.Millisecond), dep(610*time.Second, c.servers, 5*time.Millisecond)}, jitter, 13)
			last := r.limits[len(r.limits)/2:]
			t.Logf("concurrency %d, %d servers, jitter %.1f: limit over the last 5 minutes: %d to %d, mean %.1f", c.n, c.servers, jitter, minOf(last), maxOf(last), mean(last))
			if lo, hi := minOf(last), maxOf(last); lo < c.servers || hi > 4*c.servers {
				t.Errorf("concurrency %d, %d servers, jitter %.1f: limit over the last 5 minutes = %d to %d; want within [%d, %d] (the dependency serves %d at once)",
					c.n, c.servers, jitter, lo, hi, c.servers, 4*c.servers, c.servers)
			}
		}
	}
}

// A dependency that turns slower for everyone by about Tolerance (2×): the
// windows' mean latency is then congested or not by chance, whatever the
// limit, and no run of decreases is long enough to tell; the fit over the
// episode's windows finds that the latency does not follow the limit.
// Adaptive concurrency costs at most a few percent of throughput.
func TestAdaptiveSlowerByAboutTolerance(t *testing.T) {
	for _, slower := range []float64{2, 2.2} {
		for _, jitter := range []float64{0.2, 0.9} {
			for _, seed := range seeds {
				phases := []depPhase{dep(10*time.Second, 0, 5*time.Millisecond), dep(40*time.Second, 0, time.Duration(slower*5e6)), dep(45*time.Second, 0, 5*time.Millisecond)}
				fixed := simulate(32, nil, phases, jitter, seed)
				l, _ := newAdaptiveLimiter(Adaptive{}, 32)
				adaptive := simulate(32, l, phases, jitter, seed)
				d := float64(adaptive.done[1]) / float64(fixed.done[1])
				t.Logf("%.1f× slower, jitter %.1f, seed %d: completed during: fixed %d, adaptive %d (%.3f); limit: mean %.1f, lowest %d",
					slower, jitter, seed, fixed.done[1], adaptive.done[1], d, mean(adaptive.limits[100:400]), minOf(adaptive.limits[100:400]))
				if d < 0.97 {
					t.Errorf("%.1f× slower, jitter %.1f, seed %d: completed during: adaptive %d, fixed %d (%.3f); want at least 0.97 of fixed", slower, jitter, seed, adaptive.done[1], fixed.done[1], d)
				}
			}
		}
	}
}

// The fit of an episode: its slope and standard error.
func TestAdaptiveFit(t *testing.T) {
	var follows, flat, few fit
	for i := range 20 {
		x := math.Log(float64(10 + i%5))
		follows.add(x, x+3)
		flat.add(x, 3+0.01*float64(i%3))
		if i < minFit-1 {
			few.add(x, x)
		}
	}
	if b, se, ok := follows.slope(); !ok || math.Abs(b-1) > 1e-9 || se > 1e-6 {
		t.Errorf("slope of y = x + 3: %v ± %v (%v); want 1 ± 0", b, se, ok)
	}
	if b, se, ok := flat.slope(); !ok || math.Abs(b) > 0.1 || se <= 0 || se > 0.1 {
		t.Errorf("slope of a flat y: %v ± %v (%v); want about 0, a small error", b, se, ok)
	}
	if _, _, ok := few.slope(); ok {
		t.Errorf("slope of %d points: ok; want not enough", minFit-1)
	}
	var same fit
	for range 20 {
		same.add(math.Log(10), 1)
	}
	if _, _, ok := same.slope(); ok {
		t.Errorf("slope at one limit: ok; want none (the limit did not vary)")
	}
}

func TestAdaptiveObserveDoesNotAllocate(t *testing.T) {
	l, _ := newAdaptiveLimiter(Adaptive{}, 32)
	i := 0
	allocs := testing.AllocsPerRun(10_000, func() {
		i++
		l.observe(time.Duration(1+i%7*(i/1000%3))*time.Millisecond, i%5 == 0, l.limit())
	})
	if allocs != 0 {
		t.Errorf("observe allocates %v times per call; want 0", allocs)
	}
}

// BenchmarkAdaptiveObserve is what adaptive concurrency adds to each
// message, from one worker and from all at once (the mutex contended).
func BenchmarkAdaptiveObserve(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		l, _ := newAdaptiveLimiter(Adaptive{}, 32)
		for i := 0; b.Loop(); i++ {
			l.observe(time.Duration(1+i%7)*time.Millisecond, false, 32)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		l, _ := newAdaptiveLimiter(Adaptive{}, 32)
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				l.observe(time.Duration(1+i%7)*time.Millisecond, false, 32)
			}
		})
	})
}

func mean(v []int) float64 {
	m := 0.0
	for _, x := range v {
		m += float64(x) / float64(len(v))
	}
	return m
}

func minOf(v []int) int {
	m := math.MaxInt
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func maxOf(v []int) int {
	m := math.MinInt
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
