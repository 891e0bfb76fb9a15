package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// settlements records what the runtime did with each message, for tests.
type settlements struct {
	mu  sync.Mutex
	log []settled
}

type settled struct {
	id      string
	attempt int
	s       consumer.Settlement
}

func (r *settlements) observe(_ context.Context, m *broker.Message, s consumer.Settlement, _ error) {
	r.mu.Lock()
	r.log = append(r.log, settled{m.ID, m.Attempt, s})
	r.mu.Unlock()
}

func (r *settlements) all() []settled {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]settled(nil), r.log...)
}

func (r *settlements) count(s consumer.Settlement) int {
	n := 0
	for _, x := range r.all() {
		if x.s == s {
			n++
		}
	}
	return n
}

// runConsumer runs c in a goroutine and returns a function that shuts it
// down and returns Run's error.
func runConsumer(t *testing.T, c *consumer.Consumer) (stop func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if serr := c.Shutdown(ctx); serr != nil {
				t.Errorf("Shutdown: %v", serr)
			}
			err = <-done
			if errors.Is(err, consumer.ErrConsumerClosed) {
				err = nil
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// A handler that waits on IntakeStopped and returns ErrNotHandled when it
// closes has its message given back unspent: after Pause, Resume delivers
// it again with the same Attempt, and it counts as given back, not failed.
func TestErrNotHandledAfterPauseGivesTheMessageBackUnspent(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	var rec settlements
	started := make(chan int, 4)
	var calls int
	var mu sync.Mutex
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		started <- m.Attempt
		if !first {
			return nil
		}
		select {
		case <-consumer.IntakeStopped(ctx):
			return fmt.Errorf("waiting for a token: %w", consumer.ErrNotHandled)
		case <-ctx.Done():
			return ctx.Err()
		}
	}), consumer.WithLogger(quiet), consumer.WithObserver(rec.observe))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	if a := <-started; a != 1 {
		t.Fatalf("first delivery Attempt = %d; want 1", a)
	}
	if err := c.Pause(context.Background()); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	waitFor(t, "the give-back", func() bool { return rec.count(consumer.SettledGiveBack) == 1 })
	if err := c.Resume(context.Background()); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if a := <-started; a != 1 {
		t.Errorf("redelivery Attempt = %d; want 1 (ErrNotHandled after Pause must not spend an attempt)", a)
	}
	waitFor(t, "the ack", func() bool { return rec.count(consumer.SettledAck) == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	st := c.Stats()
	if st.GivenBack != 1 || st.Failed != 0 || st.Requeued != 0 || st.Handled != 1 {
		t.Errorf("Stats = %+v; want GivenBack 1, Failed 0, Requeued 0, Handled 1", st)
	}
	if got := rec.all(); len(got) != 2 || got[0].s != consumer.SettledGiveBack || got[1].s != consumer.SettledAck {
		t.Errorf("settlements = %+v; want give-back then ack", got)
	}
}

// With its intake open, ErrNotHandled is an ordinary failure: it spends an
// attempt, and the message is dead-lettered when its budget is spent, so
// that no message can loop on it.
func TestErrNotHandledWithIntakeOpenIsAnOrdinaryFailure(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	var rec settlements
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return fmt.Errorf("not now: %w", consumer.ErrNotHandled)
	}), consumer.WithLogger(quiet), consumer.WithObserver(rec.observe), consumer.WithMaxDeliveries(3))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, "the dead letter", func() bool { return len(b.DeadLetters("q")) == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []settled{{"m0", 1, consumer.SettledRequeue}, {"m0", 2, consumer.SettledRequeue}, {"m0", 3, consumer.SettledDeadLetter}}
	if got := rec.all(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("settlements = %v; want %v", got, want)
	}
	if st := c.Stats(); st.Failed != 3 || st.GivenBack != 0 {
		t.Errorf("Stats = %+v; want Failed 3, GivenBack 0", st)
	}
}

