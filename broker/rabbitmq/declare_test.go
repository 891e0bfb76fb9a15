package rabbitmq

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// A program that publishes before any consumer connected declares the
// topology first: before, a mandatory publish comes back unroutable; after,
// it is taken, and the queue has its dead-letter exchange and queue, retry
// queue, exchanges and bindings. Declaring again changes nothing.
func TestDeclareTopologyLetsAPublisherPublishBeforeAnyConsumer(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	in := q + ".in"
	t.Cleanup(func() {
		if ch, err := rawConn(t).Channel(); err == nil {
			_ = ch.ExchangeDelete(in, false, false)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	msg := amqp.Publishing{Body: []byte("order")}
	if err := pub.PublishRaw(ctx, "", q, msg); !errors.Is(err, ErrReturned) {
		t.Fatalf("publish before the queue exists = %v; want ErrReturned", err)
	}

	topo := Topology{
		QueueType: Quorum,
		Exchanges: []Exchange{{Name: in, Kind: amqp.ExchangeTopic}},
		Bindings:  []Binding{{Exchange: in, RoutingKey: "orders.#"}},
	}
	for i := range 2 {
		if err := DeclareTopology(ctx, Dialer{URL: amqpURL()}, q, topo); err != nil {
			t.Fatalf("DeclareTopology (call %d) = %v", i+1, err)
		}
	}
	if topo.Exchanges[0].Kind != amqp.ExchangeTopic || topo.DeadLetterQueue != "" {
		t.Errorf("DeclareTopology changed the caller's Topology: %+v", topo)
	}
	if err := pub.PublishRaw(ctx, "", q, msg); err != nil {
		t.Errorf("publish by queue name after DeclareTopology = %v", err)
	}
	if err := pub.PublishRaw(ctx, in, "orders.new", msg); err != nil {
		t.Errorf("publish through the bound exchange = %v", err)
	}

	conn := rawConn(t)
	for _, name := range []string{q, q + ".dlq", q + ".retry"} {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			t.Errorf("queue %s after DeclareTopology: %v", name, err)
			continue
		}
		if name == q && got.Messages != 2 {
			t.Errorf("queue %s holds %d messages; want the 2 published", name, got.Messages)
		}
		_ = ch.Close()
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclarePassive(q+".dlx", amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Errorf("dead-letter exchange after DeclareTopology: %v", err)
	}

	// A Source with the same topology consumes them, quorum attempts and all.
	src, err := NewSource(Config{Dialer: Dialer{URL: amqpURL()}, Queue: q, Topology: topo, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	for range 2 {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m := d.Message(); string(m.Body) != "order" || m.Attempt != 1 {
			t.Errorf("received %q attempt %d", m.Body, m.Attempt)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Bad input is an error from DeclareTopology, never a panic; what retrying
// cannot fix is fatal; the password never shows; a done context returns at once.
func TestDeclareTopologyErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		d     Dialer
		queue string
		topo  Topology
	}{
		{"no queue", Dialer{}, "", Topology{}},
		{"bad queue type", Dialer{}, "q", Topology{QueueType: "stream"}},
		{"unnamed exchange", Dialer{}, "q", Topology{Exchanges: []Exchange{{}}}},
		{"bad URL", Dialer{URL: "http://x"}, "q", Topology{}},
	} {
		if err := DeclareTopology(ctx, tc.d, tc.queue, tc.topo); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("%s: DeclareTopology = %v; want ErrInvalidConfig", tc.name, err)
		}
	}

	// A dial that never answers: the caller's context bounds the wait.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hanging := Dialer{URL: "amqp://u:s3cret@broker.invalid:5672/", Dial: func(network, addr string) (net.Conn, error) {
		<-release
		return nil, errors.New("test dialer: released")
	}}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := DeclareTopology(cctx, hanging, "q", Topology{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging dial: DeclareTopology = %v; want the context's deadline", err)
	}

	needBroker(t)
	bad := strings.Replace(amqpURL(), "guest:guest", "guest:wrong-s3cret", 1)
	err := DeclareTopology(ctx, Dialer{URL: bad}, uniqueQueue(t), Topology{})
	if err == nil || strings.Contains(err.Error(), "wrong-s3cret") || !broker.IsFatal(err) {
		t.Errorf("wrong password: DeclareTopology = %v (fatal: %v); want a fatal error without the password", err, broker.IsFatal(err))
	}
	cctx, cancel = context.WithCancel(ctx)
	cancel()
	if err := DeclareTopology(cctx, Dialer{URL: amqpURL()}, uniqueQueue(t), Topology{}); !errors.Is(err, context.Canceled) {
		t.Errorf("done context: DeclareTopology = %v; want context.Canceled", err)
	}
	missing := uniqueQueue(t)
	err = DeclareTopology(ctx, Dialer{URL: amqpURL()}, missing, Topology{Passive: true})
	if !broker.IsFatal(err) || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("passive check of a missing queue = %v; want a fatal NOT_FOUND", err)
	}
}

// Issue 10 item 3: Source.DeclareTopology (broker.TopologyDeclarer) declares
// what the source's Topology describes before the source has connected, so
// a program that both publishes and consumes can publish at once; a
// topology the broker refuses is a fatal error; after Close it is
// ErrSourceClosed.
func TestIssue10SourceDeclareTopology(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	in := q + ".in"
	t.Cleanup(func() {
		if ch, err := rawConn(t).Channel(); err == nil {
			_ = ch.ExchangeDelete(in, false, false)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := testConfig(q)
	cfg.Logger = quietLogger()
	cfg.Topology = Topology{
		QueueType: Quorum,
		Exchanges: []Exchange{{Name: in, Kind: amqp.ExchangeTopic}},
		Bindings:  []Binding{{Exchange: in, RoutingKey: "orders.#"}},
	}
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	var td broker.TopologyDeclarer = src
	if err := td.DeclareTopology(ctx); err != nil {
		t.Fatalf("DeclareTopology = %v", err)
	}
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	if err := pub.Publish(ctx, in, &broker.Message{Key: []byte("orders.new"), Body: []byte("order")}); err != nil {
		t.Fatalf("publish through the declared exchange = %v", err)
	}
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{q, q + ".dlq", q + ".retry"} {
		if _, err := ch.QueueDeclarePassive(name, true, false, false, false, nil); err != nil {
			t.Fatalf("queue %s after DeclareTopology: %v", name, err)
		}
	}
	if got := receiveOne(t, src, 10*time.Second); string(got.Body) != "order" || got.Attempt != 1 {
		t.Errorf("received %q attempt %d; want order, 1", got.Body, got.Attempt)
	}

	// The same queue as a classic one in Strict mode: the broker refuses it.
	strict := testConfig(q)
	strict.Logger = quietLogger()
	strict.Topology = Topology{Strict: true}
	other, err := NewSource(strict)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	if err := other.DeclareTopology(ctx); !broker.IsFatal(err) {
		t.Errorf("DeclareTopology of a classic queue over a quorum one (Strict) = %v; want a fatal error", err)
	}

	if err := src.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.DeclareTopology(ctx); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("DeclareTopology after Close = %v; want broker.ErrSourceClosed", err)
	}
}
