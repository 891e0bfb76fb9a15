package consumer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// KillSwitch configures WithKillSwitch. Zero fields take the defaults named
// on each; negative values (and a Threshold outside (0, 1]) are invalid.
type KillSwitch struct {
	// Window is the sliding window of handler outcomes the failure ratio is
	// taken over (default 10s, at least 10ms). It is kept as ten buckets
	// of Window/10, so it spans between 9/10 of Window and Window. Only the
	// outcomes within it count, for both rules (see WithKillSwitch): on a
	// consumer that sees fewer than MinMessages outcomes in a Window, the
	// switch never trips.
	Window time.Duration
	// MinMessages is how many outcomes (successes and counted failures)
	// the window must hold before the switch may trip (default 20, at
	// most 10^9); a sudden outage trips it after about that many failures.
	//
	// It is also the sample the ratio is trusted on: a steady failure rate
	// just below Threshold reaches it by chance over a small sample (at a
	// true 45 % and Threshold 0.5, 20 outcomes show 50 % or more about 4
	// times in 10), which matters when the window holds few outcomes (a
	// quiet consumer; just after Run starts or the switch closes, when the
	// window starts empty). Where the failure rate runs close to
	// Threshold, raise MinMessages.
	//
	// The failures before the trip are ordinary failures: each spends an
	// attempt. A broker that hands a requeued message straight back
	// (memory; Kafka, within a partition; a RabbitMQ requeue at the head)
	// can give the same message every one of them, so that it spends its
	// whole budget before the window holds MinMessages outcomes. There,
	// the safe bound is MinMessages < WithMaxDeliveries (with n workers
	// the first n messages share the failures; keep it below
	// WithMaxDeliveries anyway, as a single worker may see them all).
	MinMessages int
	// Threshold is the failure ratio, in (0, 1], that trips the switch
	// (default 0.5).
	Threshold float64
	// RestartTimeout is how long the switch stays tripped before it probes
	// (default 30s). Each failed probe doubles it for the next, up to
	// MaxRestartTimeout; closing the switch resets it.
	RestartTimeout time.Duration
	// MaxRestartTimeout bounds the doubling of RestartTimeout while the
	// probes keep failing (default the larger of 5 minutes and 10 ×
	// RestartTimeout; at least RestartTimeout: equal to it, it never
	// doubles). A long outage spends one attempt of each probe's messages
	// per probe: see WithKillSwitch for the arithmetic.
	MaxRestartTimeout time.Duration
	// ProbeConcurrency is how many probes (handlers of messages received
	// while probing) run at once (default 1, at most WithConcurrency's n).
	// A handler still running from before the trip does not count
	// against it (it still counts against WithConcurrency and an adaptive
	// limit): a call stuck on the dead dependency does not hold the probe
	// up while another worker is free.
	ProbeConcurrency int
	// ProbeMessages is how many successes while probing close the switch
	// (default 5).
	ProbeMessages int
	// Counts reports which handler errors are failures of the protected
	// dependency (default: every error). A permanent error
	// (retry.Permanent: a bad message, not a sick dependency) and
	// ErrNotHandled never count, whatever Counts says. An error that does
	// not count is no outcome of the window at all: neither a failure nor a
	// success. Counts is called from the workers, concurrently; a Counts
	// that panics counts the error.
	//
	// Name the dependency's errors here rather than count every one: with
	// the default, a message that fails every time for a reason of its own
	// (a bug its content triggers) counts too. It can trip the switch by
	// itself, and it fails every probe it takes part in, keeping the switch
	// open (with the restart timeout doubling) until those probes have
	// spent its delivery budget and dead-lettered it.
	Counts func(err error) bool
}

// Kill switch defaults.
const (
	defaultKSWindow           = 10 * time.Second
	defaultKSMinMessages      = 20
	defaultKSThreshold        = 0.5
	defaultKSRestartTimeout   = 30 * time.Second
	defaultKSMaxRestart       = 5 * time.Minute // or 10 × RestartTimeout, the larger
	defaultKSProbeConcurrency = 1
	defaultKSProbeMessages    = 5
	minKSWindow               = 10 * time.Millisecond
	maxKSMinMessages          = 1_000_000_000
)

