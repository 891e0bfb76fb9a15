package rabbitmq

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/correlation"
)

// RabbitMQ (real server): Backlog reports the ready messages and the
// consumers of the queue, as the broker counts them (issue 10 item 3: it
// replaces QueueDepth).
func TestBacklogReportsReadyMessagesAndConsumers(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, "classic")
	prepublish(t, q, 7, 16)

	src, err := NewSource(Config{Dialer: Dialer{URL: amqpURL()}, Queue: q, Prefetch: 1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := src.Backlog(ctx)
	if err != nil || b.Messages != 7 || b.Consumers != 0 || b.Partitions != nil {
		t.Fatalf("Backlog before consuming = %+v, %v; want 7 messages, 0 consumers, nil", b, err)
	}

	// Subscribed with prefetch 1: one message is out, unacked; six are ready.
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "depth 6 with 1 consumer", func() bool {
		b, err = src.Backlog(ctx)
		return err == nil && b.Messages == 6 && b.Consumers == 1
	})
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	missing, err := NewSource(Config{Dialer: Dialer{URL: amqpURL()}, Queue: q + "-missing", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close(context.Background())
	var ae *amqp.Error
	if _, err := missing.Backlog(ctx); !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Errorf("Backlog of a missing queue = %v; want the broker's NOT_FOUND", err)
	}
	if err := src.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Backlog(ctx); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Backlog after Close = %v; want broker.ErrSourceClosed", err)
	}
}

// RabbitMQ (real server): PublisherConfig.Inject writes context (here a
// correlation id) into the headers of every published message, and the
// source hands it to the handler with the message's own headers; the
// caller's table is not modified.
func TestPublisherInjectCarriesContextToTheConsumer(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Inject: correlation.Inject, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(correlation.WithID(context.Background(), "req-7"), 10*time.Second)
	defer cancel()
	table := amqp.Table{"kind": "invoice", "n": int32(3)}
	if err := pub.PublishRaw(ctx, "", q, amqp.Publishing{Body: []byte("x"), Headers: table}); err != nil {
		t.Fatal(err)
	}
	if len(table) != 2 {
		t.Errorf("caller's table = %v; want it unchanged", table)
	}
	src, err := NewSource(Config{Dialer: Dialer{URL: amqpURL()}, Queue: q, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := d.Message().Header
	if h[correlation.Header] != "req-7" || h["kind"] != "invoice" {
		t.Errorf("consumer saw headers %v; want %s=req-7 and kind=invoice", h, correlation.Header)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}
