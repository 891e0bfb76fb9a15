package brokertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// An Outage is a dependency-outage test of an adapter with the consumer's
// kill switch (consumer.WithKillSwitch): RunOutage publishes Messages
// messages and consumes them with a handler that calls a fake dependency the
// test controls; once StartAfter of them were handled, the dependency fails
// every call for Duration, then recovers. The same scenario runs twice, each
// on a fixture of its own: with the kill switch, where the outage must
// dead-letter nothing and every message must be handled once the dependency
// is back; and without it, where the outage's dead letters are counted (the
// figure the kill switch is there to bring to zero).
//
// Zero fields mean the defaults given with each. The defaults keep a run
// short enough for CI (2,000 messages, a 2 s outage: a few seconds per run);
// an adapter's test raises Messages and Duration for the figures of a full
// run.
type Outage struct {
	// Name names the adapter in the summary line ("rabbitmq"). Required.
	Name string
	// Setup returns a fresh fixture (see Harness.Setup); each run has one.
	// RunOutage uses its Publish (or NewPublisher), NewSource and
	// DeadLetters. Required.
	Setup func(t *testing.T) Fixture
	// Messages is how many messages are published before the consumer
	// starts. Default 2,000.
	Messages int
	// Duration is how long the dependency fails every call. Default 2 s.
	Duration time.Duration
	// StartAfter is the fraction of Messages handled successfully before
	// the outage starts. Default 0.3.
	StartAfter float64
	// Concurrency is the consumer's WithConcurrency. Default 8.
	Concurrency int
	// Prefetch is passed to Fixture.NewSource. Default 2×Concurrency.
	Prefetch int
	// MaxDeliveries is the consumer's delivery budget (WithMaxDeliveries).
	// Default 5.
	MaxDeliveries int
	// Latency is how long a successful dependency call takes, and so sets
	// the consumer's speed (about Concurrency/Latency messages a second).
	// Default 20 ms: the pre-outage stretch then lasts over a second at the
	// default size, long enough to measure the rate to recover to.
	Latency time.Duration
	// FailLatency is how long a failing dependency call takes: a refused
	// connection fails fast. Default 1 ms.
	FailLatency time.Duration
	// KillSwitch configures the run with the kill switch. Nil means
	// settings scaled to a test: Window 1 s, MinMessages 20, Threshold 0.5,
	// RestartTimeout Duration/2, MaxRestartTimeout Duration,
	// ProbeConcurrency 1, ProbeMessages 5 (the consumer's own defaults, a
	// 10 s window and a 30 s restart timeout, suit production, not a test
	// of seconds). A KillSwitch given with a zero RestartTimeout gets the
	// same two timeouts. They keep the failed probes of one outage to about
	// two: each failed probe spends an attempt of its message (a poison
	// message must not hold the switch open), and on a broker that hands a
	// requeued message straight back the same message is every probe.
	KillSwitch *consumer.KillSwitch
	// Options are added to the consumer's options in both runs.
	Options []consumer.Option
	// Timeout bounds each run from the consumer's start to its last
	// message. Default 30 s plus three times the expected duration of a
	// run.
	Timeout time.Duration
	// Parallel runs the two runs at the same time (each on its own
	// fixture), halving the test's time. Leave it off for figures: the
	// runs share the machine.
	Parallel bool
	// WantDeadLettersWithout makes the run without the kill switch fail
	// unless the outage dead-lettered something. Leave it off where that
	// is not certain (a short outage at a small size).
	WantDeadLettersWithout bool
}

