package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// BenchmarkKillSwitch is the kill switch's cost on the happy path: a no-op
// handler on broker/memory, without and with WithKillSwitch, in the same
// run so that the difference holds on a noisy machine. One op is one
// message (ns/msg, allocs/msg); the kill switch's share is the difference
// between the two (goal: at most 100 ns, no allocation). The internal
// BenchmarkKillSwitchOutcome times the switch's own step alone.
func BenchmarkKillSwitch(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("without/c=%d", conc), func(b *testing.B) { benchKillSwitch(b, conc) })
		b.Run(fmt.Sprintf("with/c=%d", conc), func(b *testing.B) {
			benchKillSwitch(b, conc, consumer.WithKillSwitch(consumer.KillSwitch{}))
		})
	}
}

func benchKillSwitch(b *testing.B, conc int, opts ...consumer.Option) {
	mb, src := prepare(b, conc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handled atomic.Int64
	n := int64(b.N)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if handled.Add(1) == n {
			cancel()
		}
		return nil
	})
	c, err := consumer.New(src, h, append([]consumer.Option{consumer.WithConcurrency(conc), consumer.WithLogger(quiet)}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if err := c.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		b.Fatal(err)
	}
	b.StopTimer()
	if st := mb.Stats("bench"); st.Acked != b.N {
		b.Fatalf("acked %d of %d", st.Acked, b.N)
	}
	if ks := c.KillSwitch(); ks.Trips != 0 {
		b.Fatalf("the kill switch tripped on a no-op handler: %+v", ks)
	}
}
