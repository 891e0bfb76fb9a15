package memory_test

import (
	"context"
	"errors"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

var _ broker.Publisher = (*memory.Publisher)(nil)

func TestPublisherPublishesToTheBroker(t *testing.T) {
	b := memory.NewBroker()
	p := b.Publisher()
	m, err := broker.NewJSON(map[string]int{"id": 1})
	if err != nil {
		t.Fatal(err)
	}
	m.Key = []byte("k")
	if err := p.Publish(context.Background(), "q", m, &broker.Message{Body: []byte("2")}); err != nil {
		t.Fatalf("Publish = %v; want nil", err)
	}
	src := newSource(t, b, "q", 2)
	got := receive(t, src).Message()
	if string(got.Body) != `{"id":1}` || string(got.Key) != "k" || got.Header[broker.HeaderContentType] != broker.ContentTypeJSON {
		t.Errorf("received %q key %q header %v; want the JSON message with its key and content type", got.Body, got.Key, got.Header)
	}
	if got := receive(t, src).Message(); string(got.Body) != "2" {
		t.Errorf("second message %q; want 2 (a batch arrives in order)", got.Body)
	}
}

func TestPublisherCloseRefusesLaterPublishesOnly(t *testing.T) {
	b := memory.NewBroker()
	p, other := b.Publisher(), b.Publisher()
	if err := p.Close(context.Background()); err != nil {
		t.Fatalf("Close = %v; want nil", err)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("a second Close = %v; want nil (idempotent)", err)
	}
	err := p.Publish(context.Background(), "q", &broker.Message{Body: []byte("late")})
	if !errors.Is(err, broker.ErrPublisherClosed) {
		t.Errorf("Publish after Close = %v; want an error wrapping broker.ErrPublisherClosed", err)
	}
	if s := b.Stats("q"); s.Published != 0 {
		t.Errorf("Stats after a refused publish = %+v; want nothing published", s)
	}
	// Closing a publisher closes neither the broker nor its other publishers.
	if err := other.Publish(context.Background(), "q", &broker.Message{Body: []byte("ok")}); err != nil {
		t.Errorf("another publisher's Publish after Close = %v; want nil", err)
	}
	if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte("ok")}); err != nil {
		t.Errorf("Broker.Publish after a publisher's Close = %v; want nil", err)
	}
}

func TestPublisherHonoursContextAndBrokerClose(t *testing.T) {
	b := memory.NewBroker()
	p := b.Publisher()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(ctx, "q", &broker.Message{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled context = %v; want context.Canceled", err)
	}
	b.Close()
	if err := p.Publish(context.Background(), "q", &broker.Message{}); !errors.Is(err, memory.ErrBrokerClosed) {
		t.Errorf("Publish after Broker.Close = %v; want ErrBrokerClosed", err)
	}
}

func TestSourceBacklogCountsReadyMessagesAndSources(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1", "2", "3")
	src := newSource(t, b, "q", 1)
	newSource(t, b, "q", 1)
	var _ broker.BacklogReporter = src
	check := func(what string, want broker.Backlog) {
		t.Helper()
		got, err := src.Backlog(context.Background())
		if err != nil || got.Messages != want.Messages || got.Consumers != want.Consumers || got.Partitions != nil {
			t.Errorf("Backlog %s = %+v, %v; want %+v", what, got, err, want)
		}
	}
	check("with 3 published", broker.Backlog{Messages: 3, Consumers: 2})
	d := receive(t, src)
	check("with one handed out", broker.Backlog{Messages: 2, Consumers: 2})
	settle(t, "Ack", d.Ack)
	for range 2 {
		settle(t, "Ack", receive(t, src).Ack)
	}
	check("when all were acked", broker.Backlog{Messages: 0, Consumers: 2})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := src.Backlog(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Backlog with a cancelled context = %v; want context.Canceled", err)
	}
}

func TestFirstReceiveEmitsConnected(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1", "2")
	src := newSource(t, b, "q", 2)
	var ev events
	src.SetEventHook(ev.hook)
	receive(t, src)
	receive(t, src)
	if got := ev.kinds(); len(got) != 1 || got[0] != broker.EventConnected {
		t.Errorf("events after two Receive calls = %v; want [connected] once (the hook installed before the first Receive learns the source subscribed)", got)
	}
}
