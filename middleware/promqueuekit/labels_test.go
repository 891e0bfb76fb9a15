package promqueuekit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/promqueuekit"
)

// runUntilSettled runs c until the broker counted n settlements on queue,
// or 10 s passed.
func runUntilSettled(t *testing.T, b *memory.Broker, queue string, n int, cs ...*consumer.Consumer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(cs))
	for _, c := range cs {
		go func() { done <- c.Run(ctx) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := b.Stats(queue)
		if st.Acked+st.DeadLettered >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	for range cs {
		<-done
	}
}

// Review of issue 10 (round 3), item 1: a label value that is not valid
// UTF-8 (a name read from a latin-1 file, a queue named so) made
// WithLabelValues panic in the handler path, and the runtime dead-lettered
// every message. Metrics must never fail a message nor a scrape: such values
// are recorded with the invalid bytes replaced by U+FFFD.
func TestInvalidLabelValuesNeverFailAMessageOrAScrape(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	const bad = "caf\xe9"
	for range 3 {
		if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := b.Source("q", memory.SourceConfig{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	h := middleware.Recover()(consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	c, err := consumer.New(src, h, append(rec.For(bad).Options(), consumer.WithMaxDeliveries(2), consumer.WithLogger(discard()))...)
	if err != nil {
		t.Fatal(err)
	}
	runUntilSettled(t, b, "q", 3, c)
	if st := b.Stats("q"); st.Acked != 3 {
		t.Errorf("broker stats %+v; want 3 acked: the metrics failed the messages", st)
	}

	// The Recorder's methods called directly, with a bad topic or runner.
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("a Recorder method panicked on a label value that is not UTF-8: %v", p)
			}
		}()
		m := &broker.Message{Topic: bad}
		rec.HandlerStarted(m)
		rec.HandlerDone(m, nil, time.Millisecond)
		rec.Observe(context.Background(), m, consumer.SettledAck, nil)
		rec.Observe(context.Background(), m, consumer.Settlement(99), nil)
		rec.Event(consumer.Event{Kind: consumer.EventDrained, Runner: bad})
		rec.Event(consumer.Event{Kind: consumer.EventRestarting, Runner: bad})
		rec.HandlerStuck(health.Stuck{Consumer: bad})
	}()

	got := scrape(t, reg, func(string) bool { return false })
	const fixed = "caf\uFFFD"
	for k, want := range map[string]float64{
		"queuekit_messages_handled_total{consumer=" + fixed + ",outcome=ack}":       4,
		"queuekit_handler_duration_seconds_count{consumer=" + fixed + ",result=ok}": 4,
		"queuekit_restarts_total{consumer=" + fixed + "}":                           1,
		"queuekit_stuck_handlers_total{consumer=" + fixed + "}":                     1,
	} {
		if got[k] != want {
			t.Errorf("%s = %v; want %v", k, got[k], want)
		}
	}
	for k := range got {
		if strings.Contains(k, bad) {
			t.Errorf("series %s carries the invalid bytes", k)
		}
	}
}

// Review of issue 10: one rec.Options() result given to two consumers
// counted their settlements under one name (acks a=202, b=198, then a=0,
// b=400 for 200/200). The observer is told the consumer (its ctx carries
// NameFromContext), so the options hold no per-consumer state and every
// series is right for both.
func TestOptionsSharedByTwoConsumersLabelEachRight(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	opts := rec.Options()
	const n = 50
	var cs []*consumer.Consumer
	for _, name := range []string{"a", "b"} {
		for range n {
			if err := b.Publish(context.Background(), name, &broker.Message{Body: []byte(name)}); err != nil {
				t.Fatal(err)
			}
		}
		src, err := b.Source(name, memory.SourceConfig{Prefetch: 4})
		if err != nil {
			t.Fatal(err)
		}
		slow := consumer.HandlerFunc(func(context.Context, *broker.Message) error { time.Sleep(time.Millisecond); return nil })
		c, err := consumer.New(src, slow, append(opts, consumer.WithName(name), consumer.WithConcurrency(2), consumer.WithLogger(discard()))...)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for _, c := range cs {
		go func() { done <- c.Run(ctx) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Stats("a").Acked+b.Stats("b").Acked < 2*n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	<-done
	got := scrape(t, reg, func(string) bool { return false })
	for _, name := range []string{"a", "b"} {
		if k := "queuekit_handler_duration_seconds_count{consumer=" + name + ",result=ok}"; got[k] != n {
			t.Errorf("%s = %v; want %d", k, got[k], n)
		}
		if acked := b.Stats(name).Acked; got["queuekit_messages_handled_total{consumer="+name+",outcome=ack}"] != float64(acked) {
			t.Errorf("acks of %s: metric %v, broker %d", name, got["queuekit_messages_handled_total{consumer="+name+",outcome=ack}"], acked)
		}
	}
}

// Review round 4 of issue 10: Observe and HandlerDone called directly with a
// nil message (or a nil ctx) panicked with a nil dereference; a metrics call
// must never crash the process.
func TestNilMessageDoesNotPanic(t *testing.T) {
	rec, err := promqueuekit.New(prom.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	rec.Observe(nil, nil, consumer.SettledAck, nil)
	rec.Observe(context.Background(), nil, consumer.SettledAck, nil)
	rec.HandlerStarted(nil)
	rec.HandlerDone(nil, nil, time.Millisecond)
}