// withDefaults returns ks with its zero fields set to the defaults.
func (ks KillSwitch) withDefaults() KillSwitch {
	if ks.Window == 0 {
		ks.Window = defaultKSWindow
	}
	if ks.MinMessages == 0 {
		ks.MinMessages = defaultKSMinMessages
	}
	if ks.Threshold == 0 {
		ks.Threshold = defaultKSThreshold
	}
	if ks.RestartTimeout == 0 {
		ks.RestartTimeout = defaultKSRestartTimeout
	}
	if ks.MaxRestartTimeout == 0 && ks.RestartTimeout > 0 {
		ks.MaxRestartTimeout = max(defaultKSMaxRestart, ks.RestartTimeout)
		if ks.RestartTimeout <= math.MaxInt64/10 {
			ks.MaxRestartTimeout = max(defaultKSMaxRestart, 10*ks.RestartTimeout)
		}
	}
	if ks.ProbeConcurrency == 0 {
		ks.ProbeConcurrency = defaultKSProbeConcurrency
	}
	if ks.ProbeMessages == 0 {
		ks.ProbeMessages = defaultKSProbeMessages
	}
	return ks
}

// validate checks ks (defaults applied) for a consumer of concurrency n.
func (ks KillSwitch) validate(n int) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: kill switch: "+format, append([]any{broker.ErrInvalidConfig}, a...)...)
	}
	switch {
	case ks.Window < minKSWindow:
		return bad("window %v, want at least %v", ks.Window, minKSWindow)
	case ks.MinMessages < 1 || ks.MinMessages > maxKSMinMessages:
		return bad("min messages %d, want 1..%d", ks.MinMessages, maxKSMinMessages)
	case math.IsNaN(ks.Threshold) || ks.Threshold <= 0 || ks.Threshold > 1:
		return bad("threshold %v, want a ratio in (0, 1]", ks.Threshold)
	case ks.RestartTimeout < 0:
		return bad("restart timeout %v, want > 0", ks.RestartTimeout)
	case ks.MaxRestartTimeout < ks.RestartTimeout:
		return bad("max restart timeout %v, want at least the restart timeout %v", ks.MaxRestartTimeout, ks.RestartTimeout)
	case ks.ProbeConcurrency < 1 || ks.ProbeConcurrency > n:
		return bad("probe concurrency %d, want 1..%d (the consumer's concurrency)", ks.ProbeConcurrency, n)
	case ks.ProbeMessages < 1:
		return bad("probe messages %d, want at least 1", ks.ProbeMessages)
	}
	return nil
}

