package consumer_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Stats counts what the consumer did, cumulatively over its Runs, and what
// it is doing now (InFlight), and the Supervisor hands them out by name.
func TestStatsCountOutcomesAcrossRuns(t *testing.T) {
	b := memory.NewBroker()
	release := make(chan struct{})
	started := make(chan struct{}, 8)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		switch string(m.Body) {
		case "ok":
			return nil
		case "bad":
			return retry.Permanent(errors.New("bad order"))
		case "flaky":
			return errors.New("try again")
		case "block":
			started <- struct{}{}
			<-release
			return nil
		}
		return nil
	})
	c, err := consumer.New(newSource(t, b, "q", 4), h, consumer.WithLogger(quiet), consumer.WithConcurrency(4), consumer.WithMaxDeliveries(2))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: quiet}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	if st, err := sup.Stats("orders"); err != nil || st != (consumer.Stats{Limit: 4}) {
		t.Fatalf("Stats before Run = %+v, %v; want zeros", st, err)
	}
	for _, body := range []string{"ok", "ok", "bad", "flaky"} {
		if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	// ok×2 handled; bad failed once, dead-lettered; flaky failed twice
	// (requeued once, then dead-lettered by the budget of 2).
	want := consumer.Stats{Limit: 4, Handled: 2, Failed: 3, Requeued: 1, DeadLettered: 2}
	waitFor(t, "the first four messages settled", func() bool {
		st, _ := sup.Stats("orders")
		return st == want
	})
	if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte("block")}); err != nil {
		t.Fatal(err)
	}
	<-started
	if st := c.Stats(); st.InFlight != 1 {
		t.Errorf("Stats().InFlight with one handler blocked = %d; want 1", st.InFlight)
	}
	close(release)
	want.Handled++
	waitFor(t, "the blocked message handled", func() bool { return c.Stats() == want })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// After the Run: the totals stay.
	if st := c.Stats(); st != want {
		t.Errorf("Stats after Run = %+v; want %+v", st, want)
	}
}

// Supervisor.Stats tells an unknown name and a runner without counters.
func TestSupervisorStatsErrors(t *testing.T) {
	sup := &consumer.Supervisor{Logger: quiet}
	if err := sup.Add("fn", consumer.RunnerFunc(func(ctx context.Context) error { <-ctx.Done(); return nil })); err != nil {
		t.Fatal(err)
	}
	if err := sup.Add("panics", panickyStats{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sup.Stats("nope"); !errors.Is(err, consumer.ErrUnknownRunner) {
		t.Errorf("Stats(nope) = %v; want ErrUnknownRunner", err)
	}
	if _, err := sup.Stats("fn"); !errors.Is(err, consumer.ErrNoStats) {
		t.Errorf("Stats(fn) = %v; want ErrNoStats", err)
	}
	if _, err := sup.Stats("panics"); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Errorf("Stats(panics) = %v; want an error saying it panicked", err)
	}
}

type panickyStats struct{}

func (panickyStats) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (panickyStats) Stats() consumer.Stats         { panic("boom") }
