package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// errPoison is the error of a message that fails for a reason of its own
// (its content triggers a bug), not because of the dependency: not
// permanent, so the default KillSwitch.Counts counts it.
var errPoison = errors.New("render invoice: template: nil pointer evaluating .Customer.Name")

// poisonRun is what a run with a poison message saw.
type poisonRun struct {
	b   *memory.Broker
	c   *consumer.Consumer
	log *ksEvents
	rec *settlements
}

// runPoison runs total messages (m0 first) through a consumer whose
// handler fails m0 always, with errPoison, and calls a database for every
// other message; the database is down until the switch first trips. It
// returns once every message was acked or dead-lettered and the switch is
// closed.
func runPoison(t *testing.T, total, workers int, ks consumer.KillSwitch) poisonRun {
	t.Helper()
	b := memory.NewBroker()
	publishN(t, b, "q", total)
	dep := &fakeDB{}
	dep.down.Store(true)
	log := &ksEvents{}
	hook := func(e consumer.Event) {
		log.hook(e)
		if e.Kind == consumer.EventTripped {
			dep.down.Store(false) // the outage ends; the poison message stays poison
		}
	}
	rec := &settlements{}
	c, err := consumer.New(newSource(t, b, "q", workers), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if m.ID == "m0" {
			return errPoison
		}
		if err := dep.call(); err != nil {
			return fmt.Errorf("insert order %s: %w", m.ID, err)
		}
		return nil
	}), consumer.WithConcurrency(workers), consumer.WithMaxDeliveries(5), consumer.WithLogger(quiet),
		consumer.WithEventHook(hook), consumer.WithObserver(rec.observe), consumer.WithKillSwitch(ks))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "every message acked or dead-lettered, and the switch closed", func() bool {
		st := b.Stats("q")
		return st.Acked+st.DeadLettered == total && c.KillSwitch().State == "closed"
	})
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	return poisonRun{b: b, c: c, log: log, rec: rec}
}

// checkPoisonOutcome checks what every poison run must end with: m0, and
// only m0, dead-lettered with its whole budget spent (Attempt 5 of
// WithMaxDeliveries(5)), every other message acked, the switch closed.
func checkPoisonOutcome(t *testing.T, r poisonRun, total int) {
	t.Helper()
	dl := r.b.DeadLetters("q")
	if len(dl) != 1 || dl[0].ID != "m0" {
		ids := make([]string, len(dl))
		for i := range dl {
			ids[i] = dl[i].ID
		}
		t.Fatalf("dead letters %v; want m0 only", ids)
	}
	if dl[0].Attempt != 5 || dl[0].Header[broker.HeaderAttempts] != "5" {
		t.Errorf("m0 dead-lettered at Attempt %d (header %q); want 5: its budget spent by the failed probes",
			dl[0].Attempt, dl[0].Header[broker.HeaderAttempts])
	}
	if got := r.b.Stats("q").Acked; got != total-1 {
		t.Errorf("%d acked; want %d (all but m0)", got, total-1)
	}
	if st := r.c.KillSwitch(); st.State != "closed" {
		t.Errorf("KillSwitch() = %+v; want closed", st)
	}
	// Each delivery of m0 that a handler failed (not the give-backs)
	// spent an attempt: Attempts 1..5, each once.
	seen := map[int]int{}
	for _, s := range r.rec.all() {
		if s.id == "m0" && s.s != consumer.SettledGiveBack {
			seen[s.attempt]++
		}
	}
	for a := 1; a <= 5; a++ {
		if seen[a] != 1 {
			t.Errorf("m0 settled at Attempt %d %d times; want once each for 1..5 (settlements by attempt: %v)", a, seen[a], seen)
		}
	}
}