// WithKillSwitch protects a failing dependency: when the ratio of handler
// failures that count (KillSwitch.Counts) over a sliding window crosses
// KillSwitch.Threshold, after at least KillSwitch.MinMessages outcomes,
// the consumer trips: it stops its intake as Pause does (the source is
// paused too, so that a RabbitMQ prefetch goes back to the queue), its
// state is StateTripped with the reason (and when it probes next) in
// RunnerHealth.Reason and Consumer.KillSwitch, and it emits EventTripped
// (Event.Delay: the wait before the probe). The handlers in flight
// finish; their failures that count, and the one that tripped it, are
// given back (Release: no attempt spent) instead of being requeued or
// dead-lettered, so that the outage spends no message's delivery budget.
//
// After KillSwitch.RestartTimeout the consumer probes (EventProbing): its
// intake reopens with KillSwitch.ProbeConcurrency handlers at once.
// KillSwitch.ProbeMessages successes close it (EventRecovered) and the
// full concurrency returns. A failure that counts trips it again, and the
// failed probe message is settled as any failure is: requeued, or
// dead-lettered once it has had WithMaxDeliveries deliveries. Only the
// messages received before the trip are given back unspent. A message
// that fails for a reason of its own, not the outage's (counted by the
// default KillSwitch.Counts), thus cannot hold the switch open for ever:
// each probe it fails spends one of its attempts, and once dead-lettered
// it no longer stands in the probes' way. Each re-trip doubles the restart
// timeout, up to KillSwitch.MaxRestartTimeout; closing the switch resets
// it.
//
// The price is that a long outage spends attempts too: each failed probe
// spends one attempt of each of its messages (up to ProbeConcurrency). A
// message that enters the probes at Attempt a is dead-lettered by the
// (MaxDeliveries - a + 1)th probe it fails. Where a requeued message is
// handed out again first (memory; Kafka, before the rest of its
// partition) the same message takes every probe: with the defaults
// (RestartTimeout 30s doubling to 5 min, ProbeConcurrency 1,
// WithMaxDeliveries 5) the probes come 30s, 1.5, 3.5, 7.5 and 12.5 min
// after the trip (plus the probes' own handler time), then every 5 min,
// so an outage longer than 12.5 min dead-letters the message at the head
// if it entered the probes at Attempt 1, and one more every 25 min after
// that; one that failed twice before the trip (Attempt 3) is
// dead-lettered by the third probe, after 3.5 min. Where a requeue goes to
// the back of the queue (RabbitMQ: a classic queue's Requeue republishes,
// a quorum queue returns it to the back) each probe takes another message
// and the dead letters come far later. An outage shorter than the first
// RestartTimeout spends nothing beyond the failures before the trip.
//
// On a RabbitMQ quorum queue the broker counts a give-back's return in
// x-delivery-count; the source remembers, per given-back message, how many
// of the broker's redeliveries were not attempts, until the message is
// settled for good, so its Attempt stays right on every later delivery
// (see broker/rabbitmq, the memory of given-back messages: an entry pushed
// out of that bounded memory counts its give-backs as attempts again, too
// early, never fewer).
//
// The switch trips by one of two rules, both on the outcomes within the
// window only (successes and failures that count; errors that do not count
// are no outcome):
//
//   - the window holds at least MinMessages outcomes and their failure
//     ratio is at least Threshold;
//   - a recent run of outcomes, begun within the window, fails at a ratio
//     well above Threshold: above (1+Threshold)/2 by a margin that shrinks
//     as the run grows, that is MinMessages failures in a row, or with the
//     defaults 25 among 26, 40 among 45, 70 among 85.
//
// The second rule makes a sudden outage trip the switch after about
// MinMessages failures, however many successes the window held before it
// (a success interleaved with the failures delays the trip by
// (1+Threshold)/(1-Threshold) failures, 3 with the defaults; it does not
// start it over). A steady failure rate below Threshold trips neither,
// except by chance over a small sample (see KillSwitch.MinMessages).
//
// Pause and Resume stay the operator's: the intake is open only when the
// consumer is neither paused nor tripped, so Resume while tripped clears
// the pause and leaves the intake stopped until the probe. The events
// report each flag on its own: EventPaused and EventResumed the pause
// (EventResumed of a Resume while tripped says the pause was cleared; the
// intake reopens with the EventProbing to come), EventTripped, EventProbing
// and EventRecovered the switch (EventProbing while paused says the switch
// probes; the intake reopens, with the probe concurrency, at Resume).
// State and Stats.Limit say whether the intake is open. A Supervisor
// does not restart a tripped consumer (it has not failed) and reports it
// not ready. Shutdown while tripped or probing drains as usual.
//
// On the message path the switch costs a few atomic operations and no
// allocation (BenchmarkKillSwitch). New returns an error wrapping
// broker.ErrInvalidConfig for an invalid configuration.
func WithKillSwitch(ks KillSwitch) Option {
	return func(o *options) { o.killSwitch = &ks }
}

