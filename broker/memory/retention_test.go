package memory_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

// heapInUse returns the live heap after collecting.
func heapInUse() int64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// TestAColdQueueDoesNotPinAckedBodies checks that what a queue keeps alive
// is its own messages: one message waiting on a rarely consumed queue must
// not keep the acked messages of another queue published next to it (issue
// 15 review A, HIGH: stored copies carved from chunks shared by all queues
// kept 150 MB of acked 16 KiB bodies alive behind 300 waiting 4 B ones).
func TestAColdQueueDoesNotPinAckedBodies(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	const rounds, hotSize = 300, 16 << 10
	before := heapInUse()
	hot, err := b.Source("hot", memory.SourceConfig{Prefetch: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer hot.Close(ctx)
	for range rounds {
		for range 31 {
			if err := b.Publish(ctx, "hot", &broker.Message{Body: make([]byte, hotSize)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Publish(ctx, "cold", &broker.Message{Body: []byte("tiny")}); err != nil {
			t.Fatal(err)
		}
		for range 31 {
			d, err := hot.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	grew := heapInUse() - before
	published := int64(rounds * 31 * hotSize)
	t.Logf("heap grew %d KiB after %d KiB of acked bodies and %d waiting 4 B messages", grew/1024, published/1024, rounds)
	if grew > published/10 {
		t.Errorf("heap grew %d KiB: acked bodies (%d KiB published) are kept alive by the waiting messages of another queue", grew/1024, published/1024)
	}
}

// TestAKeptMessagePinsOnlyItself checks that code keeping a message past
// its handler (which broker.Message's contract forbids, and programs do
// anyway) keeps that message alive, not the messages delivered next to it
// (review A, MEDIUM: deliveries carved from slabs of 32 kept 33x the kept
// bodies alive).
func TestAKeptMessagePinsOnlyItself(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	src, err := b.Source("q", memory.SourceConfig{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	const n, size = 32 * 500, 4096
	before := heapInUse()
	var kept []*broker.Message
	body := make([]byte, size)
	for i := range n {
		if err := b.Publish(ctx, "q", &broker.Message{Body: body}); err != nil {
			t.Fatal(err)
		}
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i%32 == 0 {
			kept = append(kept, d.Message())
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	grew := heapInUse() - before
	keptBytes := int64(len(kept) * size)
	t.Logf("kept %d messages (%d KiB of bodies): heap grew %d KiB (%.1fx)", len(kept), keptBytes/1024, grew/1024, float64(grew)/float64(keptBytes))
	if grew > 3*keptBytes {
		t.Errorf("heap grew %d KiB for %d KiB of kept bodies: a kept message pins others", grew/1024, keptBytes/1024)
	}
	runtime.KeepAlive(kept)
}
