package consumer

import (
	"context"
	"errors"
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
// with interleaved successes (each delays it by one failure), and never on
// a steady failure ratio below the threshold.
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
