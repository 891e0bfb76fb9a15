package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// fakeDB is the dependency the tests control: a database that answers, or
// refuses every call while down. A call takes latency, up or down.
type fakeDB struct {
	down    atomic.Bool
	calls   atomic.Int64
	latency time.Duration
}

var errDB = errors.New("db: dial tcp 10.0.0.7:5432: connection refused")

func (d *fakeDB) call() error {
	d.calls.Add(1)
	if d.latency > 0 {
		time.Sleep(d.latency)
	}
	if d.down.Load() {
		return errDB
	}
	return nil
}

// ksEvents keeps the kill-switch events a consumer emitted, in order.
type ksEvents struct {
	mu    sync.Mutex
	kinds []consumer.EventKind
	errs  []error
	all   []consumer.Event
}

func (l *ksEvents) hook(e consumer.Event) {
	switch e.Kind {
	case consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered:
		l.mu.Lock()
		l.kinds = append(l.kinds, e.Kind)
		l.errs = append(l.errs, e.Err)
		l.all = append(l.all, e)
		l.mu.Unlock()
	}
}

func (l *ksEvents) get() []consumer.EventKind {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]consumer.EventKind(nil), l.kinds...)
}

// events returns the kill-switch events, in order.
func (l *ksEvents) events() []consumer.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]consumer.Event(nil), l.all...)
}

func (l *ksEvents) count(k consumer.EventKind) int {
	n := 0
	for _, x := range l.get() {
		if x == k {
			n++
		}
	}
	return n
}

// outageResult is what one outage run saw.
type outageResult struct {
	acked, deadLetters, requeued, givenBack int
	trips                                   int64
	overspent                               int // acks whose Attempt exceeds 1 + the message's requeues
	duplicates                              int // messages acked twice
	maxAttempt                              int
	recoveryToDone                          time.Duration
}

// runOutage runs total messages through a consumer whose handler calls a
// database that fails every call for outage, starting when half the
// messages were handled. It returns once every message was acked or
// dead-lettered.
func runOutage(t *testing.T, total int, outage time.Duration, ks *consumer.KillSwitch) outageResult {
	t.Helper()
	const workers = 8
	b := memory.NewBroker()
	publishN(t, b, "q", total)
	// A call takes 200µs: a request to a database, answered or refused.
	dep := &fakeDB{latency: 200 * time.Microsecond}
	var (
		mu       sync.Mutex
		requeues = map[string]int{}
		acked    = map[string]int{}
		res      outageResult
	)
	observe := func(_ context.Context, m *broker.Message, s consumer.Settlement, _ error) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case consumer.SettledRequeue:
			requeues[m.ID]++
			res.requeued++
		case consumer.SettledAck:
			acked[m.ID]++
			if acked[m.ID] > 1 {
				res.duplicates++
			}
			if m.Attempt > 1+requeues[m.ID] {
				res.overspent++
			}
			res.maxAttempt = max(res.maxAttempt, m.Attempt)
		case consumer.SettledGiveBack:
			res.givenBack++
		}
	}
	var handled atomic.Int64
	outageStart := make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if err := dep.call(); err != nil {
			return fmt.Errorf("insert order %s: %w", m.ID, err)
		}
		if handled.Add(1) == int64(total/2) {
			dep.down.Store(true)
			close(outageStart)
		}
		return nil
	})
	opts := []consumer.Option{consumer.WithConcurrency(workers), consumer.WithMaxDeliveries(5),
		consumer.WithLogger(quiet), consumer.WithObserver(observe)}
	if ks != nil {
		opts = append(opts, consumer.WithKillSwitch(*ks))
	}
	c, err := consumer.New(newSource(t, b, "q", workers), h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	<-outageStart
	time.Sleep(outage)
	dep.down.Store(false)
	recovered := time.Now()
	waitFor(t, "every message acked or dead-lettered", func() bool {
		st := b.Stats("q")
		return st.Acked+st.DeadLettered == total
	})
	res.recoveryToDone = time.Since(recovered)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	res.acked = len(acked)
	mu.Unlock()
	res.deadLetters = len(b.DeadLetters("q"))
	res.trips = c.KillSwitch().Trips
	return res
}

