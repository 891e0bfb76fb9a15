package franz_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// TestPauseKeepsTheMembership: a paused Source hands out nothing, stays a
// member of its group (no rebalance, Status connected), and after Resume
// hands out what was produced meanwhile, once each. Kafka protocol
// (in-process kfake cluster).
func TestPauseKeepsTheMembership(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "pause", partitions)
	src := newSource(t, e.config(topic, "g-pause"))
	var (
		mu     sync.Mutex
		events []broker.EventKind
	)
	src.SetEventHook(func(ev broker.Event) {
		mu.Lock()
		events = append(events, ev.Kind)
		mu.Unlock()
	})
	e.produceN(t, topic, 0, 1, strconv.Itoa)
	d := receive(t, src)
	if err := src.Pause(t.Context()); err != nil {
		t.Fatalf("Pause = %v", err)
	}
	if err := d.Ack(t.Context()); err != nil { // settling goes on while paused
		t.Fatalf("Ack while paused = %v", err)
	}
	e.produceN(t, topic, 1, 20, strconv.Itoa)
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond) // > SessionTimeout/2: heartbeats must go on
	if d, err := src.Receive(ctx); err == nil {
		t.Fatalf("a paused Source handed out %s", d.Message().ID)
	}
	cancel()
	if st := src.Status(); !st.Connected {
		t.Fatalf("Status while paused = %+v; want connected (a pause is not a leave)", st)
	}
	if err := src.Resume(t.Context()); err != nil {
		t.Fatalf("Resume = %v", err)
	}
	seen := map[string]int{}
	for range 20 {
		d := receive(t, src)
		seen[string(d.Message().Body)]++
		if err := d.Ack(t.Context()); err != nil {
			t.Fatalf("Ack = %v", err)
		}
	}
	for i := 1; i <= 20; i++ {
		if seen[strconv.Itoa(i)] != 1 {
			t.Errorf("record %d handed out %d times after Resume; want once", i, seen[strconv.Itoa(i)])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range events {
		if k == broker.EventRebalanced || k == broker.EventReconnecting {
			t.Errorf("events %v: a pause made the member leave or lose its partitions", events)
		}
	}
}

// TestSlowPartitionDoesNotHoldTheOthers: one partition's first record is
// held unsettled (ByPartition: its lane is blocked) while both partitions
// receive many more records than MaxInFlight and one fetch carry: the
// other partition's records all come; the blocked one is paused in kgo
// rather than let its backlog grow without bound, and its records come
// once the held one is acked, in order. Kafka protocol (in-process kfake
// cluster).
func TestSlowPartitionDoesNotHoldTheOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "slow", 2)
	cfg := e.config(topic, "g-slow")
	cfg.MaxInFlight = 8
	cfg.MaxBytes = 2048 // a few records per partition per fetch
	src := newSource(t, cfg)
	e.produceTo(t, topic, 0, "held")
	held := receive(t, src)
	const n = 600
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for i := range n {
		for p := range int32(2) {
			recs = append(recs, &kgo.Record{Topic: topic, Partition: p, Value: []byte(strconv.Itoa(i))})
		}
	}
	if err := e.manual.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	next := 0
	for next < n {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatalf("partition 1 handed out %d of %d records while partition 0 was blocked, then Receive = %v", next, n, err)
		}
		p, _ := partitionOf(t, d.Message().ID)
		if p != 1 || string(d.Message().Body) != strconv.Itoa(next) {
			t.Fatalf("received %s %q; want partition 1's record %d (partition 0's lane is blocked)", d.Message().ID, d.Message().Body, next)
		}
		next++
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack = %v", err)
		}
	}
	if err := held.Ack(ctx); err != nil {
		t.Fatalf("Ack(held) = %v", err)
	}
	for i := range n {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatalf("partition 0 handed out %d of %d records after its lane was freed, then Receive = %v", i, n, err)
		}
		if p, _ := partitionOf(t, d.Message().ID); p != 0 || string(d.Message().Body) != strconv.Itoa(i) {
			t.Fatalf("received %s %q; want partition 0's record %d, in order", d.Message().ID, d.Message().Body, i)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack = %v", err)
		}
	}
}

// TestCloseWithACancelledContext: Close with a context already done
// returns (an error wrapping context.Canceled), and what was not settled
// comes back to the next member. Kafka protocol (in-process kfake cluster).
func TestCloseWithACancelledContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "close", 1)
	cfg := e.config(topic, "g-close")
	a := newSource(t, cfg)
	e.produceN(t, topic, 0, 2, strconv.Itoa)
	first := receive(t, a)
	if err := first.Ack(t.Context()); err != nil {
		t.Fatalf("Ack = %v", err)
	}
	_ = receive(t, a) // left unsettled
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- a.Close(ctx) }()
	select {
	case err := <-done:
		t.Logf("Close with a cancelled context returned %v after %v", err, time.Since(start).Round(time.Millisecond))
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Close(cancelled) = %v; want nil or an error wrapping context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close with a cancelled context did not return within 5 s")
	}
	if _, err := a.Receive(t.Context()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Fatalf("Receive after Close = %v; want ErrSourceClosed", err)
	}
	// The next member gets the unsettled record (and maybe the acked one:
	// the final commit may have been skipped), after the session timeout
	// at worst.
	b := newSource(t, cfg)
	for {
		d := receive(t, b)
		if string(d.Message().Body) == "1" {
			break
		}
		d.Ack(t.Context())
	}
	_ = franz.ByKey
}

