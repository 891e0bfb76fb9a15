package brokertest

import (
	"context"
	"slices"

	"github.com/queuekit/queuekit/broker"
)

// testBatchReceive: a broker.BatchReceiver's ReceiveBatch returns between 1
// and max deliveries, every message once, and takes a batch's settlements in
// any order. Deliveries of one lane (broker.Sequenced) given back with
// Release out of order come again in the order they came in.
func testBatchReceive(e *env) {
	const n, max = 6, 4
	ms := msgs("batch", n)
	for i := range ms {
		ms[i].Key = []byte("batch-key") // one partition, one lane, where keys decide
	}
	e.publish(ms...)
	src := e.source(n)
	br, ok := src.(broker.BatchReceiver)
	if !ok {
		e.Skip("the source does not implement broker.BatchReceiver")
	}
	receive := func() []broker.Delivery {
		e.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
		defer cancel()
		ds, err := br.ReceiveBatch(ctx, max, 0)
		if err != nil {
			e.Fatalf("ReceiveBatch(ctx, %d, 0) = %v after waiting up to %v", max, err, e.h.Timeout)
		}
		if len(ds) < 1 || len(ds) > max {
			e.Fatalf("ReceiveBatch(ctx, %d, 0) returned %d deliveries; want 1 to %d", max, len(ds), max)
		}
		for _, d := range ds {
			if d == nil || d.Message() == nil {
				e.Fatal("ReceiveBatch returned a nil delivery or message")
			}
		}
		return ds
	}

	// Give back, out of order, the first batch if it has two deliveries of
	// one lane: they must come again in their order.
	var lane []string
	ds := receive()
	byLane := map[uint64][]broker.Delivery{}
	for _, d := range ds {
		if sq, ok := d.(broker.Sequenced); ok {
			byLane[sq.Lane()] = append(byLane[sq.Lane()], d)
		}
	}
	for _, run := range byLane {
		if len(run) < 2 {
			continue
		}
		for _, d := range run {
			lane = append(lane, string(d.Message().Body))
		}
		break
	}
	if lane != nil {
		e.Logf("releasing a batch of %d out of order, with %v of one lane", len(ds), lane)
		// The last first, then the others in order.
		for _, d := range append([]broker.Delivery{ds[len(ds)-1]}, ds[:len(ds)-1]...) {
			rl, ok := d.(broker.Releaser)
			if !ok {
				e.Skip("Sequenced deliveries that are not Releasers")
			}
			ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
			err := rl.Release(ctx)
			cancel()
			if err != nil {
				e.Fatalf("Release(%s) = %v; want nil", describe(d.Message()), err)
			}
		}
		ds = nil
	}

	seen := map[string]int{}
	var order []string
	for len(seen) < n {
		if ds == nil {
			ds = receive()
		}
		for _, d := range ds {
			body := string(d.Message().Body)
			seen[body]++
			order = append(order, body)
			if seen[body] > 1 {
				e.Fatalf("ReceiveBatch delivered %s twice", describe(d.Message()))
			}
		}
		for _, d := range slices.Backward(ds) { // settled in reverse order
			e.ack(d)
		}
		ds = nil
	}
	if lane != nil {
		at := 0
		for _, body := range order {
			if at < len(lane) && body == lane[at] {
				at++
			}
		}
		if at != len(lane) {
			e.Fatalf("deliveries of one lane %v released out of order came again as %v; want their order kept", lane, order)
		}
	}
	e.nothing(src, "every message was acked")
}