// The kill switch's reason to be: a fakeDB that fails every call for a
// stretch in the middle of 2,000 messages (10,000 with QUEUEKIT_FULL=1)
// dead-letters none of them with the kill switch, and every one is handled
// once the fakeDB is back, having spent no attempt beyond the failures
// before the first trip and those of the failed probes; without it, the
// same outage dead-letters messages.
//
// A failed probe spends an attempt of its message (see WithKillSwitch),
// and on the memory broker the same message, at the head, takes every
// probe: the restart timeout is half the outage, so that one probe fails
// (the next, 1.5 outages after the trip, finds the fakeDB back). With a
// restart timeout of 20ms against 300ms (doubling), three or four probes
// failed, and the message at the head was dead-lettered in most runs.
func TestKillSwitchOutageDeadLettersNothing(t *testing.T) {
	total, outage := 2000, 300*time.Millisecond
	if os.Getenv("QUEUEKIT_FULL") == "1" {
		total, outage = 10000, 2*time.Second
	}
	ks := consumer.KillSwitch{Window: time.Second, MinMessages: 10, Threshold: 0.5,
		RestartTimeout: outage / 2, MaxRestartTimeout: outage, ProbeMessages: 5}
	with := runOutage(t, total, outage, &ks)
	without := runOutage(t, total, outage, nil)
	t.Logf("%d messages, outage %v: with the kill switch: dead letters %d, acked %d, requeued %d (before the first trip, and failed probes), given back %d, trips %d, max Attempt %d, recovery to all handled %v",
		total, outage, with.deadLetters, with.acked, with.requeued, with.givenBack, with.trips, with.maxAttempt, with.recoveryToDone)
	t.Logf("without it: dead letters %d, acked %d", without.deadLetters, without.acked)

	if with.deadLetters != 0 || with.acked != total || with.duplicates != 0 {
		t.Errorf("with the kill switch: %d dead letters, %d of %d acked, %d acked twice; want 0, all, 0", with.deadLetters, with.acked, total, with.duplicates)
	}
	if with.overspent != 0 {
		t.Errorf("with the kill switch: %d messages acked with an Attempt above 1 + their requeues; give-backs must spend nothing", with.overspent)
	}
	if with.trips < 1 || with.givenBack < 1 {
		t.Errorf("with the kill switch: %d trips, %d given back; want at least 1 of each", with.trips, with.givenBack)
	}
	// Only the failures before the first trip spend an attempt (at most
	// MinMessages in a row, plus the handlers that failed alongside), and
	// those of the failed probes (one message each, ProbeConcurrency 1).
	if limit := ks.MinMessages + 8 + int(with.trips-1); with.requeued > limit {
		t.Errorf("with the kill switch: %d requeues; want at most %d (the failures before the first trip, and %d failed probes)", with.requeued, limit, with.trips-1)
	}
	if without.deadLetters == 0 {
		t.Errorf("without the kill switch: no dead letters; the outage did not exercise the budget")
	}
}

// Trip, probe, re-trip on a failing probe, probe again, recover: the events
// come in that order, Stats.Limit is ProbeConcurrency while probing, and
// no message was dead-lettered or spent an attempt while tripped.
func TestKillSwitchTripProbeRetripRecover(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 60)
	dep := &fakeDB{}
	dep.down.Store(true)
	var log ksEvents
	var c *consumer.Consumer
	var probes atomic.Int32
	var probeLimit atomic.Int64
	hook := func(e consumer.Event) {
		log.hook(e)
		if e.Kind == consumer.EventProbing && probes.Add(1) == 2 {
			probeLimit.Store(int64(c.Stats().Limit))
			dep.down.Store(false) // the second probe finds the database back
		}
	}
	var rec settlements
	var err error
	c, err = consumer.New(newSource(t, b, "q", 4), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return dep.call()
	}), consumer.WithConcurrency(4), consumer.WithLogger(quiet), consumer.WithEventHook(hook), consumer.WithObserver(rec.observe),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 3, RestartTimeout: 10 * time.Millisecond, ProbeMessages: 3, ProbeConcurrency: 2}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "60 acked", func() bool { return b.Stats("q").Acked == 60 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []consumer.EventKind{consumer.EventTripped, consumer.EventProbing, consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered}
	if got := log.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events = %v; want %v", got, want)
	}
	if got := probeLimit.Load(); got != 2 {
		t.Errorf("Stats().Limit while probing = %d; want ProbeConcurrency 2", got)
	}
	st := c.KillSwitch()
	if st.State != "closed" || st.Trips != 2 || !strings.Contains(st.Reason, "connection refused") || !strings.HasPrefix(st.Reason, "a probe failed") {
		t.Errorf("KillSwitch() = %+v; want closed, 2 trips, the reason of the last (a failed probe, with the error)", st)
	}
	if e := log.errs[0]; e == nil || !strings.Contains(e.Error(), "failure ratio") || !strings.Contains(e.Error(), "connection refused") {
		t.Errorf("EventTripped.Err = %v; want the failure ratio and the error", log.errs[0])
	}
	if got := c.Stats().Limit; got != 4 {
		t.Errorf("Stats().Limit after recovery = %d; want 4", got)
	}
	if n := len(b.DeadLetters("q")); n != 0 {
		t.Errorf("%d dead letters; want 0", n)
	}
	// The failures before the first trip were requeued (3 in a row, and
	// those alongside), and so were those of the failed probe (at most
	// ProbeConcurrency 2): a probe's failure spends an attempt. The other
	// failures, in flight at the trip, were given back.
	if req := rec.count(consumer.SettledRequeue); req > 3+4+2 {
		t.Errorf("%d requeues; want at most 9 (the failures before the first trip and of the failed probe)", req)
	}
}