// Shutdown closes IntakeStopped of the handlers in flight; one that returns
// ErrNotHandled has its message given back, and the next consumer gets it
// with the same Attempt.
func TestErrNotHandledAtShutdownGivesTheMessageBack(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	var rec settlements
	started := make(chan struct{})
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		close(started)
		select {
		case <-consumer.IntakeStopped(ctx):
			return fmt.Errorf("rate limit wait: %w", consumer.ErrNotHandled)
		case <-ctx.Done():
			return ctx.Err()
		}
	}), consumer.WithLogger(quiet), consumer.WithObserver(rec.observe))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	<-started
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := rec.all(); len(got) != 1 || got[0].s != consumer.SettledGiveBack {
		t.Fatalf("settlements = %v; want one give-back", got)
	}
	src := newSource(t, b, "q", 1)
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive after Shutdown: %v", err)
	}
	if a := d.Message().Attempt; a != 1 {
		t.Errorf("Attempt after the give-back = %d; want 1", a)
	}
}

// Outside a handler IntakeStopped is a nil channel; inside one it is open
// while the intake is.
func TestIntakeStoppedOutsideAndInsideAHandler(t *testing.T) {
	if ch := consumer.IntakeStopped(context.Background()); ch != nil {
		t.Errorf("IntakeStopped(Background) = %v; want nil", ch)
	}
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	got := make(chan bool, 1)
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		ch := consumer.IntakeStopped(ctx)
		select {
		case <-ch:
			got <- false
		default:
			got <- ch != nil
		}
		return nil
	}), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	if !<-got {
		t.Errorf("IntakeStopped in a running handler: nil or closed; want an open channel")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// Stats.Limit is WithConcurrency's n when nothing lowers it.
func TestStatsLimitIsTheConcurrency(t *testing.T) {
	b := memory.NewBroker()
	c, err := consumer.New(newSource(t, b, "q", 4), consumer.HandlerFunc(noop), consumer.WithConcurrency(4), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Stats().Limit; got != 4 {
		t.Errorf("Stats().Limit = %d; want 4", got)
	}
	j, _ := json.Marshal(c.Stats())
	if !strings.Contains(string(j), `"limit":4`) {
		t.Errorf("Stats JSON %s lacks \"limit\":4", j)
	}
}

// The kinds and state added for the kill switch have names, after the
// existing ones (whose numbers do not change), and a state reads back.
func TestKillSwitchNames(t *testing.T) {
	for _, c := range []struct {
		got, want string
	}{
		{consumer.EventTripped.String(), "tripped"},
		{consumer.EventProbing.String(), "probing"},
		{consumer.EventRecovered.String(), "recovered"},
		{consumer.StateTripped.String(), "tripped"},
	} {
		if c.got != c.want {
			t.Errorf("String() = %q; want %q", c.got, c.want)
		}
	}
	if consumer.EventTripped != consumer.EventRebalanced+1 || consumer.StateTripped != consumer.StateStalled+1 {
		t.Errorf("EventTripped = %d, StateTripped = %d; want them after EventRebalanced and StateStalled", consumer.EventTripped, consumer.StateTripped)
	}
	var s consumer.State
	if err := s.UnmarshalText([]byte("tripped")); err != nil || s != consumer.StateTripped {
		t.Errorf("UnmarshalText(tripped) = %v, %v; want StateTripped", s, err)
	}
	j, _ := json.Marshal(consumer.RunnerHealth{Name: "a", State: consumer.StateRunning})
	if strings.Contains(string(j), "reason") {
		t.Errorf("RunnerHealth JSON %s has a reason; want it omitted when empty", j)
	}
	j, _ = json.Marshal(consumer.RunnerHealth{Name: "a", State: consumer.StateTripped, Reason: "db down"})
	if !strings.Contains(string(j), `"state":"tripped"`) || !strings.Contains(string(j), `"reason":"db down"`) {
		t.Errorf("RunnerHealth JSON %s; want state tripped and the reason", j)
	}
}
