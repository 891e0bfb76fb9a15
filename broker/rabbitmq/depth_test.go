package rabbitmq

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/middleware/prometheus"
)

var _ prometheus.DepthSource = (*Source)(nil)

// RabbitMQ (real server): QueueDepth reports the ready messages and the
// consumers of the queue, as the broker counts them.
func TestQueueDepthReportsReadyMessagesAndConsumers(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, "classic")
	prepublish(t, q, 7, 16)

	src, err := NewSource(Config{Dialer: Dialer{URL: amqpURL()}, Queue: q, Prefetch: 1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msgs, consumers, err := src.QueueDepth(ctx)
	if err != nil || msgs != 7 || consumers != 0 {
		t.Fatalf("QueueDepth before consuming = %d, %d, %v; want 7, 0, nil", msgs, consumers, err)
	}

	// Subscribed with prefetch 1: one message is out, unacked; six are ready.
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "depth 6 with 1 consumer", func() bool {
		msgs, consumers, err = src.QueueDepth(ctx)
		return err == nil && msgs == 6 && consumers == 1
	})
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	missing, err := NewSource(Config{Dialer: Dialer{URL: amqpURL()}, Queue: q + "-missing", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if _, _, err := missing.QueueDepth(ctx); err == nil {
		t.Error("QueueDepth of a missing queue = nil error; want the broker's NOT_FOUND")
	}
}
