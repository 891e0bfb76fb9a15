package rabbitmq

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestFailedDeadLetterLeavesTheDeliveryUnsettledForARetry makes the
// dead-letter publish fail (the dead-letter exchange is missing: the broker
// closes the publisher's channel with 404): DeadLetter must return the error
// and leave the delivery unsettled, so that once the exchange exists a second
// DeadLetter succeeds and the message reaches the dead-letter queue once.
func TestFailedDeadLetterLeavesTheDeliveryUnsettledForARetry(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	cfg := testConfig(q)
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Connect (declares the topology), then remove the dead-letter exchange.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	if d, err := src.Receive(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive on an empty queue = %v, %v; want DeadlineExceeded", d, err)
	}
	cancelShort()
	waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDelete(q+".dlx", false, false); err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	if err := pub.PublishRaw(ctx, "", q, amqp.Publishing{MessageId: "m"}); err != nil {
		t.Fatal(err)
	}
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reason := broker.Reason{Err: "boom", Attempts: 1, Source: q}
	err = d.DeadLetter(ctx, reason)
	t.Logf("DeadLetter without the exchange = %v", err)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound || errors.Is(err, broker.ErrAlreadySettled) {
		t.Fatalf("DeadLetter without the exchange = %v; want the 404 error", err)
	}
	if err := ch.ExchangeDeclare(q+".dlx", "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q+".dlq", q, q+".dlx", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.DeadLetter(ctx, reason); err != nil {
		t.Fatalf("second DeadLetter = %v; want nil", err)
	}
	if err := d.Ack(ctx); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Fatalf("Ack after DeadLetter = %v; want ErrAlreadySettled", err)
	}
	dead := readQueue(ctx, t, q+".dlq", 1)
	if len(dead) != 1 || dead[0].ID != "m" || dead[0].Header[broker.HeaderError] != "boom" {
		t.Fatalf("dead letters %+v; want message m with its reason", dead)
	}
}
