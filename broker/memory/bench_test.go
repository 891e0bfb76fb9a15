package memory_test

import (
	"context"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

var benchBody = make([]byte, 128)

// BenchmarkReceiveAck measures one Receive + Ack on a queue that already
// holds the messages (Publish is outside the timer).
func BenchmarkReceiveAck(b *testing.B) {
	br := memory.NewBroker()
	ctx := context.Background()
	b.StopTimer()
	for range b.N {
		br.Publish(ctx, "q", &broker.Message{Body: benchBody})
	}
	src, _ := br.Source("q", memory.SourceConfig{Prefetch: 1})
	b.ReportAllocs()
	b.StartTimer()
	for range b.N {
		d, err := src.Receive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishReceiveAck measures a message's whole trip, publish
// included.
func BenchmarkPublishReceiveAck(b *testing.B) {
	br := memory.NewBroker()
	ctx := context.Background()
	src, _ := br.Source("q", memory.SourceConfig{Prefetch: 1})
	b.ReportAllocs()
	for range b.N {
		if err := br.Publish(ctx, "q", &broker.Message{Body: benchBody}); err != nil {
			b.Fatal(err)
		}
		d, err := src.Receive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReceiveAckParallel has GOMAXPROCS goroutines share one source
// (prefetch 64) of a pre-filled queue, as the runtime's workers do.
func BenchmarkReceiveAckParallel(b *testing.B) {
	br := memory.NewBroker()
	ctx := context.Background()
	b.StopTimer()
	for range b.N {
		br.Publish(ctx, "q", &broker.Message{Body: benchBody})
	}
	src, _ := br.Source("q", memory.SourceConfig{Prefetch: 64})
	b.ReportAllocs()
	b.StartTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d, err := src.Receive(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			if err := d.Ack(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