// KillSwitchStatus is the state of a consumer's kill switch
// (Consumer.KillSwitch).
type KillSwitchStatus struct {
	// State is "closed" (messages flow), "open" (tripped: intake stopped)
	// or "probing"; "" when the consumer has no kill switch.
	State string `json:"state"`
	// Reason says why the switch last tripped: the failure ratio, the
	// number of messages and the span it was taken over, and the text of
	// the last error. It is kept after the switch closes again; empty
	// until the first trip.
	Reason string `json:"reason,omitempty"`
	// Since is when the switch entered State.
	Since time.Time `json:"since,omitzero"`
	// NextProbe is when the switch, open, probes next: Since plus the
	// restart timeout of this trip (doubled by each failed probe, see
	// KillSwitch.MaxRestartTimeout). Zero in the other states, and for the
	// moment between a trip and its EventTripped hooks' return. Zero too
	// when no probe is to come: after Shutdown or Close (State stays what
	// it was when the consumer stopped, "open" for a tripped one: the
	// switch never closed, but it will never probe either), and while no
	// Run runs (a Run that returned an error leaves the probe owed, armed
	// again, for what is left of its wait, by the next Run).
	NextProbe time.Time `json:"next_probe,omitzero"`
	// Trips counts the trips so far, re-trips while probing included.
	Trips int64 `json:"trips"`
}

// The states of a killSwitch.
const (
	ksClosed int32 = iota
	ksOpen
	ksProbing
)

var ksStateNames = [...]string{ksClosed: "closed", ksOpen: "open", ksProbing: "probing"}

// ksBuckets is the number of buckets of the sliding window.
const ksBuckets = 10

// ksBucket counts the outcomes of Window/ksBuckets. The counters are shared
// by the workers (an atomic add each, on the bucket's own cache line).
type ksBucket struct {
	ok, fail atomic.Int64
	_        [64 - 16]byte
}

// killSwitch is a consumer's kill switch (WithKillSwitch).
//
// The message path (ksOutcome) of a success only reads state and score
// and adds to a bucket: no lock, no allocation. The bucket clock (runClock, one goroutine per Run)
// advances epoch every Window/ksBuckets and zeroes the bucket it enters;
// an add racing with that lands in the old or the new bucket, either way
// within a bucket of the truth. Transitions are CASes on state, so that
// exactly one worker trips (or closes) the switch; what follows a
// transition (intake, source, gate, events, the restart timer) is done by
// the winner, outside the worker path's atomics.
type killSwitch struct {
	cfg    KillSwitch
	bucket time.Duration

	state atomic.Int32
	epoch atomic.Int64 // index of the current bucket, modulo ksBuckets
	// score is a CUSUM of the recent outcomes, in millionths, against a
	// reference failure ratio ref = (1+Threshold)/2, halfway between
	// Threshold and 1: a counted failure adds up (1-ref), a success
	// takes away down (ref), and it never goes below 0. It reaches trip
	// (MinMessages × up) when a recent run of outcomes fails at a ratio
	// above ref by a margin that shrinks as the run grows: MinMessages
	// failures in a row, or (Threshold 0.5, MinMessages 20) 25 among 26,
	// 40 among 45, 70 among 85. A steady ratio below Threshold, well below
	// ref, drifts it back to 0: its random runs reach trip too rarely to
	// matter (at 45 % and MinMessages 20, about one outcome in 10^5 starts
	// a run that has a chance in 10^5 of getting there).
	score          atomic.Int64
	up, down, trip int64
	// runStart is the epoch when the score last left 0: a run that began
	// a window (ksBuckets buckets) ago or more is over, and the next
	// failure starts a new one, so that only outcomes within the window
	// count.
	runStart atomic.Int64
	// runFail and runOK count the outcomes since the score last left 0:
	// the recent run a score trip reports. A success touches them only
	// while the score is above 0, so a healthy consumer never does.
	runFail, runOK atomic.Int64
	probeOK        atomic.Int64 // successes of probe deliveries since probing began
	buckets        [ksBuckets]ksBucket

	// tmu serialises the transitions with their events: it is held from
	// the CAS on state (or the Store of ksProbe) through the emit of the
	// transition's event, so that the events come in the order of the
	// transitions (review R3 MEDIUM-2: an EventTripped of a trip right
	// after a close used to come before the close's EventRecovered). Only
	// transitions take it; the message path of an outcome that changes
	// nothing does not. Lock order: tmu, then Consumer.pmu, Consumer.mu,
	// mu; none of these is held while tmu is taken, and tmu's holder emits
	// holding none of them, so that a hook may call Pause or Resume.
	tmu sync.Mutex

	mu        sync.Mutex // guards the fields below
	reason    string
	since     time.Time
	trips     int64
	restart   time.Duration // the restart timeout of the last trip; RestartTimeout once closed
	nextProbe time.Time     // when the armed timer probes; zero when none is armed
	timer     *time.Timer   // the restart timeout, while open
	timerDone chan struct{} // closed when timer's function returned
	stopped   bool          // the consumer stopped for good: schedule nothing
	// parked: no Run is running (Run returned without the consumer
	// stopping for good, as when its source failed): a probe now would
	// resume the source with nobody to receive. The probe is owed at owed
	// (zero: none) and armed at the next Run (park, unpark).
	parked bool
	owed   time.Time
}

