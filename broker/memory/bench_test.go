package memory_test

import (
	"context"
	"fmt"
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

// BenchmarkDeadLettersCountLongIDs counts 10,000 dead letters against a
// filter of 50,000 ids (review R1: 3.7s under the broker's lock when each
// dead letter looked through the list).
func BenchmarkDeadLettersCountLongIDs(b *testing.B) {
	br := memory.NewBroker()
	defer br.Close()
	ctx := context.Background()
	msgs := make([]*broker.Message, 10000)
	for i := range msgs {
		msgs[i] = &broker.Message{Body: []byte("x"), Header: broker.Reason{Err: "boom", Source: "q"}.Header(nil)}
	}
	if err := br.Publish(ctx, memory.DeadLetterQueue("q"), msgs...); err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 50000)
	for i := range ids {
		ids[i] = fmt.Sprintf("q.dlq-%d", 2*i+1)
	}
	dl := br.DeadLettersOf("q")
	b.ResetTimer()
	for b.Loop() {
		if n, err := dl.Count(ctx, broker.DeadLetterFilter{IDs: ids}); err != nil || n != 5000 {
			b.Fatalf("Count = %d, %v; want 5000", n, err)
		}
	}
}
