package consumer

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

// Each bucket of the window is a cache line of its own.
func TestKillSwitchBucketIsOneCacheLine(t *testing.T) {
	if got := unsafe.Sizeof(ksBucket{}); got != 64 {
		t.Errorf("unsafe.Sizeof(ksBucket{}) = %d; want 64", got)
	}
}

// BenchmarkKillSwitchOutcome is the kill switch's own step on the worker
// path for a handler that succeeded (closed switch), alone and from
// several goroutines at once (the workers share the current bucket).
func BenchmarkKillSwitchOutcome(b *testing.B) {
	c := &Consumer{ks: newKillSwitch(KillSwitch{}.withDefaults())}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if c.ksOutcome(false, nil) {
				b.Fatal("give back on success")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.ksOutcome(false, nil)
			}
		})
	})
}

// The switch trips on MinMessages failures in a row, on a run of failures
// with interleaved successes (the window's ratio, or the recent run's), and
// never on a steady failure ratio below the threshold.
func TestKillSwitchTripsOnRecentRuns(t *testing.T) {
	errDep := errors.New("dependency down")
	for _, tc := range []struct {
		name    string
		pattern string // f: counted failure, s: success; repeated
		n       int    // outcomes fed
		trips   bool
	}{
		{"20 failures in a row", "f", 20, true},
		{"19 failures in a row", "f", 19, false},
		{"a quarter failing, for long", "fsss", 4000, false},
		{"two fifths failing, for long", "fsfss", 4000, false},
		{"three quarters failing", "fffs", 80, true},
		{"an outage after 1000 successes", strings.Repeat("s", 1000) + strings.Repeat("f", 100), 1100, true},
		{"an outage after 1000 successes, 19 failures", strings.Repeat("s", 1000) + strings.Repeat("f", 19), 1019, false},
		{"an outage with successes interleaved", "fffffsfffffsfffffsfffffs", 24, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			src, err := b.Source("q", memory.SourceConfig{})
			if err != nil {
				t.Fatal(err)
			}
			// A long window with no clock running: the whole of it is one
			// bucket, as in a burst.
			c, err := New(src, HandlerFunc(func(context.Context, *broker.Message) error { return nil }), WithLogger(quietLog),
				WithKillSwitch(KillSwitch{MinMessages: 20, Threshold: 0.5, Window: 1 << 40, RestartTimeout: time.Hour}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			at := -1
			for i := range tc.n {
				var err error
				if tc.pattern[i%len(tc.pattern)] == 'f' {
					err = errDep
				}
				if c.ksOutcome(false, err) && at < 0 {
					at = i
				}
			}
			if tripped := c.KillSwitch().State == "open"; tripped != tc.trips {
				t.Errorf("tripped = %v (at outcome %d); want %v", tripped, at, tc.trips)
			}
			t.Logf("KillSwitch() = %+v", c.KillSwitch())
		})
	}
}

// Shutdown while tripped stops the pending restart timer: the timer armed
// by the trip has been stopped by the time Shutdown returns (Stop reports
// false: nothing left to stop), and no probe is scheduled after it.
func TestKillSwitchShutdownStopsThePendingTimer(t *testing.T) {
	b := memory.NewBroker()
	for range 5 {
		if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := b.Source("q", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(src, HandlerFunc(func(context.Context, *broker.Message) error { return errors.New("db down") }),
		WithLogger(quietLog), WithKillSwitch(KillSwitch{MinMessages: 1, RestartTimeout: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	var tm *time.Timer
	for deadline := time.Now().Add(20 * time.Second); tm == nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the trip's timer")
		}
		c.ks.mu.Lock()
		tm = c.ks.timer
		c.ks.mu.Unlock()
	}
	if err := c.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrConsumerClosed) {
		t.Fatalf("Run: %v", err)
	}
	if tm.Stop() {
		t.Error("the restart timer was still pending after Shutdown")
	}
	c.ks.mu.Lock()
	defer c.ks.mu.Unlock()
	if c.ks.timer != nil || !c.ks.stopped {
		t.Errorf("after Shutdown: timer %v, stopped %v; want none, true", c.ks.timer, c.ks.stopped)
	}
}

// newTestSwitch returns a consumer with a kill switch and no Run: the test
// feeds outcomes to ksOutcome and moves the window's clock by hand (tick).
func newTestSwitch(t *testing.T, ks KillSwitch) *Consumer {
	t.Helper()
	b := memory.NewBroker()
	src, err := b.Source("q", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if ks.RestartTimeout == 0 {
		ks.RestartTimeout = time.Hour
	}
	c, err := New(src, HandlerFunc(func(context.Context, *broker.Message) error { return nil }), WithLogger(quietLog), WithKillSwitch(ks))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// tick moves the window's clock on by one bucket, as runClock does.
func tick(k *killSwitch) { k.tick() }

var errDep = errors.New("dependency down")

// Only the outcomes within the window count (review R1 M2): four failures,
// a window of quiet, one failure: one outcome in the window, below
// MinMessages 5; no trip. The same five failures within a window trip it.
func TestKillSwitchForgetsOutcomesOlderThanTheWindow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		quiet int // buckets of quiet after the first four failures
		trips bool
	}{
		{"quiet for a window", ksBuckets, false},
		{"quiet for ten windows", 10 * ksBuckets, false},
		{"quiet for half a window", ksBuckets / 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestSwitch(t, KillSwitch{MinMessages: 5, Window: time.Second})
			for range 4 {
				c.ksOutcome(false, errDep)
			}
			for range tc.quiet {
				tick(c.ks)
			}
			c.ksOutcome(false, errDep)
			st := c.KillSwitch()
			if tripped := st.State == "open"; tripped != tc.trips {
				t.Errorf("tripped = %v; want %v (KillSwitch() = %+v)", tripped, tc.trips, st)
			}
		})
	}
}

// ksSeq feeds n outcomes to c, a failure where fail(i) says so, moving the
// clock on by a bucket every perBucket outcomes. It returns the outcome at
// which the switch first tripped (-1: never) and how many trips there were
// (the switch is closed again at once after each, as by probes that
// succeed).
func ksSeq(c *Consumer, n, perBucket int, fail func(i int) bool) (first, trips int) {
	first = -1
	for i := range n {
		if i > 0 && i%perBucket == 0 {
			tick(c.ks)
		}
		var err error
		if fail(i) {
			err = errDep
		}
		c.ksOutcome(false, err)
		if c.ks.state.Load() == ksOpen {
			if first < 0 {
				first = i
			}
			trips++
			// Close it again as the probes would: the window starts over.
			c.ks.state.Store(ksProbing)
			c.ksRecover()
		}
	}
	return first, trips
}

// A steady failure rate below Threshold never trips the switch (review R1
// M3), however its failures cluster within a window; a rate at or above it
// does, and an outage after a window of successes trips it after about
// MinMessages failures. Deterministic sequences; the window holds 2,000
// outcomes (200 a bucket).
func TestKillSwitchTripsOnlyAtTheThreshold(t *testing.T) {
	const perBucket = 200
	// A 45 % rate in stretches of 100: 36 failures in the first 60
	// outcomes (60 %), 9 in the last 40.
	clustered := func(i int) bool {
		j := i % 100
		if j < 60 {
			return j%5 < 3
		}
		return (j-60)%40 < 9
	}
	// A 45 % rate, failures drawn from a fixed pseudo-random sequence.
	rng := rand.New(rand.NewPCG(1, 2))
	draws := make([]bool, 40_000)
	for i := range draws {
		draws[i] = rng.Float64() < 0.45
	}
	even := func(ratio float64) func(int) bool {
		return func(i int) bool { return int(float64(i+1)*ratio) > int(float64(i)*ratio) }
	}
	for _, tc := range []struct {
		name      string
		n         int
		fail      func(int) bool
		wantTrips bool
		within    int // when wantTrips: the first trip by this outcome
	}{
		{"45 % evenly", 36_000, even(0.45), false, 0},
		{"45 % clustered, 60 % in stretches", 36_000, func(i int) bool { return i >= 2000 && clustered(i) || i < 2000 && even(0.45)(i) }, false, 0},
		{"45 % pseudo-random", 40_000, func(i int) bool { return i >= 2000 && draws[i] || i < 2000 && even(0.45)(i) }, false, 0},
		{"55 % evenly", 36_000, even(0.55), true, 20},
		{"an outage after a window of successes", 2100, func(i int) bool { return i >= 2000 }, true, 2000 + 20},
		{"an outage after a 45 % rate", 4100, func(i int) bool { return i >= 4000 || even(0.45)(i) }, true, 4000 + 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestSwitch(t, KillSwitch{MinMessages: 20, Threshold: 0.5, Window: time.Hour})
			first, trips := ksSeq(c, tc.n, perBucket, tc.fail)
			t.Logf("%d outcomes: first trip at %d, %d trips; last reason %q", tc.n, first, trips, c.KillSwitch().Reason)
			switch {
			case !tc.wantTrips && trips > 0:
				t.Errorf("%d trips (first at outcome %d); want none below the threshold", trips, first)
			case tc.wantTrips && (first < 0 || first > tc.within):
				t.Errorf("first trip at outcome %d; want one by %d", first, tc.within)
			}
		})
	}
}
