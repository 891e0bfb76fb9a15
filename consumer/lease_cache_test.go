package consumer_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// TestLeasesTakenInTurn runs one worker on deliveries of two leases in turn
// (as a Kafka source's per-partition leases come): a handler's context ends
// with its own lease only, whatever the worker handled in between, and the
// worker keeps a context per lease instead of making one at every change of
// lease (the same context comes back for the same lease).
func TestLeasesTakenInTurn(t *testing.T) {
	leaseA, endA := context.WithCancel(context.Background())
	leaseB, endB := context.WithCancel(context.Background())
	defer endB()
	// a1 b1 a2 b2, then A ends (while b3 is handled), then a3 b4.
	order := []struct {
		id    string
		lease context.Context
	}{{"a1", leaseA}, {"b1", leaseB}, {"a2", leaseA}, {"b2", leaseB}, {"b3", leaseB}, {"a3", leaseA}, {"b4", leaseB}}
	src := &chanSource{ch: make(chan broker.Delivery, len(order))}
	for _, o := range order {
		d := &leasedDelivery{lease: o.lease}
		d.m = broker.Message{ID: o.id}
		src.ch <- d
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	ctxs := map[string]context.Context{}
	causes := map[string]error{}
	h := consumer.HandlerFunc(func(hctx context.Context, m *broker.Message) error {
		if m.ID == "b3" {
			endA()
			<-ctxs["a2"].Done() // ends with its lease, asynchronously
		}
		mu.Lock()
		defer mu.Unlock()
		ctxs[m.ID] = hctx
		causes[m.ID] = context.Cause(hctx)
		if len(ctxs) == len(order) {
			cancel()
		}
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithConcurrency(1), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]error{"a1": nil, "b1": nil, "a2": nil, "b2": nil, "b3": nil, "a3": broker.ErrStaleDelivery, "b4": nil} {
		if got := causes[id]; !errors.Is(got, want) || (want == nil && got != nil) {
			t.Errorf("message %s: handler context cause when handled %v; want %v", id, got, want)
		}
	}
	if !errors.Is(context.Cause(ctxs["a1"]), broker.ErrStaleDelivery) {
		t.Errorf("a1's context after lease A ended: cause %v; want ErrStaleDelivery", context.Cause(ctxs["a1"]))
	}
	if ctxs["a1"] != ctxs["a2"] || ctxs["b1"] != ctxs["b2"] || ctxs["b2"] != ctxs["b4"] {
		t.Errorf("a new handler context at a change of lease: a1/a2 same %v, b1/b2 same %v, b2/b4 same %v; want one context per lease",
			ctxs["a1"] == ctxs["a2"], ctxs["b1"] == ctxs["b2"], ctxs["b2"] == ctxs["b4"])
	}
}