// An OutageResult is what one run of RunOutage measured.
type OutageResult struct {
	// KillSwitch says whether the run had the kill switch.
	KillSwitch bool
	// Messages and Outage are the run's size and outage duration.
	Messages int
	Outage   time.Duration
	// Handled counts the distinct messages handled successfully.
	Handled int
	// Duplicates counts successful handlings beyond the first of each
	// message (delivery is at-least-once).
	Duplicates int
	// Calls and Failures count the dependency calls, and those that failed
	// because of the outage.
	Calls, Failures int64
	// DeadLetters counts the messages found in the dead-letter destination
	// (Fixture.DeadLetters) after the run.
	DeadLetters int
	// Stats is the consumer's Stats after the run.
	Stats consumer.Stats
	// Trips, Probes and Recoveries count the kill switch's EventTripped,
	// EventProbing and EventRecovered.
	Trips, Probes, Recoveries int
	// Events lists the kill switch's events, each with its time relative
	// to the dependency's recovery ("tripped@-1.93s").
	Events []string
	// PreOutageRate is the success rate before the outage, in messages a
	// second, from the first success to the outage's start.
	PreOutageRate float64
	// RecoveryToFullSpeed is the time from the dependency's recovery to the
	// start of the first 1 s window (sliding by 10 ms) in which at least
	// 90% of PreOutageRate messages were handled; negative when no window
	// after the recovery got there.
	RecoveryToFullSpeed time.Duration
	// Recovered is the time from the dependency's recovery to the kill
	// switch's last EventRecovered; negative when it did not recover.
	Recovered time.Duration
	// Elapsed is the run's time from the consumer's start to its last
	// message.
	Elapsed time.Duration
}

// String returns the result on one line.
func (r OutageResult) String() string {
	ks := "without kill switch"
	if r.KillSwitch {
		ks = "with kill switch"
	}
	return fmt.Sprintf("%s: N=%d, outage=%v, handled=%d, dups=%d, dead letters=%d (stats %d), given back=%d, requeued=%d, "+
		"dependency calls=%d failed=%d, trips=%d probes=%d recoveries=%d, pre-outage rate=%.0f msg/s, recovery-to-full-speed=%s, recovered=%s, elapsed=%v, events=%s",
		ks, r.Messages, r.Outage, r.Handled, r.Duplicates, r.DeadLetters, r.Stats.DeadLettered, r.Stats.GivenBack, r.Stats.Requeued,
		r.Calls, r.Failures, r.Trips, r.Probes, r.Recoveries, r.PreOutageRate, fullSpeed(r.RecoveryToFullSpeed), fullSpeed(r.Recovered),
		r.Elapsed.Round(time.Millisecond), eventList(r.Events))
}