// TestCloseDuringADrainDoesNotWaitForIt: a member holds deliveries when a
// second joins, so its revoke waits for them (RebalanceDrainTimeout 5 s);
// Close meanwhile returns without waiting the drain out: the runtime calls
// Close only once it settled or abandoned what it received, so the rest
// will never be settled. Kafka protocol (in-process kfake cluster).
func TestCloseDuringADrainDoesNotWaitForIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "close-drain", partitions)
	cfg := e.config(topic, "g-close-drain")
	cfg.SessionTimeout, cfg.RebalanceTimeout, cfg.RebalanceDrainTimeout = 8*time.Second, 8*time.Second, 5*time.Second
	for p := range int32(partitions) {
		e.produceTo(t, topic, p, "held")
	}
	a := newSource(t, cfg)
	for range partitions {
		receive(t, a) // held, never settled
	}
	b := newSource(t, cfg)
	go func() { // B's first Receive joins the group: A's revoke starts draining
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if d, err := b.Receive(ctx); err == nil {
			d.Ack(ctx)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	if err := a.Close(t.Context()); err != nil {
		t.Fatalf("Close = %v", err)
	}
	took := time.Since(start)
	t.Logf("Close during a drain took %v (drain budget %v)", took.Round(time.Millisecond), cfg.RebalanceDrainTimeout)
	if took >= cfg.RebalanceDrainTimeout-time.Second {
		t.Fatalf("Close took %v: it waited for the drain of deliveries that will never be settled", took)
	}
}

// TestDeclareTopology creates the topic and its dead-letter topic with
// Config.Topology, is idempotent, and is refused after Close. Kafka
// protocol (in-process kfake cluster).
func TestDeclareTopology(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := e.config("declared", "g-declared")
	cfg.Topology = franz.Topology{Partitions: 3, ReplicationFactor: 1}
	src := newSource(t, cfg)
	for range 2 {
		if err := src.DeclareTopology(t.Context()); err != nil {
			t.Fatalf("DeclareTopology = %v", err)
		}
	}
	td, err := e.adm.ListTopics(t.Context(), "declared", "declared.dlt")
	if err != nil {
		t.Fatalf("ListTopics: %v", err)
	}
	for _, name := range []string{"declared", "declared.dlt"} {
		if n := len(td[name].Partitions); n != 3 {
			t.Errorf("topic %s has %d partitions; want 3", name, n)
		}
	}
	if err := src.Close(t.Context()); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := src.DeclareTopology(t.Context()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Fatalf("DeclareTopology after Close = %v; want ErrSourceClosed", err)
	}
}

// TestDeadLetterWriteFailureCommitsNothing: while the dead-letter topic
// does not exist, DeadLetter returns an error and the delivery stays
// unsettled (nothing committed, its lane held); once the topic exists,
// the same delivery is dead-lettered, with the reason and its origin in
// its headers. Kafka protocol (in-process kfake cluster).
func TestDeadLetterWriteFailureCommitsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := fmt.Sprintf("dlfail-%d", topicSeq.Add(1))
	e.createTopic(t, topic, 1) // no dead-letter topic
	const group = "g-dlfail"
	off := e.produceTo(t, topic, 0, "poison")
	e.produceTo(t, topic, 0, "next")
	src := newSource(t, e.config(topic, group))
	d := receive(t, src)
	reason := broker.Reason{Err: "bad payload", Attempts: 3, Permanent: true}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	err := d.DeadLetter(ctx, reason)
	cancel()
	if err == nil {
		t.Fatal("DeadLetter to a topic that does not exist = nil; want an error")
	}
	t.Logf("DeadLetter without its topic: %v", err)
	quiet, cancelQuiet := context.WithTimeout(t.Context(), 300*time.Millisecond)
	if d2, err := src.Receive(quiet); err == nil {
		t.Fatalf("received %s while the record before it was unsettled (ByPartition)", d2.Message().ID)
	}
	cancelQuiet()
	if got := e.committed(t, group, topic); got[0] > off {
		t.Fatalf("committed %d after a failed dead-letter write; want at most %d", got[0], off)
	}
	e.createTopic(t, topic+".dlt", 1)
	if err := d.DeadLetter(t.Context(), reason); err != nil {
		t.Fatalf("DeadLetter once the topic exists = %v", err)
	}
	if next := receive(t, src); string(next.Message().Body) != "next" {
		t.Fatalf("after the dead letter, received %q; want \"next\"", next.Message().Body)
	}
	dctx, dcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer dcancel()
	dls := e.readAll(dctx, t, topic+".dlt", 1)
	if len(dls) != 1 {
		t.Fatalf("dead-letter topic holds %d records; want 1", len(dls))
	}
	h := map[string]string{}
	for _, x := range dls[0].Headers {
		h[x.Key] = string(x.Value)
	}
	want := map[string]string{
		broker.HeaderError: "bad payload", broker.HeaderAttempts: "3", broker.HeaderPermanent: "true",
		broker.HeaderSource: topic, franz.HeaderTopic: topic, franz.HeaderPartition: "0",
		franz.HeaderOffset: strconv.FormatInt(off, 10),
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("dead letter header %s = %q; want %q (headers %v)", k, h[k], v, h)
		}
	}
}
