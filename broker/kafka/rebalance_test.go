package kafka_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
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
// a rebalance is handled again after it. The test then runs the same
// scenario with two plain group kafkago.Readers (see twoRawReaders) and
// reports their duplicates next to queuekit's; it asserts only queuekit's,
// since the Readers' count depends on timing.
func TestTwoMembersOneShutDownMidRunLosesNothingAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "twomembers")
	n := rebalanceCount()
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%997) })

	l := newLedger()
	h := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
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
		n, atStop, took, cfg.RebalanceDrainTimeout, events[0].Load(), events[1].Load(), l.duplicates())
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
	// plus the source's RebalanceDrainTimeout plus a LeaveGroup round trip. Generous.
	if budget := cfg.RebalanceDrainTimeout + 5*time.Second; took > budget {
		t.Errorf("Shutdown took %v; want within %v", took, budget)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-two", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}

	rawStart := time.Now()
	raw := twoRawReaders(t, e, n)
	t.Logf("raw scenario took %v", time.Since(rawStart))
	t.Logf("same scenario, same run: queuekit duplicates %d (asserted 0); plain kafka-go group Readers (commit after every record) duplicates %d, with %d rebalances seen by the remaining Reader",
		l.duplicates(), raw.duplicates, raw.rebalances)
}

type rawOutcome struct{ duplicates, rebalances int }

// twoRawReaders runs the scenario of the test above with two plain
// kafka-go group Readers instead of queuekit: n records with the same keys,
// the same handler, the same group timings; reader A alone, then B joins,
// then A is stopped gracefully mid-run — its loop finishes the record in
// hand, commits it, and only then is the Reader closed. Each loop is the
// strictest at-least-once loop the Reader offers: FetchMessage, handle,
// a synchronous CommitMessages of that record. Whatever duplicates remain
// come from the rebalances: the Reader has no step that commits before its
// partitions are given up.
func twoRawReaders(t *testing.T, e *env, n int) rawOutcome {
	t.Helper()
	topic := e.topic(t, "twomembers-raw")
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%997) })
	const group = "g-two-raw"
	l := newLedger()
	type reader struct {
		r      *kafkago.Reader
		cancel context.CancelFunc
		done   chan struct{}
	}
	var commitErrs atomic.Int64
	start := func() *reader {
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers:           e.brokers,
			GroupID:           group,
			Topic:             topic,
			HeartbeatInterval: 100 * time.Millisecond,
			SessionTimeout:    2 * time.Second,
			RebalanceTimeout:  3 * time.Second,
			MaxWait:           100 * time.Millisecond,
			StartOffset:       kafkago.FirstOffset,
		})
		ctx, cancel := context.WithCancel(context.Background())
		rd := &reader{r: r, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(rd.done)
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					return // stopped
				}
				time.Sleep(100 * time.Microsecond)
				l.add(m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10))
				// Not ctx: the record in hand is committed even when stopping.
				if err := r.CommitMessages(context.Background(), m); err != nil {
					commitErrs.Add(1)
				}
			}
		}()
		return rd
	}
	stop := func(rd *reader) {
		rd.cancel()
		<-rd.done
		if err := rd.r.Close(); err != nil {
			t.Errorf("raw Reader Close: %v", err)
		}
	}
	a := start()
	waitFor(t, "raw reader A to start handling", 20*time.Second, func() bool { return l.distinct() > n/10 })
	b := start()
	defer stop(b)
	waitFor(t, "both raw readers to share the work", 30*time.Second, func() bool { return l.distinct() > n/3 })
	stop(a)
	waitFor(t, "every record handled by the raw readers", 60*time.Second, func() bool { return l.distinct() == n })
	out := rawOutcome{duplicates: l.duplicates(), rebalances: int(b.r.Stats().Rebalances)}
	if c := commitErrs.Load(); c > 0 {
		t.Logf("raw readers: %d CommitMessages calls failed", c)
	}
	return out
}