func newKillSwitch(cfg KillSwitch) *killSwitch {
	const unit = 1_000_000
	ref := (1 + cfg.Threshold) / 2
	// With Threshold 1 a failure would add nothing: a step of 1 keeps
	// MinMessages failures in a row tripping it, and any success clears it.
	up := max(int64(math.Round((1-ref)*unit)), 1)
	return &killSwitch{
		cfg: cfg, bucket: cfg.Window / ksBuckets, since: time.Now(), restart: cfg.RestartTimeout,
		// MinMessages ≤ maxKSMinMessages: no overflow.
		up: up, down: int64(math.Round(ref * unit)), trip: int64(cfg.MinMessages) * up,
	}
}

// ease takes a success off the score, down to 0. A healthy consumer's
// score is 0: one atomic load.
func (k *killSwitch) ease() {
	for {
		s := k.score.Load()
		if s == 0 {
			return
		}
		if next := max(s-k.down, 0); k.score.CompareAndSwap(s, next) {
			if next == 0 {
				k.runFail.Store(0)
				k.runOK.Store(0)
			} else {
				k.runOK.Add(1)
			}
			return
		}
	}
}

// recentWhy describes a trip by the score: the recent run of outcomes.
func (k *killSwitch) recentWhy() string {
	fail, ok := k.runFail.Load(), k.runOK.Load()
	total := max(fail+ok, 1)
	return fmt.Sprintf("failure ratio %.2f over the last %d messages", float64(fail)/float64(total), total)
}

// counts reports whether err is a failure the switch counts.
func (k *killSwitch) counts(err error) bool {
	if !isFailure(err) {
		return false
	}
	if k.cfg.Counts == nil {
		return true
	}
	return guarded(true, func() bool { return k.cfg.Counts(err) })
}

// clear empties the window.
func (k *killSwitch) clear() {
	for i := range k.buckets {
		k.buckets[i].ok.Store(0)
		k.buckets[i].fail.Store(0)
	}
	k.score.Store(0)
	k.runFail.Store(0)
	k.runOK.Store(0)
}

func (k *killSwitch) current() *ksBucket {
	return &k.buckets[uint64(k.epoch.Load())%ksBuckets]
}

// check reports whether the window, as it is now, trips the switch, and
// why: it holds at least MinMessages outcomes and their failure ratio is at
// least Threshold. It runs on counted failures only.
//
// Only the whole window counts: a part of it (its newest tenths, as
// before) is a smaller sample, whose ratio a steady rate below Threshold
// reaches by chance; a sudden outage after a busy window is the score's
// (see killSwitch.score).
func (k *killSwitch) check() (why string, trip bool) {
	var ok, fail int64
	for i := range k.buckets {
		ok += k.buckets[i].ok.Load()
		fail += k.buckets[i].fail.Load()
	}
	total := ok + fail
	if total < int64(k.cfg.MinMessages) || float64(fail) < k.cfg.Threshold*float64(total) {
		return "", false
	}
	return fmt.Sprintf("failure ratio %.2f over %d messages in the last %v", float64(fail)/float64(total), total, k.cfg.Window), true
}

// runClock advances the window's buckets until stop is closed; Run runs it
// while it runs.
func (k *killSwitch) runClock(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(k.bucket)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			k.tick()
		case <-stop:
			return
		}
	}
}

