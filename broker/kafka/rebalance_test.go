package kafka_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// rebalanceCount is 20,000 as issue 4 asks; QUEUEKIT_KAFKA_SHORT=1 makes it
// 4,000 for quick runs.
func rebalanceCount() int {
	if os.Getenv("QUEUEKIT_KAFKA_SHORT") != "" {
		return 4000
	}
	return 20000
}

// Two members of one group; one is shut down mid-run. Because the leaving
// member drains and commits before it gives its partitions up (and the
// remaining member does the same at the rebalance), no record handled before
// a rebalance is handled again after it. The plain group kafkago.Reader gives
// one duplicate per rebalance here (KAFKA_TESTING.md).
func TestTwoMembersOneShutDownMidRunLosesNothingAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "twomembers")
	n := rebalanceCount()
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%997) })

	l := newLedger()
	h := consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) error {
		time.Sleep(100 * time.Microsecond)
		l.add(m.ID)
		return nil
	})
	var events [2]atomic.Int64
	var misfiled atomic.Int64 // rebalances reported as anything but EventRebalanced + ErrRebalance
	hook := func(i int) func(consumer.Event) {
		return func(ev consumer.Event) {
			switch {
			case ev.Kind == consumer.EventRebalanced && errors.Is(ev.Err, kafka.ErrRebalance):
				events[i].Add(1)
			case ev.Kind == consumer.EventRebalanced || errors.Is(ev.Err, kafka.ErrRebalance):
				misfiled.Add(1)
			}
		}
	}
	cfg := e.config(topic, "g-two")
	a := startMember(t, newSource(t, cfg), h, consumer.WithConcurrency(4), consumer.WithEventHook(hook(0)))
	waitFor(t, "member A to start handling", 20*time.Second, func() bool { return l.distinct() > n/10 })
	b := startMember(t, newSource(t, cfg), h, consumer.WithConcurrency(4), consumer.WithEventHook(hook(1)))
	waitFor(t, "both members to share the work", 20*time.Second, func() bool { return l.distinct() > n/3 })
	took := a.stop(t)
	atStop := l.distinct()
	waitFor(t, "every record handled", 60*time.Second, func() bool { return l.distinct() == n })
	b.stop(t)

	t.Logf("%d records; A shut down after %d were handled, Shutdown took %v (source drain budget %v); rebalances seen: A %d, B %d; duplicates %d",
		n, atStop, took, cfg.DrainTimeout, events[0].Load(), events[1].Load(), l.duplicates())
	if d := l.duplicates(); d != 0 {
		t.Errorf("duplicates = %d; want 0 (every handled record was committed before its partition moved)", d)
	}
	if events[1].Load() == 0 {
		t.Errorf("member B saw no EventRebalanced wrapping ErrRebalance; the test did not exercise a rebalance")
	}
	if m := misfiled.Load(); m != 0 {
		t.Errorf("%d rebalance events were not EventRebalanced with an ErrRebalance error", m)
	}
	// The budget: the runtime's drain (in-flight handlers, ~100µs each)
	// plus the source's DrainTimeout plus a LeaveGroup round trip. Generous.
	if budget := cfg.DrainTimeout + 5*time.Second; took > budget {
		t.Errorf("Shutdown took %v; want within %v", took, budget)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-two", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}

// A member that vanishes without LeaveGroup (kfake swallows the request)
// keeps its partitions until the coordinator's session timeout; then the
// other member takes them over, and nothing is lost.
func TestVanishedMemberPartitionsAreTakenOverAfterSessionTimeout(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "vanish")
	const n = 4000
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i) })

	l := newLedger()
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
		time.Sleep(100 * time.Microsecond)
		l.add(m.ID)
		return nil
	})
	cfg := e.config(topic, "g-vanish")
	srcA := newSource(t, cfg)
	a := startMember(t, srcA, h, consumer.WithConcurrency(4))
	waitFor(t, "member A to start handling", 20*time.Second, func() bool { return l.distinct() > 100 })
	b := startMember(t, newSource(t, cfg), h, consumer.WithConcurrency(4))
	before := l.distinct()
	waitFor(t, "both members handling", 20*time.Second, func() bool { return l.distinct() > before+200 })

	var swallowed atomic.Int64
	e.cluster.ControlKey(int16(kmsg.LeaveGroup), func(req kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		swallowed.Add(1)
		resp := req.ResponseKind().(*kmsg.LeaveGroupResponse)
		resp.SetVersion(req.GetVersion())
		return resp, nil, true // the client thinks it left; the coordinator does not know
	})
	vanished := time.Now()
	a.stop(t)
	atVanish := l.distinct()
	waitFor(t, "every record handled", 60*time.Second, func() bool { return l.distinct() == n })
	takeover := time.Since(vanished)
	b.stop(t)

	t.Logf("A vanished after %d records; LeaveGroup requests swallowed: %d; all %d handled %v later (session timeout %v); duplicates %d",
		atVanish, swallowed.Load(), n, takeover, cfg.SessionTimeout, l.duplicates())
	if swallowed.Load() == 0 {
		t.Fatal("no LeaveGroup was swallowed; the member left cleanly and the test proves nothing")
	}
	if takeover < cfg.SessionTimeout/2 {
		t.Errorf("takeover after %v; a vanished member's partitions should wait for the session timeout (%v)", takeover, cfg.SessionTimeout)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-vanish", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}

// A delivery still unsettled when its generation's drain budget ran out is
// fenced: acking it later returns ErrStaleDelivery and its offset is never
// committed, so the partition's next owner gets it again (kafka-go #1308).
func TestDeliveryOutlivingItsGenerationIsFencedAndNotCommitted(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "fence")
	e.produce(t, topic, 0, 40, func(i int) string { return "k" + strconv.Itoa(i) })

	cfg := e.config(topic, "g-fence")
	cfg.DrainTimeout = 300 * time.Millisecond
	src := newSource(t, cfg)
	rebalanced := make(chan error, 4)
	src.SetEventHook(func(ev consumer.Event) {
		if ev.Kind == consumer.EventRebalanced {
			select {
			case rebalanced <- ev.Err:
			default:
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	heldPart, heldOff := idOffset(held.Message().ID)

	// A second member joins: the first one's generation ends, the drain
	// budget passes with `held` unsettled.
	l := newLedger()
	b := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) error {
		l.add(m.ID)
		return nil
	}))
	select {
	case err := <-rebalanced:
		if !errors.Is(err, kafka.ErrRebalance) {
			t.Errorf("rebalance event Err = %v; want ErrRebalance", err)
		}
	case <-ctx.Done():
		t.Fatal("no rebalance event")
	}
	if err := held.Ack(ctx); !errors.Is(err, consumer.ErrStaleDelivery) {
		t.Fatalf("Ack after the generation ended = %v; want ErrStaleDelivery", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitFor(t, "member B to take every partition and handle all", 20*time.Second, func() bool { return l.distinct() == 40 })
	b.stop(t)
	if got := l.seen[held.Message().ID]; got != 1 {
		t.Errorf("fenced record %s handled %d times by the new owner; want 1", held.Message().ID, got)
	}
	t.Logf("fenced record %s (partition %d offset %d) was redelivered to the new owner", held.Message().ID, heldPart, heldOff)
}