// A member that crashes — it neither leaves the group nor commits after the
// crash point (kfake swallows its LeaveGroup and fails its OffsetCommit
// requests) — keeps its partitions until the coordinator's session timeout;
// then the other member takes them over from the last offsets the crashed
// member did commit. Nothing is lost, the committed offsets reach the end,
// and the records the crashed member handled but never committed are
// handled again by the survivor (at-least-once): the test counts them.
func TestVanishedMemberPartitionsAreTakenOverAfterSessionTimeout(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "vanish")
	const n = 4000
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i) })

	all, byA, byB := newLedger(), newLedger(), newLedger()
	handler := func(own *ledger) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			time.Sleep(100 * time.Microsecond)
			own.add(m.ID)
			all.add(m.ID)
			return nil
		})
	}
	const group = "g-vanish"
	cfg := e.config(topic, group)
	// A commits only by count (1,000) and when a generation ends, so that it
	// has handled work of its own last generation left uncommitted when it
	// vanishes.
	cfgA := cfg
	cfgA.CommitInterval = time.Minute
	var genA atomic.Int64
	a := startMember(t, newSource(t, cfgA), handler(byA), consumer.WithConcurrency(4),
		consumer.WithEventHook(func(ev consumer.Event) {
			if ev.Kind == consumer.EventConnected {
				genA.Add(1)
			}
		}))
	waitFor(t, "member A to start handling", 20*time.Second, func() bool { return all.distinct() > 100 })
	memberA := e.onlyMember(t, group)
	b := startMember(t, newSource(t, cfg), handler(byB), consumer.WithConcurrency(4))
	waitFor(t, "A to be in its second generation", 20*time.Second, func() bool { return genA.Load() >= 2 })
	before := byA.distinct()
	waitFor(t, "both members handling", 20*time.Second, func() bool {
		return byA.distinct() > before+100 && byB.distinct() > 0
	})

	// From here on, A is dead to the coordinator: its commits fail and its
	// LeaveGroup is answered without reaching the group. B's requests pass.
	var leaves, commits atomic.Int64
	e.cluster.ControlKey(int16(kmsg.LeaveGroup), func(req kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		if r := req.(*kmsg.LeaveGroupRequest); r.MemberID != memberA &&
			(len(r.Members) == 0 || r.Members[0].MemberID != memberA) {
			return nil, nil, false
		}
		leaves.Add(1)
		resp := req.ResponseKind().(*kmsg.LeaveGroupResponse)
		resp.SetVersion(req.GetVersion())
		return resp, nil, true // the client thinks it left; the coordinator does not know
	})
	e.cluster.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		r := req.(*kmsg.OffsetCommitRequest)
		if r.MemberID != memberA {
			return nil, nil, false
		}
		commits.Add(1)
		resp := r.ResponseKind().(*kmsg.OffsetCommitResponse)
		resp.SetVersion(r.GetVersion())
		for _, rt := range r.Topics {
			st := kmsg.OffsetCommitResponseTopic{Topic: rt.Topic}
			for _, rp := range rt.Partitions {
				st.Partitions = append(st.Partitions, kmsg.OffsetCommitResponseTopicPartition{
					Partition: rp.Partition, ErrorCode: kerr.RequestTimedOut.Code,
				})
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true // nothing is stored
	})
	vanished := time.Now()
	// Handlers finish; the final commit and the leave go nowhere:
	// Shutdown reports the final commit that failed.
	a.closeFails = kafkago.RequestTimedOut
	a.stop(t)
	atVanish := all.distinct()
	// What the group holds for A's partitions now is what B will start
	// from: A cannot commit any more, and B does not own them until the
	// session timeout.
	frozen := e.committed(t, group, topic)
	waitFor(t, "every record handled", 60*time.Second, func() bool { return all.distinct() == n })
	takeover := time.Since(vanished)
	b.stop(t)

	// Every record A handled at or past the offsets the group held when A
	// vanished was never committed, so B must handle it again; every record
	// A handled before them was committed, so B must not.
	var redelivered, uncommitted, committedTwice int
	for id := range byA.ids() {
		p, off := idOffset(id)
		switch past := off >= frozen[p]; {
		case past && byB.has(id):
			redelivered++
			uncommitted++
		case past:
			uncommitted++
			t.Errorf("%s: handled by A after its last commit (group offset %d) but never by B: lost", id, frozen[p])
		case byB.has(id):
			committedTwice++
		}
	}
	t.Logf("A vanished after %d records (A handled %d, B %d); A's LeaveGroup swallowed %d, OffsetCommit failed %d; all %d handled %v later (session timeout %v); offsets held for the group at the vanish point %v; A's handled-but-uncommitted records %d, redelivered to B %d; committed records handled twice %d",
		atVanish, byA.distinct(), byB.distinct(), leaves.Load(), commits.Load(), n, takeover, cfg.SessionTimeout, frozen, uncommitted, redelivered, committedTwice)
	if leaves.Load() == 0 || commits.Load() == 0 || uncommitted == 0 {
		t.Fatalf("A's LeaveGroup swallowed %d times, OffsetCommit failed %d times, %d handled records uncommitted; want all > 0, or A did not vanish with uncommitted work",
			leaves.Load(), commits.Load(), uncommitted)
	}
	if committedTwice != 0 {
		t.Errorf("%d records committed by A were handled again by B; want 0", committedTwice)
	}
	if d := byB.duplicates(); d != 0 {
		t.Errorf("B handled %d records twice; want 0", d)
	}
	if all.distinct() != n {
		t.Errorf("%d distinct records handled; want %d", all.distinct(), n)
	}
	if takeover < cfg.SessionTimeout/2 {
		t.Errorf("takeover after %v; a vanished member's partitions should wait for the session timeout (%v)", takeover, cfg.SessionTimeout)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, group, topic)
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
	cfg.RebalanceDrainTimeout = 300 * time.Millisecond
	src := newSource(t, cfg)
	rebalanced := make(chan error, 4)
	src.SetEventHook(func(ev broker.Event) {
		if ev.Kind == broker.EventRebalanced {
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
	b := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
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
	if err := held.Ack(ctx); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Fatalf("Ack after the generation ended = %v; want ErrStaleDelivery", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitFor(t, "member B to take every partition and handle all", 20*time.Second, func() bool { return l.distinct() == 40 })
	b.stop(t)
	if got := l.seen[held.Message().ID]; got != 1 {
		t.Errorf("fenced record %s handled %d times by the new owner; want 1", held.Message().ID, got)
	}
	t.Logf("fenced record %s (partition %d offset %d) was redelivered to the new owner", held.Message().ID, heldPart, heldOff)
}