// tick moves the window on by a bucket: the bucket it enters, the oldest,
// is emptied.
func (k *killSwitch) tick() {
	e := k.epoch.Load() + 1
	b := &k.buckets[uint64(e)%ksBuckets]
	b.ok.Store(0)
	b.fail.Store(0)
	k.epoch.Store(e)
}

// addFailure adds a counted failure to the score, and reports whether the
// score trips the switch. A run that began a window ago or more is over:
// the failure starts a new one.
func (k *killSwitch) addFailure() bool {
	e := k.epoch.Load()
	if k.score.Load() > 0 && e-k.runStart.Load() >= ksBuckets {
		k.score.Store(0)
		k.runFail.Store(0)
		k.runOK.Store(0)
	}
	if k.score.Load() == 0 {
		k.runStart.Store(e)
	}
	k.runFail.Add(1)
	return k.score.Add(k.up) >= k.trip
}

// schedule arms the restart timeout: f runs after wait, unless the
// consumer stopped for good first.
func (k *killSwitch) schedule(wait time.Duration, f func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	if k.parked {
		k.owed = time.Now().Add(wait)
		k.nextProbe = time.Time{}
		return
	}
	k.arm(wait, f)
}

// arm starts the restart timer. The caller holds k.mu.
func (k *killSwitch) arm(wait time.Duration, f func()) {
	done := make(chan struct{})
	k.timerDone = done
	k.nextProbe = time.Now().Add(wait)
	k.timer = time.AfterFunc(wait, func() {
		defer close(done)
		f()
	})
}

// nextRestart returns the restart timeout for a trip, and keeps it: the
// one of the last trip doubled (up to MaxRestartTimeout) for a re-trip of
// a probing switch, RestartTimeout otherwise. The caller holds k.mu.
func (k *killSwitch) nextRestart(retrip bool) time.Duration {
	switch {
	case !retrip:
		k.restart = k.cfg.RestartTimeout
	case k.restart > k.cfg.MaxRestartTimeout/2:
		k.restart = k.cfg.MaxRestartTimeout
	default:
		k.restart *= 2
	}
	return k.restart
}

// stop cancels the restart timeout, waiting for its function if it is
// running, and schedules nothing more: the consumer stopped for good.
//
// Once stopped, no probe comes: NextProbe is zero (and the health reason
// names no probe), whatever the state the switch stopped in.
func (k *killSwitch) stop() {
	k.mu.Lock()
	k.stopped = true
	t, done := k.timer, k.timerDone
	k.timer = nil
	k.nextProbe, k.owed = time.Time{}, time.Time{}
	k.mu.Unlock()
	if t != nil && !t.Stop() {
		<-done
	}
}

// park disarms the restart timeout while no Run runs (Run returned with
// the consumer not stopped for good), waiting for a probe in progress:
// the probe is owed, and unpark arms it at the next Run, for what is left
// of its wait.
func (k *killSwitch) park() {
	k.mu.Lock()
	k.parked = true
	t, done := k.timer, k.timerDone
	k.timer = nil
	if t != nil && t.Stop() {
		k.owed = k.nextProbe
		k.nextProbe = time.Time{}
		t = nil
	}
	k.mu.Unlock()
	if t != nil {
		// Running: let it finish (a re-trip it makes is owed, parked).
		<-done
	}
}

// unpark arms the probe that park (or a trip while parked) left owed,
// for what is left of its wait: a Run starts.
func (k *killSwitch) unpark(f func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.parked = false
	owed := k.owed
	k.owed = time.Time{}
	if owed.IsZero() || k.stopped || k.state.Load() != ksOpen {
		return
	}
	k.arm(max(time.Until(owed), 0), f)
}

// entered records that the switch just entered its state, probing or
// closed: no probe is pending. Closing resets the restart timeout.
func (k *killSwitch) entered() {
	k.mu.Lock()
	k.since = time.Now()
	k.nextProbe = time.Time{}
	if k.state.Load() == ksClosed {
		k.restart = k.cfg.RestartTimeout
	}
	k.mu.Unlock()
}

func (k *killSwitch) status() KillSwitchStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := KillSwitchStatus{State: ksStateNames[k.state.Load()], Reason: k.reason, Since: k.since, Trips: k.trips}
	if st.State == "open" {
		st.NextProbe = k.nextProbe
	}
	return st
}

