package kafka_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// silence makes the kfake cluster stop answering: every request, on every
// connection, old or new, is read and never answered, as a broker that hangs
// would. The returned function makes it answer again.
func (e *env) silence(t testing.TB) (revive func()) {
	t.Helper()
	e.needKfake(t)
	var dead atomic.Bool
	dead.Store(true)
	e.cluster.ControlKey(-1, func(kmsg.Request) (kmsg.Response, error, bool) {
		if !dead.Load() {
			e.cluster.DropControl()
			return nil, nil, false
		}
		e.cluster.KeepControl()
		return nil, nil, true // handled, with no response: the client waits
	})
	t.Cleanup(func() { dead.Store(false) })
	return func() { dead.Store(false) }
}

// Issue 10, "Shutdown bound" (Kafka protocol, in-process kfake cluster): a
// consumer whose broker stops answering and whose handler ignores its
// context — Shutdown(ctx with 2 s) returns within 2.2 s, with ctx's error;
// Run returns; nothing is lost: the record whose handler was stuck was not
// committed, and the next member of the group gets it.
//
// Before issue 10, Shutdown waited for Source.Close, which took no context:
// the final commit (Timeout, 10 s here) and the group leave on a silent
// broker held it far past ctx's end.
func TestShutdownIsBoundedByItsContextWhenTheBrokerStopsAnswering(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "shutdown-bound")
	e.produce(t, topic, 0, 8, func(i int) string { return "k" + itoa(i) })
	const group = "shutdown-bound"
	cfg := e.config(topic, group)
	cfg.Timeout = 10 * time.Second // what a request to a silent broker may wait
	src := newSource(t, cfg)

	release := make(chan struct{})
	defer close(release)
	started := make(chan string, 16)
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started <- m.ID
		<-release // ignores ctx on purpose
		return nil
	}), consumer.WithLogger(quietLogger()), consumer.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	var stuck string
	select {
	case stuck = <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("no record was handed to the handler within 20 s")
	}

	revive := e.silence(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = c.Shutdown(ctx)
	took := time.Since(start)
	t.Logf("Shutdown(ctx with 2 s) on a silent broker, handler ignoring ctx: returned after %v with %v", took, err)
	if took > 2200*time.Millisecond {
		t.Errorf("Shutdown(ctx with 2 s) took %v; want at most 2.2 s", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown(ctx with 2 s) = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, consumer.ErrConsumerClosed) {
			t.Errorf("Run = %v; want ErrConsumerClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Run did not return within 1 s of Shutdown")
	}

	// Nothing lost: the stuck record was not committed; once the silent
	// member's session expired, the group's next member handles it.
	revive()
	seen := newLedger()
	startMember(t, newSource(t, e.config(topic, group)), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		seen.add(m.ID)
		return nil
	}))
	waitFor(t, "the stuck record "+stuck+" to be delivered to the next member", 30*time.Second, func() bool { return seen.has(stuck) })
	waitFor(t, "all 8 records", 30*time.Second, func() bool { return seen.distinct() == 8 })
}

// Issue 10 item 4 (Kafka protocol, in-process kfake cluster): Source.Close is
// bounded by its context. With the broker silent and a delivery still out,
// Close(ctx) skips the final commit and the group leave and returns soon
// after ctx ends, with an error wrapping ctx's; every goroutine of the Source
// exits (goleak, in TestMain). The record is not committed.
func TestSourceCloseIsBoundedByItsContext(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "close-bound")
	e.produce(t, topic, 0, 4, func(i int) string { return "k" + itoa(i) })
	cfg := e.config(topic, "close-bound")
	cfg.Timeout = 10 * time.Second
	src := newSource(t, cfg)
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	d, err := src.Receive(rctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	e.silence(t)

	const budget = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	err = src.Close(ctx)
	took := time.Since(start)
	t.Logf("Source.Close(ctx with %v) on a silent broker, one delivery out: returned after %v (%v past ctx's end) with %v",
		budget, took, took-budget, err)
	if took > budget+time.Second {
		t.Errorf("Close(ctx with %v) took %v; want it to return soon after ctx ends", budget, took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close(ctx with %v) = %v; want an error wrapping context.DeadlineExceeded", budget, err)
	}
	if err := d.Ack(context.Background()); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("Ack after Close = %v; want ErrStaleDelivery", err)
	}
	if _, err := src.Receive(context.Background()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Receive after Close = %v; want ErrSourceClosed", err)
	}
	// A second Close returns at once: the first one is done.
	if err := src.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

// Issue 10 item 4 (Kafka protocol, in-process kfake cluster):
// Publisher.Close is bounded by its context: with the broker silent and a
// Publish waiting for its acks, Close(ctx) returns soon after ctx ends with
// an error wrapping ctx's, the pending Publish fails, and a later Publish
// returns an error wrapping broker.ErrPublisherClosed.
func TestPublisherCloseIsBoundedByItsContext(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "pub-close-bound")
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, BatchTimeout: time.Millisecond, WriteTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Connect and learn the topic's partitions before the broker goes silent.
	if err := p.Publish(context.Background(), topic, &broker.Message{Body: []byte("first")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	e.silence(t)
	pending := make(chan error, 1)
	go func() { pending <- p.Publish(context.Background(), topic, &broker.Message{Body: []byte("second")}) }()
	time.Sleep(100 * time.Millisecond) // the write is sent and waits for its ack

	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	err = p.Close(ctx)
	took := time.Since(start)
	t.Logf("Publisher.Close(ctx with %v) on a silent broker, one write pending: returned after %v with %v", budget, took, err)
	if took > budget+time.Second {
		t.Errorf("Close(ctx with %v) took %v; want it to return soon after ctx ends", budget, took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close(ctx with %v) = %v; want an error wrapping context.DeadlineExceeded", budget, err)
	}
	select {
	case err := <-pending:
		if err == nil {
			t.Error("the Publish pending on a silent broker returned nil; want an error")
		}
	case <-time.After(time.Second):
		t.Fatal("the pending Publish did not return within 1 s of Close")
	}
	if err := p.Publish(context.Background(), topic, &broker.Message{Body: []byte("late")}); !errors.Is(err, broker.ErrPublisherClosed) {
		t.Errorf("Publish after Close = %v; want an error wrapping broker.ErrPublisherClosed", err)
	}
}
