package consumer

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

// onLog is a slog.Handler that calls f with each record's message: a test
// hooks into the moment a transition logs, between its state change and
// its event.
type onLog struct{ f func(msg string) }

func (h onLog) Enabled(context.Context, slog.Level) bool      { return true }
func (h onLog) Handle(_ context.Context, r slog.Record) error { h.f(r.Message); return nil }
func (h onLog) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h onLog) WithGroup(string) slog.Handler                 { return h }

// The kill switch's events come in the order of its transitions (review R3
// MEDIUM-2: promqueuekit's state gauge is set from them). A transition on
// another worker, between a close (or a probe) and its event, used to emit
// its EventTripped first: "probing, tripped, recovered". Deterministic:
// the other worker's failure comes while the first transition logs, and
// gets up to a second to emit before that transition's event.
func TestKillSwitchEventsInTransitionOrder(t *testing.T) {
	for _, tc := range []struct {
		name, logged string
		from         int32
		transition   func(c *Consumer)
		want         []EventKind
	}{
		{"recover then trip", "kill switch closed", ksProbing, (*Consumer).ksRecover, []EventKind{EventRecovered, EventTripped}},
		{"probe then re-trip", "kill switch probing", ksOpen, (*Consumer).ksProbe, []EventKind{EventProbing, EventTripped}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			src, err := b.Source("q", memory.SourceConfig{})
			if err != nil {
				t.Fatal(err)
			}
			var (
				mu     sync.Mutex
				events []EventKind
				c      *Consumer
				once   sync.Once
				other  = make(chan struct{})
			)
			hook := func(e Event) {
				switch e.Kind {
				case EventTripped, EventProbing, EventRecovered:
					mu.Lock()
					events = append(events, e.Kind)
					mu.Unlock()
				}
			}
			log := slog.New(onLog{func(msg string) {
				if !strings.Contains(msg, tc.logged) {
					return
				}
				once.Do(func() {
					// Another worker's counted failure, right after the
					// transition's state change: it trips the switch.
					go func() { defer close(other); c.ksOutcome(false, errDep) }()
					select {
					case <-other:
					case <-time.After(200 * time.Millisecond):
					}
				})
			}})
			c, err = New(src, HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
				WithLogger(log), WithEventHook(hook),
				WithKillSwitch(KillSwitch{MinMessages: 1, RestartTimeout: time.Hour}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.ks.state.Store(tc.from)
			tc.transition(c)
			<-other
			mu.Lock()
			defer mu.Unlock()
			if len(events) != len(tc.want) || events[0] != tc.want[0] || events[1] != tc.want[1] {
				t.Errorf("events %v; want %v", events, tc.want)
			}
			if st := c.KillSwitch().State; st != "open" {
				t.Errorf("state %q after the trip; want open", st)
			}
		})
	}
}

// failingSource hands out its inner source's first delivery, then fails
// one Receive (fatally) once fail is closed, whatever its ctx says; every
// later Receive waits for its ctx.
type failingSource struct {
	broker.Source
	calls  atomic.Int32
	fail   chan struct{}
	failed atomic.Bool
}

func (s *failingSource) Receive(ctx context.Context) (broker.Delivery, error) {
	if s.calls.Add(1) == 1 {
		return s.Source.Receive(ctx)
	}
	if !s.failed.Load() {
		// Not ctx: the trip stops the intake before it emits.
		<-s.fail
		if s.failed.CompareAndSwap(false, true) {
			return nil, broker.Fatal(errors.New("source gone"))
		}
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A Run that returns an error, the consumer not closed (no Supervisor to
// restart it), leaves no restart timer armed (review R3 L2): its probe
// would resume the source and set the switch probing with no Run. The
// next Run arms it again. After Close, the status names no probe to come
// (review R3 L1).
func TestKillSwitchNoProbeBetweenRunsNorAfterStop(t *testing.T) {
	b := memory.NewBroker()
	if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	inner, err := b.Source("q", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	src := &failingSource{Source: inner, fail: make(chan struct{})}
	var once sync.Once
	hook := func(e Event) {
		if e.Kind == EventTripped {
			once.Do(func() { close(src.fail) })
		}
	}
	c, err := New(src, HandlerFunc(func(context.Context, *broker.Message) error {
		// The other worker in Receive first, so that it fails the run.
		for src.calls.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		return errDep
	}),
		WithConcurrency(2), WithLogger(quietLog), WithEventHook(hook),
		WithKillSwitch(KillSwitch{MinMessages: 1, RestartTimeout: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Run(context.Background()); err == nil || errors.Is(err, ErrConsumerClosed) {
		t.Fatalf("Run = %v; want the source's error", err)
	}
	c.ks.mu.Lock()
	tm := c.ks.timer
	c.ks.mu.Unlock()
	if tm != nil && tm.Stop() {
		t.Error("the restart timer is still armed after Run returned")
	}
	if st := c.KillSwitch(); st.State != "open" || !st.NextProbe.IsZero() {
		t.Errorf("between Runs: KillSwitch() = %+v; want open, no next probe", st)
	}

	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	for deadline := time.Now().Add(20 * time.Second); c.KillSwitch().NextProbe.IsZero(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the next Run did not arm the owed probe")
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	<-done
	st := c.KillSwitch()
	if st.State != "open" || !st.NextProbe.IsZero() {
		t.Errorf("after Close: KillSwitch() = %+v; want open, no next probe", st)
	}
	if why := c.healthReason(); strings.Contains(why, "next probe") || !strings.Contains(why, "tripped") {
		t.Errorf("after Close: health reason %q; want tripped, no next probe", why)
	}
}
