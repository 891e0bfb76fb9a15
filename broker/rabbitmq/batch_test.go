package rabbitmq

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Issue 13, "Batch", on RabbitMQ (a vhost of the tests' own): a batch
// consumer fills its batches through the ordinary Receive when the
// prefetch is at least MaxSize × concurrency; a message failed inside a
// batch is redelivered alone, the others are acked once, and the queue is
// empty at the end.
func TestBatchConsumerRetriesAFailedMessageAlone(t *testing.T) {
	needCtl(t)
	q := uniqueQueue(t)
	const n, size, conc = 200, 20, 2
	cfg := testConfig(q)
	cfg.Prefetch = size * conc
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())

	var (
		mu       sync.Mutex
		handled  = map[string][]int{} // ID → Attempt of each handling
		largest  int
		finished int
	)
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		largest = max(largest, len(msgs))
		failed := map[int]error{}
		for i, m := range msgs {
			handled[m.ID] = append(handled[m.ID], m.Attempt)
			if m.ID == "77" && m.Attempt == 1 {
				failed[i] = errors.New("row 77 refused")
				continue
			}
			finished++
		}
		return consumer.BatchFailures(failed)
	})
	c, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: size, MaxWait: 50 * time.Millisecond},
		consumer.WithConcurrency(conc))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, 10*time.Second, "source connected", func() bool { return src.Status().Connected })
	for i := 0; i < n; i++ {
		if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: strconv.Itoa(i), Body: []byte("x")}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	waitFor(t, 30*time.Second, "all handled", func() bool { mu.Lock(); defer mu.Unlock(); return finished == n })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v; want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 0; i < n; i++ {
		id := strconv.Itoa(i)
		got := handled[id]
		switch {
		case id == "77" && (len(got) != 2 || got[1] != 2):
			t.Errorf("message 77 handled with attempts %v; want [1 2]: retried alone", got)
		case id != "77" && len(got) != 1:
			t.Errorf("message %s handled with attempts %v; want once: acked, not redelivered", id, got)
		}
	}
	if len(handled) != n {
		t.Errorf("%d distinct messages handled; want %d", len(handled), n)
	}
	if largest < 2 {
		t.Errorf("largest batch %d; want more than one message", largest)
	}
	t.Logf("largest batch %d of %d", largest, size)
	ready, unacked := drainedQueueCounts(t, q)
	if ready != 0 || unacked != 0 {
		t.Errorf("queue after run: ready=%d unacked=%d; want 0 0", ready, unacked)
	}
}
