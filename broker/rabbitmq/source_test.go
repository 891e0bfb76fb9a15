package rabbitmq

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

func testConfig(q string) Config {
	return Config{
		Dialer:       Dialer{URL: amqpURL()},
		Queue:        q,
		Prefetch:     16,
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
	}
}

// counter records handled message ids.
type counter struct {
	mu   sync.Mutex
	seen map[string]int
	n    atomic.Int64
}

func newCounter() *counter { return &counter{seen: map[string]int{}} }

func (c *counter) add(id string) {
	c.mu.Lock()
	c.seen[id]++
	c.mu.Unlock()
	c.n.Add(1)
}

func (c *counter) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func TestNewSourceRejectsInvalidConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no queue", Config{}},
		{"negative prefetch", Config{Queue: "q", Prefetch: -1}},
		{"prefetch above 65535", Config{Queue: "q", Prefetch: 70000}},
		{"bad scheme", Config{Queue: "q", Dialer: Dialer{URL: "http://x/"}}},
		{"unknown queue type", Config{Queue: "q", Topology: Topology{QueueType: "stream"}}},
		{"retry queue is the queue", Config{Queue: "q", Topology: Topology{RetryQueue: "q"}}},
		{"max backoff below min", Config{Queue: "q", ReconnectMin: time.Second, ReconnectMax: time.Millisecond}},
		{"binding to the default exchange", Config{Queue: "q", Topology: Topology{Bindings: []Binding{{}}}}},
		{"negative ack batch", Config{Queue: "q", AckBatch: -1}},
		{"negative ack delay", Config{Queue: "q", AckDelay: -time.Millisecond}},
		{"ack delay above 1s", Config{Queue: "q", AckDelay: time.Second + 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewSource(tt.cfg)
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Fatalf("NewSource(%s) = %v; want an error wrapping consumer.ErrInvalidConfig", tt.name, err)
			}
		})
	}
	if _, err := NewPublisher(PublisherConfig{Timeout: -1}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Fatalf("NewPublisher(negative timeout) = %v; want ErrInvalidConfig", err)
	}
}

func TestSourceConsumesEverythingPublishedAndLeavesTheQueueEmpty(t *testing.T) {
	needCtl(t)
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			q := uniqueQueue(t)
			cfg := testConfig(q)
			cfg.Topology.QueueType = typ
			src, err := NewSource(cfg)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close(context.Background())
			const n = 500
			cnt := newCounter()
			c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if m.Attempt != 1 {
					t.Errorf("message %s: Attempt = %d; want 1", m.ID, m.Attempt)
				}
				cnt.add(m.ID)
				return nil
			}), consumer.WithConcurrency(4))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			// The source declares the queue on connect: wait for it.
			waitFor(t, 10*time.Second, "source connected", func() bool { return src.Status().Connected })
			for i := 0; i < n; i++ {
				if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: strconv.Itoa(i), Body: []byte("x")}); err != nil {
					t.Fatalf("Publish %d: %v", i, err)
				}
			}
			waitFor(t, 30*time.Second, "all handled", func() bool { return cnt.distinct() == n })
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v; want nil", err)
			}
			if got := cnt.n.Load(); got != n {
				t.Errorf("handled %d times; want %d (no duplicates without faults)", got, n)
			}
			ready, unacked := drainedQueueCounts(t, q)
			if ready != 0 || unacked != 0 {
				t.Errorf("queue after run: ready=%d unacked=%d; want 0 0", ready, unacked)
			}
		})
	}
}