func fullSpeed(d time.Duration) string {
	if d < 0 {
		return "not reached"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func eventList(ev []string) string {
	if len(ev) <= 12 {
		return "[" + strings.Join(ev, " ") + "]"
	}
	return fmt.Sprintf("[%s … %d more … %s]", strings.Join(ev[:6], " "), len(ev)-12, strings.Join(ev[len(ev)-6:], " "))
}

// OutageSummary returns the one-line summary of the two runs of an outage
// test: "rabbitmq killswitch: N=2000, outage=2s, dead letters with=0
// without=734, handled=2000, dups=0, recovery-to-full-speed=0.61s", the
// figures of the run with the kill switch unless said otherwise.
func OutageSummary(name string, with, without OutageResult) string {
	return fmt.Sprintf("%s killswitch: N=%d, outage=%v, dead letters with=%d without=%d, handled=%d, dups=%d, recovery-to-full-speed=%s "+
		"(kill switch recovered %s after the dependency; trips=%d, given back=%d, pre-outage rate=%.0f msg/s; without: handled=%d, recovery-to-full-speed=%s)",
		name, with.Messages, with.Outage, with.DeadLetters, without.DeadLetters, with.Handled, with.Duplicates,
		fullSpeed(with.RecoveryToFullSpeed), fullSpeed(with.Recovered), with.Trips, with.Stats.GivenBack, with.PreOutageRate,
		without.Handled, fullSpeed(without.RecoveryToFullSpeed))
}

// RunOutage runs o twice, with and without the kill switch, as subtests of
// t, logs each run's result and the summary line (OutageSummary), and
// returns both results.
//
// With the kill switch it checks: nothing was dead-lettered (in the
// dead-letter destination or in Stats), every message was handled, the
// kill switch tripped, its events came in order (tripped, then probing,
// then tripped again or recovered; the last one recovered, not before the
// dependency recovered) and it ended closed, and the consumer's State was
// StateTripped during the outage. Without it: every message was either
// handled or dead-lettered, and the dead-letter destination holds what
// Stats counts (more than none with WantDeadLettersWithout). Timing is
// measured and logged, never asserted.
func RunOutage(t *testing.T, o Outage) (with, without OutageResult) {
	t.Helper()
	if o.Name == "" || o.Setup == nil {
		t.Fatal("brokertest: Outage.Name and Outage.Setup are required")
	}
	o.defaults()
	runs := func(t *testing.T) {
		t.Run("with kill switch nothing is dead-lettered and every message is handled", func(t *testing.T) {
			if o.Parallel {
				t.Parallel()
			}
			with = o.run(t, true)
		})
		t.Run("without kill switch the outage's dead letters are counted", func(t *testing.T) {
			if o.Parallel {
				t.Parallel()
			}
			without = o.run(t, false)
		})
	}
	if o.Parallel {
		t.Run("runs", runs) // returns once both parallel runs are done
	} else {
		runs(t)
	}
	t.Log(OutageSummary(o.Name, with, without))
	return with, without
}

func (o *Outage) defaults() {
	if o.Messages <= 0 {
		o.Messages = 2000
	}
	if o.Duration <= 0 {
		o.Duration = 2 * time.Second
	}
	if o.StartAfter <= 0 || o.StartAfter >= 1 {
		o.StartAfter = 0.3
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 2 * o.Concurrency
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = 5
	}
	if o.Latency <= 0 {
		o.Latency = 20 * time.Millisecond
	}
	if o.FailLatency <= 0 {
		o.FailLatency = time.Millisecond
	}
	if o.KillSwitch == nil {
		o.KillSwitch = &consumer.KillSwitch{
			Window:           time.Second,
			MinMessages:      20,
			Threshold:        0.5,
			ProbeConcurrency: 1,
			ProbeMessages:    5,
		}
	}
	if o.KillSwitch.RestartTimeout == 0 {
		ks := *o.KillSwitch
		ks.RestartTimeout, ks.MaxRestartTimeout = o.Duration/2, o.Duration
		o.KillSwitch = &ks
	}
	if o.Timeout <= 0 {
		expected := time.Duration(o.Messages)*o.Latency/time.Duration(o.Concurrency) + o.Duration
		o.Timeout = 30*time.Second + 3*expected
	}
}

// errDependencyDown is what the fake dependency fails with during the
// outage.
var errDependencyDown = errors.New("brokertest: dependency unavailable (outage)")

// dependency is the fake a handler calls. It is up until start is called,
// then fails every call for the outage's duration. Calls read the clock
// instead of a timer flipping a flag, so no goroutine outlives the run.
type dependency struct {
	ok, fail time.Duration // call latencies
	outage   time.Duration
	downAt   atomic.Int64 // UnixNano of the outage's start; 0 before it
	calls    atomic.Int64
	failures atomic.Int64
}

func (d *dependency) start(now time.Time) { d.downAt.CompareAndSwap(0, now.UnixNano()) }

func (d *dependency) window() (down, up time.Time, started bool) {
	n := d.downAt.Load()
	if n == 0 {
		return time.Time{}, time.Time{}, false
	}
	down = time.Unix(0, n)
	return down, down.Add(d.outage), true
}

func (d *dependency) call(ctx context.Context) error {
	d.calls.Add(1)
	now := time.Now()
	down, up, started := d.window()
	failing := started && !now.Before(down) && now.Before(up)
	lat := d.ok
	if failing {
		lat = d.fail
	}
	t := time.NewTimer(lat)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if failing {
		d.failures.Add(1)
		return errDependencyDown
	}
	return nil
}

// outageLedger records the successful handlings of a run.
type outageLedger struct {
	mu    sync.Mutex
	start time.Time
	ok    map[string]int
	at    []time.Duration // success times since start
	done  chan struct{}   // closed when every message is accounted for
	want  int
	dead  func() int // messages dead-lettered so far (Stats)
	fired bool
}

func (l *outageLedger) success(body string) (distinct int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ok[body]++
	l.at = append(l.at, time.Since(l.start))
	l.checkLocked()
	return len(l.ok)
}

func (l *outageLedger) check() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checkLocked()
}

func (l *outageLedger) checkLocked() {
	if !l.fired && len(l.ok)+l.dead() >= l.want {
		l.fired = true
		close(l.done)
	}
}

func outageBody(i int) string { return fmt.Sprintf("outage-%06d", i) }

func (o *Outage) run(t *testing.T, killSwitch bool) OutageResult {
	f := o.Setup(t)
	if f.Publish == nil && f.NewPublisher != nil {
		if f.PublishDestination == "" {
			t.Fatal("brokertest: Fixture.NewPublisher is set but PublishDestination is empty")
		}
		f.Publish = publishVia(t, f)
	}
	if f.Publish == nil || f.NewSource == nil || f.DeadLetters == nil {
		t.Fatal("brokertest: Fixture.Publish (or NewPublisher), NewSource and DeadLetters are required")
	}
	res := OutageResult{KillSwitch: killSwitch, Messages: o.Messages, Outage: o.Duration, RecoveryToFullSpeed: -1, Recovered: -1}

	pctx, pcancel := context.WithTimeout(context.Background(), o.Timeout)
	const chunk = 500
	for i := 0; i < o.Messages; i += chunk {
		batch := make([]broker.Message, 0, chunk)
		for j := i; j < min(i+chunk, o.Messages); j++ {
			batch = append(batch, broker.Message{Key: []byte(strconv.Itoa(j % 64)), Body: []byte(outageBody(j))})
		}
		if err := f.Publish(pctx, batch...); err != nil {
			pcancel()
			t.Fatalf("publishing the outage test's messages: %v", err)
		}
	}
	pcancel()

	dep := &dependency{ok: o.Latency, fail: o.FailLatency, outage: o.Duration}
	startAt := int(float64(o.Messages) * o.StartAfter)
	var c *consumer.Consumer
	led := &outageLedger{ok: map[string]int{}, done: make(chan struct{}), want: o.Messages,
		dead: func() int { return int(c.Stats().DeadLettered) }}

	var (
		evMu   sync.Mutex
		events []consumer.Event
	)
	hook := func(e consumer.Event) {
		switch e.Kind {
		case consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered:
			evMu.Lock()
			events = append(events, e)
			evMu.Unlock()
		case consumer.EventDeadLettered:
			// A dead letter may be the last message accounted for. The
			// check runs elsewhere: Stats is updated after the event.
		}
	}
	opts := []consumer.Option{
		consumer.WithName("outage"),
		consumer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		consumer.WithConcurrency(o.Concurrency),
		consumer.WithMaxDeliveries(o.MaxDeliveries),
		consumer.WithEventHook(hook),
		consumer.WithObserver(func(context.Context, *broker.Message, consumer.Settlement, error) { led.check() }),
	}
	if killSwitch {
		opts = append(opts, consumer.WithKillSwitch(*o.KillSwitch))
	}
	opts = append(opts, o.Options...)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if err := dep.call(ctx); err != nil {
			return fmt.Errorf("calling the dependency: %w", err)
		}
		if led.success(string(m.Body)) >= startAt {
			dep.start(time.Now())
		}
		return nil
	})
	var err error
	c, err = consumer.New(f.NewSource(t, o.Prefetch), h, opts...)
	if err != nil {
		t.Fatalf("consumer.New: %v", err)
	}

	// The state is sampled, since events say what the kill switch did but
	// not what the consumer reported.
	var (
		stMu       sync.Mutex
		states     []consumer.State
		openReason string
	)
	sampleDone := make(chan struct{})
	sampleStop := make(chan struct{})
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			st := c.State()
			ks := c.KillSwitch()
			stMu.Lock()
			if len(states) == 0 || states[len(states)-1] != st {
				states = append(states, st)
			}
			if ks.State == "open" && openReason == "" {
				openReason = ks.Reason
			}
			stMu.Unlock()
			select {
			case <-tick.C:
			case <-sampleStop:
				return
			}
		}
	}()

	led.mu.Lock()
	led.start = time.Now()
	led.mu.Unlock()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(context.Background()) }()
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-runErr; err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
			t.Errorf("Run = %v; want ErrConsumerClosed", err)
		}
		close(sampleStop)
		<-sampleDone
	}

	// The observer checks after every settlement, but Stats may count a
	// dead letter just after its observer ran: poll too.
	deadline := time.NewTimer(o.Timeout)
	poll := time.NewTicker(20 * time.Millisecond)
	wait := true
	for wait {
		select {
		case <-led.done:
			wait = false
		case <-poll.C:
			led.check()
		case <-deadline.C:
			wait = false
		}
	}
	deadline.Stop()
	poll.Stop()
	select {
	case <-led.done:
	default:
		stop()
		led.mu.Lock()
		n := len(led.ok)
		led.mu.Unlock()
		t.Fatalf("after %v: %d of %d messages handled and %d dead-lettered; want all of them accounted for (stats %+v)",
			o.Timeout, n, o.Messages, c.Stats().DeadLettered, c.Stats())
	}
	res.Elapsed = time.Since(led.start)
	ksEnd := c.KillSwitch()
	stop()

	res.Stats = c.Stats()
	res.Calls, res.Failures = dep.calls.Load(), dep.failures.Load()
	led.mu.Lock()
	res.Handled = len(led.ok)
	for _, n := range led.ok {
		res.Duplicates += n - 1
	}
	at := slices.Clone(led.at)
	start := led.start
	led.mu.Unlock()

	// Count the dead letters: as many as Stats says, or, when it says none,
	// whatever shows up within a second.
	want := int(res.Stats.DeadLettered)
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	if want == 0 {
		cancel()
		ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		want = 1
	}
	dead := f.DeadLetters(ctx, t, want)
	cancel()
	res.DeadLetters = len(dead)
	deadBodies := map[string]bool{}
	for _, m := range dead {
		deadBodies[string(m.Body)] = true
	}

	down, up, started := dep.window()
	if !started {
		t.Fatalf("the outage never started: %d messages handled; it starts after %d", res.Handled, startAt)
	}
	res.PreOutageRate, res.RecoveryToFullSpeed = throughput(at, down.Sub(start), up.Sub(start))
	evMu.Lock()
	for _, e := range events {
		switch e.Kind {
		case consumer.EventTripped:
			res.Trips++
		case consumer.EventProbing:
			res.Probes++
		case consumer.EventRecovered:
			res.Recoveries++
		}
		res.Events = append(res.Events, fmt.Sprintf("%s@%+.2fs", e.Kind, e.Time.Sub(up).Seconds()))
	}
	kinds := make([]consumer.EventKind, len(events))
	var lastRecovered time.Time
	for i, e := range events {
		kinds[i] = e.Kind
		if e.Kind == consumer.EventRecovered {
			lastRecovered = e.Time
		}
	}
	evMu.Unlock()
	if !lastRecovered.IsZero() {
		res.Recovered = lastRecovered.Sub(up)
	}
	stMu.Lock()
	seen := slices.Clone(states)
	reason := openReason
	stMu.Unlock()
	t.Logf("%s %s", o.Name, res)
	t.Logf("%s states seen: %v; kill switch at the end: %+v; reason while open: %q", o.Name, seen, ksEnd, reason)

	if res.Failures == 0 {
		t.Errorf("no dependency call failed: the outage (%v from %v) did not hit the consumer", o.Duration, down.Sub(start))
	}
	if !killSwitch {
		if len(kinds) != 0 {
			t.Errorf("kill switch events %v without a kill switch", res.Events)
		}
		if res.DeadLetters != int(res.Stats.DeadLettered) {
			t.Errorf("the dead-letter destination holds %d messages; the consumer's Stats.DeadLettered = %d", res.DeadLetters, res.Stats.DeadLettered)
		}
		missing := 0
		for i := range o.Messages {
			if b := outageBody(i); led.ok[b] == 0 && !deadBodies[b] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%d of %d messages were neither handled nor dead-lettered; want none lost", missing, o.Messages)
		}
		if o.WantDeadLettersWithout && res.DeadLetters == 0 {
			t.Errorf("without the kill switch the outage dead-lettered nothing; want dead letters (the premise of the test)")
		}
		return res
	}

	for i, m := range dead[:min(len(dead), 3)] {
		t.Logf("dead letter %d: %s, headers %v", i, m.Body, m.Header)
	}
	if res.DeadLetters != 0 || res.Stats.DeadLettered != 0 {
		t.Errorf("with the kill switch, %d messages in the dead-letter destination (Stats.DeadLettered %d); want 0: the outage must spend no message's budget (%v)",
			res.DeadLetters, res.Stats.DeadLettered, head(sortedKeys(deadBodies)))
	}
	if res.Handled != o.Messages {
		t.Errorf("with the kill switch, %d of %d messages handled; want every one once the dependency is back", res.Handled, o.Messages)
	}
	if err := killSwitchSequence(kinds); err != nil {
		t.Errorf("kill switch events %v: %v", res.Events, err)
	}
	if !lastRecovered.IsZero() && lastRecovered.Before(up) {
		t.Errorf("the kill switch recovered %v before the dependency did; it cannot have had ProbeMessages successes",
			up.Sub(lastRecovered))
	}
	if !slices.Contains(seen, consumer.StateTripped) {
		t.Errorf("states seen %v; want %v during the outage", seen, consumer.StateTripped)
	}
	if ksEnd.State != "closed" {
		t.Errorf("KillSwitch() after the run = %+v; want state closed", ksEnd)
	}
	if reason == "" {
		t.Errorf("KillSwitch().Reason was empty while open; want why it tripped")
	}
	return res
}

