package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware/correlation"
)

// Kafka protocol (in-process kfake cluster): PublisherConfig.Inject writes
// context (here a correlation id) into the headers of every published record,
// and the consumer's handler sees it; the caller's header map is not changed.
func TestPublisherInjectCarriesContextToTheHandler(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "inject")
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: topic, BatchTimeout: time.Millisecond,
		Inject: correlation.Inject})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	hdr := map[string]string{"kind": "order"}
	ctx := correlation.WithID(context.Background(), "req-42")
	if err := pub.Publish(ctx, "", &broker.Message{Key: []byte("k"), Body: []byte("b"), Header: hdr}); err != nil {
		t.Fatal(err)
	}
	if len(hdr) != 1 {
		t.Errorf("caller's header map = %v; want it unchanged", hdr)
	}

	var mu sync.Mutex
	var got map[string]string
	startMember(t, newSource(t, e.config(topic, "inject-group")), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		got = m.Header
		mu.Unlock()
		return nil
	}))
	waitFor(t, "the record", 20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return got != nil })
	mu.Lock()
	defer mu.Unlock()
	if got[correlation.Header] != "req-42" || got["kind"] != "order" {
		t.Errorf("handler saw headers %v; want %s=req-42 and kind=order", got, correlation.Header)
	}
}
