package consumer_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// BenchmarkRuntimePath measures the runtime's own cost per message with a
// source that costs next to nothing: Receive hands out the next of b.N
// deliveries made before the timer (one atomic add, no channel, no
// goroutine hand-off) and settlement does nothing. Against raw-loop (the
// same Receive, handler and Ack called by hand on as many goroutines) the
// difference is what consumer.New's per-message path adds: the figure the
// Kafka adapters' throughput pays on top of the client (issue 16). leased
// runs every delivery under one lease (broker.Leased, as Kafka's);
// 4leases under four leases, in runs of 16 deliveries of one (a Kafka
// source's leases are per partition).
func BenchmarkRuntimePath(b *testing.B) {
	for _, conc := range []int{1, 4, 16} {
		for _, leases := range []int{0, 1, 4} {
			name := fmt.Sprintf("c=%d", conc)
			switch leases {
			case 1:
				name += "-leased"
			case 4:
				name += "-4leases"
			}
			b.Run("raw-loop/"+name, func(b *testing.B) { benchPath(b, conc, leases, false) })
			b.Run("queuekit/"+name, func(b *testing.B) { benchPath(b, conc, leases, true) })
		}
	}
}

// cycleSource hands out n deliveries, cycling through the few of ds (their
// settlement does nothing, so they can be handed out again), the last one
// being last; then it blocks until ctx ends. A few deliveries cycled keep the
// setup, and the collector's work on it, out of the measure.
type cycleSource struct {
	ds   []broker.Delivery
	last broker.Delivery
	n    int64
	next atomic.Int64
}

func (s *cycleSource) get(i int64) broker.Delivery {
	if i == s.n-1 {
		return s.last
	}
	return s.ds[i&int64(len(s.ds)-1)]
}

func (s *cycleSource) Receive(ctx context.Context) (broker.Delivery, error) {
	if i := s.next.Add(1) - 1; i < s.n {
		return s.get(i), nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *cycleSource) Close(context.Context) error { return nil }

func benchPath(b *testing.B, conc, leases int, runtime bool) {
	ls := make([]context.Context, leases)
	for j := range ls {
		lease, end := context.WithCancel(context.Background())
		defer end()
		ls[j] = lease
	}
	const cycle = 1024 // a power of two
	store := make([]leasedDelivery, cycle+1)
	n := int64(b.N)
	src := &cycleSource{ds: make([]broker.Delivery, cycle), n: n}
	for i := range store {
		store[i].m = broker.Message{ID: "m", Body: []byte("body")}
		var d broker.Delivery = &store[i].chanDelivery
		if leases > 0 {
			store[i].lease = ls[i/16%leases]
			d = &store[i]
		}
		if i == cycle {
			src.last = d
		} else {
			src.ds[i] = d
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	if !runtime {
		b.ResetTimer()
		cpu := startCPU()
		done := make(chan struct{})
		var left atomic.Int64
		left.Store(int64(conc))
		for range conc {
			go func() {
				defer func() {
					if left.Add(-1) == 0 {
						close(done)
					}
				}()
				for {
					i := src.next.Add(1) - 1
					if i >= n {
						return
					}
					d := src.get(i)
					m := d.Message()
					if err := noop(ctx, m); err == nil {
						_ = d.Ack(ctx)
					}
				}
			}()
		}
		<-done
		b.StopTimer()
		cpu.report(b)
		return
	}
	c, err := consumer.New(src, consumer.HandlerFunc(func(hctx context.Context, m *broker.Message) error {
		if m == &store[cycle].m {
			cancel()
		}
		return nil
	}), consumer.WithConcurrency(conc), consumer.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu := startCPU()
	if err := c.Run(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b)
}