// A poison message (it fails every time, for a reason of its own, with an
// error the default Counts counts) at the head of the queue when the switch
// trips: the switch recovers once the failed probes have spent the poison
// message's budget and dead-lettered it, and every other message is
// handled. Before the fix the failed probes gave the poison message back
// unspent, at the head: it was the next probe again, for ever.
//
// One worker, so that the sequence is exact: m0 trips the switch at its
// first failure (MinMessages 1) and is given back at Attempt 1 (it was in
// flight at the trip); the probes then take m0 at Attempts 1 to 5, each
// failing and re-tripping the switch, the fifth dead-lettering it; the
// next probes succeed and close it.
func TestKillSwitchPoisonMessageAtTheHeadIsDeadLetteredAndTheSwitchRecovers(t *testing.T) {
	const total = 20
	r := runPoison(t, total, 1, consumer.KillSwitch{MinMessages: 1, RestartTimeout: 5 * time.Millisecond,

		MaxRestartTimeout: 40 * time.Millisecond, ProbeMessages: 2})
	checkPoisonOutcome(t, r, total)

	T, P, R := consumer.EventTripped, consumer.EventProbing, consumer.EventRecovered
	want := []consumer.EventKind{T, P, T, P, T, P, T, P, T, P, T, P, R}
	if got := r.log.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events = %v; want %v (the trip, 5 failed probes of m0, the probe that recovers)", got, want)
	}
	if n := r.rec.count(consumer.SettledGiveBack); n != 1 {
		t.Errorf("%d give-backs; want 1 (m0, in flight at the first trip)", n)
	}
	if st := r.c.KillSwitch(); st.Trips != 6 {
		t.Errorf("KillSwitch().Trips = %d; want 6", st.Trips)
	}
}

// The same with several workers and the messages in flight at the trip:
// whatever order the probes take them in, m0 alone is dead-lettered, by its
// budget, and the switch recovers.
func TestKillSwitchPoisonMessageWithSeveralWorkers(t *testing.T) {
	const total = 40
	r := runPoison(t, total, 4, consumer.KillSwitch{MinMessages: 4, RestartTimeout: 2 * time.Millisecond,

		MaxRestartTimeout: 10 * time.Millisecond, ProbeMessages: 3})
	checkPoisonOutcome(t, r, total)
	if n := r.log.count(consumer.EventRecovered); n < 1 {
		t.Errorf("%d recoveries; want at least 1", n)
	}
}

// A failed probe spends one attempt of each probe message, no more: with
// several probes at once, the first failure trips the switch again, and
// what the other probe workers take before the intake has stopped is given
// back unhandled. Before, they handled it: the dependency still down, each
// failed, was requeued at the head (a probe's failure spends an attempt)
// and taken again, in a loop until the intake stopped, so that a whole
// queue could be dead-lettered by one failed probe.
func TestKillSwitchFailedProbeSpendsOneAttemptPerProbeMessage(t *testing.T) {
	const workers, rounds = 4, 30
	b := memory.NewBroker()
	publishN(t, b, "q", 20)
	var rec settlements
	c, err := consumer.New(newSource(t, b, "q", workers), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return errDB // the dependency stays down
	}), consumer.WithConcurrency(workers), consumer.WithMaxDeliveries(1000), consumer.WithLogger(quiet), consumer.WithObserver(rec.observe),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 1, RestartTimeout: time.Millisecond,
			MaxRestartTimeout: time.Millisecond, ProbeConcurrency: workers}))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, fmt.Sprintf("%d failed probes", rounds), func() bool { return c.KillSwitch().Trips > rounds })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	failedProbes := int(c.KillSwitch().Trips - 1) // the first trip is the outage's
	spent := rec.count(consumer.SettledRequeue) + rec.count(consumer.SettledDeadLetter)
	t.Logf("%d failed probes of up to %d messages: %d attempts spent, %d given back", failedProbes, workers, spent, rec.count(consumer.SettledGiveBack))
	if spent > failedProbes*workers {
		t.Errorf("%d attempts spent by %d failed probes; want at most %d (one per probe message)", spent, failedProbes, failedProbes*workers)
	}
	if n := len(b.DeadLetters("q")); n != 0 {
		t.Errorf("%d dead letters; want 0", n)
	}
}