// A tripped consumer in a Supervisor: Health says tripped, with the reason,
// and not ready; it was not restarted. Resume while tripped clears the pause
// only: the intake stays stopped. Shutdown while tripped returns, and the
// in-flight failures were given back unspent.
func TestKillSwitchTrippedHealthPauseResumeAndShutdown(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 50)
	dep := &fakeDB{}
	dep.down.Store(true)
	var log ksEvents
	c, err := consumer.New(newSource(t, b, "q", 4), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return dep.call()
	}), consumer.WithConcurrency(4), consumer.WithLogger(quiet), consumer.WithEventHook(log.hook),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 5, RestartTimeout: time.Hour}))
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
	waitFor(t, "the trip", func() bool { return log.count(consumer.EventTripped) == 1 })
	waitFor(t, "the in-flight handlers to finish", func() bool { return c.Stats().InFlight == 0 })

	h := sup.Health()
	if h.Ready || len(h.Runners) != 1 || h.Runners[0].State != consumer.StateTripped || h.Runners[0].Restarts != 0 {
		t.Errorf("Health = %+v; want not ready, orders tripped, no restart", h)
	}
	if r := h.Runners[0].Reason; !strings.Contains(r, "failure ratio") || !strings.Contains(r, "connection refused") {
		t.Errorf("Health reason = %q; want the failure ratio and the error", r)
	}
	if st := c.KillSwitch(); st.State != "open" || st.Trips != 1 {
		t.Errorf("KillSwitch() = %+v; want open, 1 trip", st)
	}
	delivered := b.Stats("q").Delivered

	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := c.State(); s != consumer.StatePaused {
		t.Errorf("State after Pause while tripped = %v; want paused", s)
	}
	if err := c.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := c.State(); s != consumer.StateTripped {
		t.Errorf("State after Resume while tripped = %v; want tripped (Resume clears the pause only)", s)
	}
	time.Sleep(20 * time.Millisecond) // room for a wrongly reopened intake to take something
	if got := b.Stats("q").Delivered; got != delivered {
		t.Errorf("deliveries went from %d to %d after Resume while tripped; want none", delivered, got)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run: %v", err)
	}
	if n := len(b.DeadLetters("q")); n != 0 {
		t.Errorf("%d dead letters; want 0", n)
	}
	st := b.Stats("q")
	if st.Ready != 50 {
		t.Errorf("after Shutdown %d messages ready; want all 50 back", st.Ready)
	}
	if cs := c.Stats(); cs.GivenBack < 1 {
		t.Errorf("Stats = %+v; want the in-flight failures given back", cs)
	}
}

// Paused when the restart timeout passes: the switch probes but the intake
// stays stopped until Resume, which opens it with the probe concurrency;
// the probes then close the switch.
func TestKillSwitchProbeWhilePausedWaitsForResume(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 30)
	dep := &fakeDB{}
	dep.down.Store(true)
	var log ksEvents
	var c *consumer.Consumer
	hook := func(e consumer.Event) {
		log.hook(e)
		if e.Kind == consumer.EventTripped {
			// Hooks may call Pause; the operator pauses the tripped consumer.
			if err := c.Pause(context.Background()); err != nil {
				t.Errorf("Pause from the hook: %v", err)
			}
			dep.down.Store(false)
		}
	}
	var err error
	c, err = consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return dep.call()
	}), consumer.WithConcurrency(2), consumer.WithLogger(quiet), consumer.WithEventHook(hook),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 2, RestartTimeout: 5 * time.Millisecond, ProbeMessages: 2}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "the probe", func() bool { return c.KillSwitch().State == "probing" })
	delivered := b.Stats("q").Delivered
	time.Sleep(20 * time.Millisecond) // room for a wrongly opened intake to take something
	if got := b.Stats("q").Delivered; got != delivered {
		t.Errorf("deliveries went from %d to %d while paused and probing; want none", delivered, got)
	}
	if s := c.State(); s != consumer.StatePaused {
		t.Errorf("State while paused and probing = %v; want paused", s)
	}
	if err := c.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "30 acked", func() bool { return b.Stats("q").Acked == 30 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []consumer.EventKind{consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered}
	if got := log.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events = %v; want %v", got, want)
	}
}

