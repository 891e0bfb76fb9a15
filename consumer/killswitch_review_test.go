package consumer_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// Regression tests for the hostile review R1 of the kill switch (issue 14).

// A MinMessages so large that MinMessages × a failure's step overflowed
// made the first failure trip the switch; it is refused now.
func TestKillSwitchHugeMinMessagesIsInvalid(t *testing.T) {
	b := memory.NewBroker()
	for _, n := range []int{math.MaxInt64 / 1000, math.MaxInt, 1_000_000_001} {
		_, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(noop),
			consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: n}))
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("New(MinMessages %d) = %v; want ErrInvalidConfig", n, err)
		}
	}
	c, err := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(noop),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 1_000_000_000}))
	if err != nil {
		t.Fatalf("New(MinMessages 1e9) = %v; want it accepted", err)
	}
	c.Close()
}

// A tripped consumer's health says since when it is tripped (not since
// Run started), its Stats show a limit of 0 (nothing is taken), and the
// reason names the window the ratio was taken over, not a part of it.
func TestKillSwitchTrippedSinceLimitAndReason(t *testing.T) {
	b := memory.NewBroker()
	dep := &fakeDB{}
	dep.down.Store(true)
	var log ksEvents
	c, err := consumer.New(newSource(t, b, "q", 2), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return dep.call()
	}), consumer.WithConcurrency(2), consumer.WithLogger(quiet), consumer.WithEventHook(log.hook), consumer.WithMaxDeliveries(100),
		consumer.WithKillSwitch(consumer.KillSwitch{Window: time.Minute, MinMessages: 3, RestartTimeout: time.Hour}))
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
	waitFor(t, "running", func() bool { return c.State() == consumer.StateRunning })
	if got := c.Stats().Limit; got != 2 {
		t.Errorf("Stats().Limit while closed = %d; want 2", got)
	}
	time.Sleep(20 * time.Millisecond) // the trip comes measurably after Run started
	publishN(t, b, "q", 3)
	waitFor(t, "the trip", func() bool { return log.count(consumer.EventTripped) == 1 })
	st := c.KillSwitch()
	rh := sup.Health().Runners[0]
	if rh.State != consumer.StateTripped || !rh.Since.Equal(st.Since) {
		t.Errorf("Health runner = %+v; want tripped since the trip, %v", rh, st.Since)
	}
	if got := c.Stats().Limit; got != 0 {
		t.Errorf("Stats().Limit while tripped = %d; want 0", got)
	}
	if !strings.Contains(st.Reason, "over 3 messages in the last 1m0s") {
		t.Errorf("reason = %q; want the ratio over 3 messages in the last 1m0s (the window)", st.Reason)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run: %v", err)
	}
}
