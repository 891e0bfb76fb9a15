package kafka_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// countFetches counts the Fetch requests the cluster receives.
func (e *env) countFetches(t testing.TB) *atomic.Int64 {
	t.Helper()
	e.needKfake(t)
	var n atomic.Int64
	e.cluster.ControlKey(int16(kmsg.Fetch), func(kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		n.Add(1)
		return nil, nil, false // observed only: the cluster serves it
	})
	return &n
}

// Issue 10, "Kafka Pause" (Kafka protocol, in-process kfake cluster): while
// a consumer is paused, its Source sends no Fetch request (counted in kfake's
// control hook after a short settle), although records arrive meanwhile and
// its fetchers were long-polling the end of the log; it stays a member of its
// group through a pause longer than the session timeout (no
// EventRebalanced, one generation: one EventConnected); and across 100
// Pause/Resume cycles while it consumes, no record is lost or handled twice.
//
// Before issue 10 the Kafka Source had no Pause: a paused consumer's
// fetchers went on polling (and fetching up to MaxInFlight records per
// partition).
func TestPauseStopsFetchingKeepsMembershipAndLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "pause")
	key := func(i int) string { return "k" + itoa(i%37) }
	e.produce(t, topic, 0, 200, key)

	cfg := e.config(topic, "pause")
	cfg.MaxBytes = 512 // many small fetches
	cfg.MaxInFlight = 8
	seen := newLedger()
	var rebalanced, connected atomic.Int64
	m := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, msg *broker.Message) error {
		time.Sleep(time.Millisecond)
		seen.add(msg.ID)
		return nil
	}), consumer.WithConcurrency(4), consumer.WithEventHook(func(ev consumer.Event) {
		switch ev.Kind {
		case consumer.EventRebalanced:
			rebalanced.Add(1)
		case consumer.EventConnected:
			connected.Add(1)
		}
	}))
	waitFor(t, "the first 200 records", 30*time.Second, func() bool { return seen.distinct() == 200 })
	fetches := e.countFetches(t)
	waitFor(t, "the idle fetchers to poll", 10*time.Second, func() bool { return fetches.Load() > 4 })

	ctx := context.Background()
	if err := m.c.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	time.Sleep(cfg.MaxWait + 400*time.Millisecond) // a fetch on its way when Pause was called is answered
	before, handled := fetches.Load(), seen.distinct()
	e.produce(t, topic, 200, 200, key)                    // records arrive while paused
	time.Sleep(cfg.SessionTimeout + 500*time.Millisecond) // longer than the session: heartbeats keep the membership
	t.Logf("Fetch requests: %d before the pause, %d during %v of pause (after the settle)",
		before, fetches.Load()-before, cfg.SessionTimeout+500*time.Millisecond)
	if n := fetches.Load() - before; n != 0 {
		t.Errorf("%d Fetch requests while paused (after a %v settle); want 0", n, cfg.MaxWait+400*time.Millisecond)
	}
	if n := seen.distinct() - handled; n != 0 {
		t.Errorf("%d records handled while paused; want 0", n)
	}
	if err := m.c.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	waitFor(t, "the 200 records produced while paused", 30*time.Second, func() bool { return seen.distinct() == 400 })

	// 100 cycles while it consumes.
	e.produce(t, topic, 400, 1000, key)
	for i := range 100 {
		if err := m.c.Pause(ctx); err != nil {
			t.Fatalf("cycle %d: Pause: %v", i, err)
		}
		time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond)
		if err := m.c.Resume(ctx); err != nil {
			t.Fatalf("cycle %d: Resume: %v", i, err)
		}
		time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond)
	}
	waitFor(t, "all 1400 records", 60*time.Second, func() bool { return seen.distinct() == 1400 })
	time.Sleep(300 * time.Millisecond) // a duplicate would show up by now
	t.Logf("100 Pause/Resume cycles: %d distinct records handled, %d duplicates, %d rebalances, %d generations",
		seen.distinct(), seen.duplicates(), rebalanced.Load(), connected.Load())
	if d := seen.duplicates(); d != 0 {
		t.Errorf("%d records handled twice across the pauses; want 0", d)
	}
	if n := rebalanced.Load(); n != 0 {
		t.Errorf("%d rebalances during the pauses; want 0 (Pause keeps the membership)", n)
	}
	if n := connected.Load(); n != 1 {
		t.Errorf("%d generations started; want 1", n)
	}
}

// Issue 10 (Kafka protocol, in-process kfake cluster): a paused Source hands
// nothing out — Receive blocks until ctx ends — and after Resume it hands out
// the records it had fetched, in offset order per partition.
func TestPausedSourceReceiveBlocksUntilResume(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "pause-receive")
	e.produce(t, topic, 0, 40, func(i int) string { return "k" + itoa(i) })
	src := newSource(t, e.config(topic, "pause-receive"))
	defer src.Close(context.Background())
	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := src.Receive(rctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if err := first.Ack(rctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := src.Pause(rctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer pcancel()
	if d, err := src.Receive(pctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive while paused = %v, %v; want context.DeadlineExceeded", d, err)
	}
	if err := src.Resume(rctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	last := map[int]int64{}
	p, o := idOffset(first.Message().ID)
	last[p] = o
	for n := 1; n < 40; n++ {
		d, err := src.Receive(rctx)
		if err != nil {
			t.Fatalf("Receive %d after Resume: %v", n, err)
		}
		p, o := idOffset(d.Message().ID)
		if prev, ok := last[p]; ok && o != prev+1 {
			t.Errorf("partition %d: offset %d after %d; want %d", p, o, prev, prev+1)
		}
		last[p] = o
		if err := d.Ack(rctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}