// Pause and Resume around trips, four outages in a row: the intake is open
// only when the consumer is neither paused nor tripped (Resume while
// tripped clears the pause only; a probe while paused waits for Resume),
// and every message is handled in the end with nothing dead-lettered.
func TestKillSwitchPauseResumeInterleavings(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 200)
	dep := &fakeDB{}
	var log ksEvents
	var handled atomic.Int64
	c, err := consumer.New(newSource(t, b, "q", 4), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if err := dep.call(); err != nil {
			return err
		}
		if n := handled.Add(1); n%40 == 20 && n < 180 {
			dep.down.Store(true) // an outage every 40 messages, 4 in all
		}
		return nil
	}), consumer.WithConcurrency(4), consumer.WithLogger(quiet), consumer.WithEventHook(log.hook), consumer.WithMaxDeliveries(5),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 4, RestartTimeout: 5 * time.Millisecond, ProbeMessages: 2}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	ctx := context.Background()
	for i := range 4 {
		waitFor(t, "an outage's trip", func() bool { return log.count(consumer.EventTripped) > log.count(consumer.EventRecovered) })
		if err := c.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := c.Resume(ctx); err != nil { // while tripped (or probing): the probe opens the intake
				t.Fatal(err)
			}
		}
		dep.down.Store(false)
		if i%2 == 1 {
			waitFor(t, "the probe", func() bool { return c.KillSwitch().State == "probing" })
			if s := c.State(); s != consumer.StatePaused {
				t.Errorf("outage %d: State while paused and probing = %v; want paused", i, s)
			}
			if err := c.Resume(ctx); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "the recovery", func() bool { return log.count(consumer.EventRecovered) == i+1 })
	}
	waitFor(t, "200 acked", func() bool { return b.Stats("q").Acked == 200 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := len(b.DeadLetters("q")); n != 0 {
		t.Errorf("%d dead letters; want 0", n)
	}
	if n := log.count(consumer.EventRecovered); n != 4 {
		t.Errorf("%d recoveries; want 4", n)
	}
}

// Permanent errors never count, whatever Counts says: a flood of them
// dead-letters each message and never trips the switch.
func TestKillSwitchPermanentErrorsNeverCount(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 40)
	c, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return retry.Permanent(fmt.Errorf("decode: %w", errDB))
	}), consumer.WithConcurrency(2), consumer.WithLogger(quiet),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 2, Counts: func(error) bool { return true }}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "40 dead letters", func() bool { return len(b.DeadLetters("q")) == 40 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := c.KillSwitch(); st.Trips != 0 || st.State != "closed" {
		t.Errorf("KillSwitch() = %+v; want closed, no trip", st)
	}
}

// Counts picks the errors that count: failures it rejects are ordinary
// failures (requeued, then dead-lettered by the budget) and never trip the
// switch, however many; the ones it accepts do.
func TestKillSwitchCountsFunc(t *testing.T) {
	errValidation := errors.New("validation: no such customer")
	b := memory.NewBroker()
	publishN(t, b, "q", 10) // m0..m9, handled in order (concurrency 1, prefetch 1)
	dep := &fakeDB{}
	dep.down.Store(true)
	var log ksEvents
	hook := func(e consumer.Event) {
		log.hook(e)
		if e.Kind == consumer.EventTripped {
			dep.down.Store(false)
		}
	}
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		switch m.ID {
		case "m0", "m1", "m2", "m3", "m4":
			return errValidation
		}
		if err := dep.call(); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		return nil
	}), consumer.WithLogger(quiet), consumer.WithMaxDeliveries(5), consumer.WithEventHook(hook),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 3, RestartTimeout: 5 * time.Millisecond, ProbeMessages: 1,
			Counts: func(err error) bool { return errors.Is(err, errDB) }}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "every message settled", func() bool { st := b.Stats("q"); return st.Acked+st.DeadLettered == 10 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	dl := b.DeadLetters("q")
	if len(dl) != 5 || dl[0].ID != "m0" || dl[4].ID != "m4" {
		t.Errorf("dead letters %d; want m0..m4, the 25 validation failures Counts rejects", len(dl))
	}
	if got := log.get(); fmt.Sprint(got) != fmt.Sprint([]consumer.EventKind{consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered}) {
		t.Errorf("events = %v; want one trip (on the database errors), a probe, the recovery", got)
	}
}