// KillSwitch returns the state of the consumer's kill switch
// (WithKillSwitch); a zero KillSwitchStatus when it has none. It is cheap
// and safe to call from any goroutine.
func (c *Consumer) KillSwitch() KillSwitchStatus {
	if c.ks == nil {
		return KillSwitchStatus{}
	}
	return c.ks.status()
}

// healthReason is the RunnerHealth.Reason of the consumer: why its kill
// switch is open or probing; "" when it is closed or absent.
func (c *Consumer) healthReason() string {
	if c.ks == nil {
		return ""
	}
	switch st := c.ks.status(); st.State {
	case "open":
		if st.NextProbe.IsZero() {
			return "kill switch tripped: " + st.Reason
		}
		return "kill switch tripped: " + st.Reason + "; next probe " + probeWhen(st.NextProbe, time.Now())
	case "probing":
		return "kill switch probing after: " + st.Reason
	}
	return ""
}

// probeWhen says when a probe at t comes, seen at now: "at <time> (in
// <wait>)", "due now" once t passed.
func probeWhen(t, now time.Time) string {
	wait := t.Sub(now)
	if wait <= 0 {
		return "due now"
	}
	if wait >= time.Second {
		wait = wait.Round(time.Second)
	} else {
		wait = wait.Round(time.Millisecond)
	}
	return fmt.Sprintf("at %s (in %v)", t.UTC().Format(time.RFC3339), wait)
}

// ksOutcome tells the kill switch a handler's result for a delivery
// (probe: received while the switch probed, as the worker saw it before
// the handler ran; a probe intake outlives the probing, and its
// deliveries after the switch closed are ordinary ones), and reports
// whether the delivery is to be given back unspent: a counted failure of a
// delivery received before the trip (in flight at the trip, or the one
// that tripped it). A probe's counted failure trips the switch again but is
// settled as any failure (requeued, or dead-lettered by its budget), so
// that a message failing for its own reasons cannot be the next probe
// again, unspent, for ever. It runs on the worker, after the handler, on
// every message: the success path is a few atomic operations and
// allocates nothing.
func (c *Consumer) ksOutcome(probe bool, err error) (giveBack bool) {
	k := c.ks
	if err == nil {
		switch k.state.Load() {
		case ksClosed:
			k.current().ok.Add(1)
			k.ease()
		case ksProbing:
			// Only deliveries received while probing prove anything:
			// a straggler from before the trip does not.
			if probe && k.probeOK.Add(1) >= int64(k.cfg.ProbeMessages) {
				c.ksRecover()
			}
		}
		return false
	}
	if !k.counts(err) {
		return false
	}
	for {
		switch k.state.Load() {
		case ksOpen:
			return !probe
		case ksProbing:
			k.tmu.Lock()
			if k.state.CompareAndSwap(ksProbing, ksOpen) {
				why := "a probe failed"
				if !probe {
					why = "a message received before the trip failed while probing"
				}
				c.ksTripped(err, why, true)
				k.tmu.Unlock()
				return !probe
			}
			k.tmu.Unlock()
			continue // closed or tripped meanwhile: look again
		}
		k.current().fail.Add(1)
		why, trip := k.check()
		if k.addFailure() && !trip {
			why, trip = k.recentWhy(), true
		}
		if trip {
			k.tmu.Lock()
			if k.state.CompareAndSwap(ksClosed, ksOpen) {
				c.ksTripped(err, why, false)
				k.tmu.Unlock()
				return !probe
			}
			k.tmu.Unlock()
		}
		// Below the threshold: an ordinary failure, unless another worker
		// tripped the switch meanwhile.
		return !probe && k.state.Load() == ksOpen
	}
}

