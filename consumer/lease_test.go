package consumer_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// leasedDelivery is a chanDelivery valid while its lease lasts.
type leasedDelivery struct {
	chanDelivery
	lease context.Context
}

func (d *leasedDelivery) Lease() context.Context { return d.lease }

// TestLeaseEndCancelsTheHandler checks broker.Leased through the runtime:
// a handler running when its delivery's lease ends sees its context end
// with cause ErrStaleDelivery, while deliveries of a newer lease (the next
// generation) get a live context, and a delivery whose lease ended before
// it was handled gets an ended one. With one worker, so that the three go
// through the same worker one after the other (the runtime may keep a
// context per worker and lease).
func TestLeaseEndCancelsTheHandler(t *testing.T) {
	gen1, end1 := context.WithCancel(context.Background())
	gen2, end2 := context.WithCancel(context.Background())
	defer end2()
	src := &chanSource{ch: make(chan broker.Delivery, 4)}
	mk := func(id string, lease context.Context) *leasedDelivery {
		d := &leasedDelivery{lease: lease}
		d.m = broker.Message{ID: id}
		return d
	}
	src.ch <- mk("a", gen1) // ends while handled
	src.ch <- mk("b", gen1) // lease over before it is handled
	src.ch <- mk("c", gen2)
	src.ch <- mk("d", gen2)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	causes := map[string]error{}
	h := consumer.HandlerFunc(func(hctx context.Context, m *broker.Message) error {
		if m.ID == "a" {
			end1()
			select {
			case <-hctx.Done():
			case <-time.After(10 * time.Second):
			}
		}
		mu.Lock()
		causes[m.ID] = context.Cause(hctx)
		n := len(causes)
		mu.Unlock()
		if n == 4 {
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
	for id, want := range map[string]error{"a": broker.ErrStaleDelivery, "b": broker.ErrStaleDelivery, "c": nil, "d": nil} {
		if got := causes[id]; !errors.Is(got, want) || (want == nil && got != nil) {
			t.Errorf("message %s: handler context cause %v; want %v", id, got, want)
		}
	}
}

// valueLease is a lease context of a type that == panics on (a struct value
// holding a slice), as a third-party source might return.
type valueLease struct {
	context.Context
	tags []string
}

// panickyLease panics in Lease.
type panickyLease struct{ chanDelivery }

func (*panickyLease) Lease() context.Context { panic("lease") }

// TestOddLeasesAreSafe checks leases the runtime cannot keep: one of an
// uncomparable type still ends its handler's context (and never panics the
// runtime), and a Lease method that panics means no lease.
func TestOddLeasesAreSafe(t *testing.T) {
	gen, end := context.WithCancel(context.Background())
	src := &chanSource{ch: make(chan broker.Delivery, 4)}
	for _, id := range []string{"a", "b"} {
		d := &leasedDelivery{lease: valueLease{Context: gen, tags: []string{id}}}
		d.m = broker.Message{ID: id}
		src.ch <- d
	}
	p := &panickyLease{}
	p.m = broker.Message{ID: "c"}
	src.ch <- p
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	causes := map[string]error{}
	h := consumer.HandlerFunc(func(hctx context.Context, m *broker.Message) error {
		if m.ID == "b" {
			end()
			<-hctx.Done()
		}
		mu.Lock()
		defer mu.Unlock()
		causes[m.ID] = context.Cause(hctx)
		if len(causes) == 3 {
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
	if causes["a"] != nil || !errors.Is(causes["b"], broker.ErrStaleDelivery) || causes["c"] != nil {
		t.Errorf("handler context causes %v; want a: none, b: stale delivery, c: none", causes)
	}
}

// metaLease is a comparable struct type whose interface field holds a map:
// == on two such values panics although reflect calls the type comparable
// (review A of issue 15, HIGH).
type metaLease struct {
	context.Context
	Meta any
}

// TestALeaseThatPanicsOnEqualityIsSafe runs three deliveries of one such
// lease through one worker: the runtime must not compare them with ==.
func TestALeaseThatPanicsOnEqualityIsSafe(t *testing.T) {
	lease := metaLease{Context: context.Background(), Meta: map[string]int{"gen": 1}}
	src := &chanSource{ch: make(chan broker.Delivery, 3)}
	for _, id := range []string{"a", "b", "c"} {
		d := &leasedDelivery{lease: lease}
		d.m = broker.Message{ID: id}
		src.ch <- d
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	handled := 0
	c, err := consumer.New(src, consumer.HandlerFunc(func(hctx context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if handled++; handled == 3 {
			cancel()
		}
		return hctx.Err()
	}), consumer.WithConcurrency(1), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if handled != 3 {
		t.Errorf("handled %d; want 3", handled)
	}
}
