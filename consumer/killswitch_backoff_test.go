package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// tripDelays returns the Event.Delay of each EventTripped, in order.
func tripDelays(evs []consumer.Event) []time.Duration {
	var out []time.Duration
	for _, e := range evs {
		if e.Kind == consumer.EventTripped {
			out = append(out, e.Delay)
		}
	}
	return out
}

// checkProbeTimes checks that each EventProbing came at least its trip's
// Delay after that EventTripped: the timer never fires early, so this
// holds on any machine (no upper bound is asserted).
func checkProbeTimes(t *testing.T, evs []consumer.Event) {
	t.Helper()
	var trip consumer.Event
	for _, e := range evs {
		switch e.Kind {
		case consumer.EventTripped:
			trip = e
		case consumer.EventProbing:
			if gap := e.Time.Sub(trip.Time); gap < trip.Delay {
				t.Errorf("EventProbing %v after its EventTripped; want at least its Delay %v", gap, trip.Delay)
			}
		}
	}
}

// The poison run of TestKillSwitchPoisonMessageAtTheHeadIsDeadLetteredAndTheSwitchRecovers
// backs off: the first trip waits RestartTimeout (5ms), each failed probe
// doubles the wait up to MaxRestartTimeout (40ms).
func TestKillSwitchPoisonProbesBackOff(t *testing.T) {
	r := runPoison(t, 20, 1, consumer.KillSwitch{MinMessages: 1, RestartTimeout: 5 * time.Millisecond,
		MaxRestartTimeout: 40 * time.Millisecond, ProbeMessages: 2})
	checkPoisonOutcome(t, r, 20)
	ms := time.Millisecond
	want := []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 40 * ms, 40 * ms}
	if got := tripDelays(r.log.events()); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("EventTripped delays = %v; want %v", got, want)
	}
	checkProbeTimes(t, r.log.events())
}

// The restart timeout doubles on each failed probe, up to
// MaxRestartTimeout, and starts again from RestartTimeout once the switch
// closed: a second outage after the recovery waits RestartTimeout again.
func TestKillSwitchRestartTimeoutBacksOffAndResets(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 30)
	dep := &fakeDB{}
	dep.down.Store(true)
	var log ksEvents
	var trips atomic.Int32
	hook := func(e consumer.Event) {
		log.hook(e)
		switch e.Kind {
		case consumer.EventTripped:
			if n := trips.Add(1); n == 5 || n == 6 {
				dep.down.Store(false) // the fifth probe, and the probe after the second outage's trip, succeed
			}
		case consumer.EventRecovered:
			if log.count(consumer.EventRecovered) == 1 {
				dep.down.Store(true) // a second outage at once
			}
		}
	}
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return dep.call()
	}), consumer.WithLogger(quiet), consumer.WithEventHook(hook), consumer.WithMaxDeliveries(100),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 1, RestartTimeout: 2 * time.Millisecond,
			MaxRestartTimeout: 8 * time.Millisecond, ProbeMessages: 1}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "30 acked", func() bool { return b.Stats("q").Acked == 30 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	T, P, R := consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered
	wantKinds := []consumer.EventKind{T, P, T, P, T, P, T, P, T, P, R, T, P, R}
	if got := log.get(); fmt.Sprint(got) != fmt.Sprint(wantKinds) {
		t.Fatalf("events = %v; want %v", got, wantKinds)
	}
	ms := time.Millisecond
	want := []time.Duration{2 * ms, 4 * ms, 8 * ms, 8 * ms, 8 * ms, 2 * ms}
	if got := tripDelays(log.events()); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("EventTripped delays = %v; want %v (doubling to the max, reset by the recovery)", got, want)
	}
	checkProbeTimes(t, log.events())
	if n := len(b.DeadLetters("q")); n != 0 {
		t.Errorf("%d dead letters; want 0", n)
	}
}

// While open, the status and the health reason say when the switch probes
// next; probing and closed, they do not.
func TestKillSwitchStatusSaysWhenItProbesNext(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 10)
	dep := &fakeDB{}
	dep.down.Store(true)
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return dep.call()
	}), consumer.WithLogger(quiet), consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 2, RestartTimeout: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: quiet}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "the trip, its probe scheduled", func() bool { return !c.KillSwitch().NextProbe.IsZero() })
	st := c.KillSwitch()
	if st.State != "open" || st.NextProbe.Sub(st.Since) < time.Hour || st.NextProbe.Sub(st.Since) > time.Hour+time.Minute {
		t.Errorf("KillSwitch() = %+v; want open, the next probe an hour after the trip", st)
	}
	reason := sup.Health().Runners[0].Reason
	if !strings.Contains(reason, "connection refused") || !strings.Contains(reason, "; next probe at "+st.NextProbe.UTC().Format(time.RFC3339)) {
		t.Errorf("health reason = %q; want the error and the next probe's time", reason)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run: %v", err)
	}
	if st := c.KillSwitch(); !st.NextProbe.IsZero() && st.State != "open" {
		t.Errorf("KillSwitch() after the stop = %+v", st)
	}
}

// Shutdown while tripped, with the probe's timer pending, and Shutdown as
// the timer fires: Shutdown returns, no probe starts after the consumer
// stopped, and nothing is left running (goleak).
func TestKillSwitchShutdownWithTheProbePending(t *testing.T) {
	for _, restart := range []time.Duration{time.Hour, time.Millisecond, 0} {
		for i := range 10 {
			b := memory.NewBroker()
			publishN(t, b, "q", 10)
			var mu sync.Mutex
			var kinds []consumer.EventKind
			tripped := make(chan struct{})
			var once sync.Once
			wait := restart
			if wait == 0 {
				wait = time.Duration(i) * 100 * time.Microsecond // around the Shutdown
			}
			c, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				return errDB
			}), consumer.WithConcurrency(2), consumer.WithMaxDeliveries(100), consumer.WithLogger(quiet), consumer.WithEventHook(func(e consumer.Event) {
				mu.Lock()
				kinds = append(kinds, e.Kind)
				mu.Unlock()
				if e.Kind == consumer.EventTripped {
					once.Do(func() { close(tripped) })
				}
			}), consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 2, RestartTimeout: max(wait, time.Nanosecond)}))
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- c.Run(context.Background()) }()
			<-tripped
			if err := c.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if err := <-done; !errors.Is(err, consumer.ErrConsumerClosed) {
				t.Fatalf("Run: %v", err)
			}
			if wait < time.Second {
				time.Sleep(2*wait + time.Millisecond) // room for a timer left armed to fire
			}
			mu.Lock()
			got := append([]consumer.EventKind(nil), kinds...)
			mu.Unlock()
			stopped := false
			for _, k := range got {
				if stopped && (k == consumer.EventProbing || k == consumer.EventTripped || k == consumer.EventRecovered) {
					t.Fatalf("restart %v, run %d: %v after EventStopped (events %v)", wait, i, k, got)
				}
				stopped = stopped || k == consumer.EventStopped
			}
			if !stopped {
				t.Fatalf("no EventStopped: %v", got)
			}
			if st := b.Stats("q"); st.Unacked != 0 || st.Acked != 0 || st.Ready != 10 {
				t.Fatalf("broker after Shutdown: %+v; want every message ready again", st)
			}
			goleak.VerifyNone(t)
		}
	}
}