// ksTripped does what follows a trip, on the goroutine whose CAS opened
// the switch (retrip: from probing): record why, stop the intake and pause
// the source (as Pause does), report it, and arm the restart timeout, in
// that order so that EventTripped comes before the EventProbing the
// timeout leads to. The caller holds k.tmu, taken before its CAS.
func (c *Consumer) ksTripped(err error, why string, retrip bool) {
	k := c.ks
	reason := why
	if err != nil {
		reason += ": " + truncateReason(errorText(err))
	}
	k.mu.Lock()
	k.reason, k.since, k.nextProbe = reason, time.Now(), time.Time{}
	k.trips++
	wait := k.nextRestart(retrip)
	k.mu.Unlock()

	perr := c.stopIntakeForTrip()
	c.logger().Warn("queuekit: kill switch tripped; intake stopped", "reason", reason, "restart_timeout", wait)
	if perr != nil {
		c.logger().Warn("queuekit: kill switch: pause source", "error", perr)
	}
	c.emit(Event{Kind: EventTripped, Err: errors.New(reason), Delay: wait})
	k.schedule(wait, c.ksProbe)
}

// stopIntakeForTrip stops the intake and pauses the source for a trip,
// serialised with Pause and Resume.
func (c *Consumer) stopIntakeForTrip() error {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.mu.Lock()
	c.tripped = true
	if r := c.cur; r != nil && !c.paused {
		r.setIntake(pausedIntake())
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.o.settleTimeout)
	defer cancel()
	return c.pauseSource(ctx)
}

// ksProbe ends the restart timeout: the switch probes. It runs on the
// timer's goroutine.
func (c *Consumer) ksProbe() {
	k := c.ks
	k.tmu.Lock()
	c.pmu.Lock()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed || k.state.Load() != ksOpen {
		c.pmu.Unlock()
		k.tmu.Unlock()
		return
	}
	k.clear()
	k.probeOK.Store(0)
	c.gate.setCap(k.cfg.ProbeConcurrency)
	k.state.Store(ksProbing)
	k.entered()
	c.mu.Lock()
	c.tripped = false
	c.mu.Unlock()
	c.pmu.Unlock()

	c.logger().Info("queuekit: kill switch probing", "probe_concurrency", k.cfg.ProbeConcurrency, "probe_messages", k.cfg.ProbeMessages)
	// Before the intake opens: no probe delivery, and so no EventRecovered
	// or re-trip, can come before EventProbing.
	c.emit(Event{Kind: EventProbing})
	k.tmu.Unlock()

	c.pmu.Lock()
	ctx, cancel := context.WithTimeout(context.Background(), c.o.settleTimeout)
	err := c.openIntakeLocked(ctx, false)
	cancel()
	c.pmu.Unlock()
	if err != nil {
		k.tmu.Lock()
		if k.state.CompareAndSwap(ksProbing, ksOpen) {
			// The source would not resume: stay tripped, try again later.
			c.ksTripped(err, "resuming the source to probe failed", true)
		}
		k.tmu.Unlock()
	}
}

// ksRecover closes the switch after the probes succeeded; the worker whose
// success was the last probe calls it.
func (c *Consumer) ksRecover() {
	k := c.ks
	k.tmu.Lock()
	defer k.tmu.Unlock()
	if !k.state.CompareAndSwap(ksProbing, ksClosed) {
		return
	}
	k.clear()
	k.entered()
	c.gate.setCap(0)
	c.logger().Info("queuekit: kill switch closed; the probes succeeded", "probe_messages", k.cfg.ProbeMessages)
	c.emit(Event{Kind: EventRecovered})
}

// ksRunStarts arms a probe owed since the last Run returned (park): Run
// calls it once the run is current.
func (c *Consumer) ksRunStarts() {
	if c.ks != nil {
		c.ks.unpark(c.ksProbe)
	}
}

// ksRunEnds disarms the restart timeout as Run returns (unpark re-arms it
// at the next Run), waiting for a probe in progress, so that no probe
// resumes the source with no Run to receive.
func (c *Consumer) ksRunEnds() {
	if c.ks != nil {
		c.ks.park()
	}
}

// stopKillSwitch disarms the kill switch's restart timeout for good (the
// consumer stopped), waiting for a probe in progress, so that nothing of
// it outlives Run, Shutdown or Close.
func (c *Consumer) stopKillSwitch() {
	if c.ks != nil {
		c.ks.stop()
	}
}