// killSwitchSequence checks the order of the kill switch's events: it trips
// first, a probe follows each trip, each probe ends in a trip or a
// recovery, and the last event is a recovery.
func killSwitchSequence(kinds []consumer.EventKind) error {
	if len(kinds) == 0 {
		return errors.New("none; want tripped, probing, recovered")
	}
	prev := consumer.EventRecovered // the closed state, before the first trip
	for i, k := range kinds {
		ok := false
		switch k {
		case consumer.EventTripped:
			ok = prev == consumer.EventRecovered || prev == consumer.EventProbing
		case consumer.EventProbing:
			ok = prev == consumer.EventTripped
		case consumer.EventRecovered:
			ok = prev == consumer.EventProbing
		}
		if !ok {
			return fmt.Errorf("event %d is %v after %v; want tripped → probing → (tripped | recovered)", i, k, prev)
		}
		prev = k
	}
	if prev != consumer.EventRecovered {
		return fmt.Errorf("last event %v; want recovered", prev)
	}
	return nil
}

// throughput returns the success rate before the outage (from the first
// success to down) and the time from up to the start of the first 1 s window,
// sliding by 10 ms, with at least 90% of that rate (negative when none).
func throughput(at []time.Duration, down, up time.Duration) (rate float64, toFull time.Duration) {
	slices.Sort(at)
	toFull = -1
	if len(at) == 0 {
		return 0, toFull
	}
	before := 0
	for _, a := range at {
		if a < down {
			before++
		}
	}
	if span := down - at[0]; span > 0 {
		rate = float64(before) / span.Seconds()
	}
	if rate == 0 {
		return 0, toFull
	}
	need := 0.9 * rate
	last := at[len(at)-1]
	lo, hi := 0, 0
	for s := up; s+time.Second <= last; s += 10 * time.Millisecond {
		for lo < len(at) && at[lo] < s {
			lo++
		}
		for hi < len(at) && at[hi] < s+time.Second {
			hi++
		}
		if float64(hi-lo) >= need {
			return rate, s - up
		}
	}
	return rate, toFull
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