// Failures below the threshold are ordinary failures: requeued with their
// attempt spent, and the switch stays closed.
func TestKillSwitchBelowThresholdCountsNormally(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 100)
	var rec settlements
	var calls atomic.Int64
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if calls.Add(1)%4 == 0 {
			return errDB
		}
		return nil
	}), consumer.WithLogger(quiet), consumer.WithObserver(rec.observe),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 5, Threshold: 0.5}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "100 acked", func() bool { return b.Stats("q").Acked == 100 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := c.KillSwitch(); st.Trips != 0 {
		t.Errorf("KillSwitch() = %+v; want no trip at a failure ratio of 0.25", st)
	}
	if n := rec.count(consumer.SettledRequeue); n < 30 || rec.count(consumer.SettledGiveBack) != 0 {
		t.Errorf("%d requeues, %d give-backs; want every failure requeued, none given back", n, rec.count(consumer.SettledGiveBack))
	}
}

// Shutdown while probing with the probe in flight drains it as usual; a
// consumer whose Run context is already done takes nothing. No goroutine
// is left behind (goleak, TestMain).
func TestKillSwitchShutdownWhileProbingAndCancelledContext(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 20)
	dep := &fakeDB{}
	dep.down.Store(true)
	inProbe := make(chan struct{})
	var once sync.Once
	var c *consumer.Consumer
	var err error
	c, err = consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if c.KillSwitch().State == "probing" {
			once.Do(func() { close(inProbe) })
			time.Sleep(10 * time.Millisecond)
			return nil
		}
		return dep.call()
	}), consumer.WithConcurrency(2), consumer.WithLogger(quiet),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 2, RestartTimeout: 5 * time.Millisecond, ProbeMessages: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	<-inProbe
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := len(b.DeadLetters("q")); n != 0 {
		t.Errorf("%d dead letters; want 0", n)
	}
	if st := b.Stats("q"); st.Acked+st.Ready != 20 || st.Unacked != 0 {
		t.Errorf("after Shutdown while probing: %+v; want every message acked or ready", st)
	}

	c2, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(noop), consumer.WithLogger(quiet),
		consumer.WithKillSwitch(consumer.KillSwitch{}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c2.Run(ctx); err != nil {
		t.Errorf("Run(cancelled ctx) = %v; want nil", err)
	}
	if st := c2.KillSwitch(); st.State != "closed" {
		t.Errorf("KillSwitch() = %+v; want closed", st)
	}
}

// An invalid kill switch fails New with ErrInvalidConfig; the zero value
// takes the defaults.
func TestKillSwitchInvalidConfig(t *testing.T) {
	b := memory.NewBroker()
	for _, tc := range []struct {
		name string
		ks   consumer.KillSwitch
	}{
		{"negative window", consumer.KillSwitch{Window: -time.Second}},
		{"window below 10ms", consumer.KillSwitch{Window: time.Millisecond}},
		{"negative min messages", consumer.KillSwitch{MinMessages: -1}},
		{"threshold above 1", consumer.KillSwitch{Threshold: 1.5}},
		{"negative threshold", consumer.KillSwitch{Threshold: -0.1}},
		{"NaN threshold", consumer.KillSwitch{Threshold: math.NaN()}},
		{"negative restart timeout", consumer.KillSwitch{RestartTimeout: -1}},
		{"probe concurrency above the concurrency", consumer.KillSwitch{ProbeConcurrency: 3}},
		{"negative probe concurrency", consumer.KillSwitch{ProbeConcurrency: -1}},
		{"negative probe messages", consumer.KillSwitch{ProbeMessages: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(noop), consumer.WithConcurrency(2),
				consumer.WithKillSwitch(tc.ks))
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("New(WithKillSwitch(%+v)) = %v; want ErrInvalidConfig", tc.ks, err)
			}
		})
	}
	c, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(noop), consumer.WithKillSwitch(consumer.KillSwitch{}))
	if err != nil {
		t.Fatalf("New(WithKillSwitch(zero)) = %v; want the defaults", err)
	}
	defer c.Close()
	if st := c.KillSwitch(); st.State != "closed" || st.Trips != 0 || st.Reason != "" {
		t.Errorf("KillSwitch() = %+v; want closed", st)
	}
	c3, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(noop))
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if st := c3.KillSwitch(); st != (consumer.KillSwitchStatus{}) {
		t.Errorf("KillSwitch() without one = %+v; want the zero status", st)
	}
}
