package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// receiveOne receives one delivery from src within d and acks it.
func receiveOne(t *testing.T, src *Source, d time.Duration) *broker.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	dl, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive = %v", err)
	}
	if err := dl.Ack(ctx); err != nil {
		t.Fatalf("Ack = %v", err)
	}
	return dl.Message()
}

// Issue 10 item 2: Publish takes broker.Messages. Key is the routing key,
// Header the AMQP headers except content-type, which is the property and
// comes back as the header; ID is the message-id, Time the timestamp.
func TestIssue10PublishMapsAMessageToAMQPAndBack(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	m, err := broker.NewJSON(map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	m.Key = []byte(q)
	m.ID = "order-1"
	m.Time = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	m.Header["x-tenant"] = "acme"
	if err := pub.Publish(ctx, "", m); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	if got := m.Header[broker.HeaderContentType]; got != broker.ContentTypeJSON || len(m.Header) != 2 {
		t.Errorf("Publish modified the message's headers: %v", m.Header)
	}

	// The raw delivery: content-type is the property, not a header.
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get(q, false)
	if err != nil || !ok {
		t.Fatalf("basic.get = %v, %v", ok, err)
	}
	if d.ContentType != broker.ContentTypeJSON || d.Headers[broker.HeaderContentType] != nil {
		t.Errorf("AMQP content-type property %q, header %v; want the property %q and no header", d.ContentType, d.Headers[broker.HeaderContentType], broker.ContentTypeJSON)
	}
	if d.MessageId != "order-1" || d.RoutingKey != q || !d.Timestamp.Equal(m.Time) || d.Headers["x-tenant"] != "acme" || d.DeliveryMode != amqp.Persistent {
		t.Errorf("AMQP message id %q, routing key %q, timestamp %v, x-tenant %v, delivery mode %d; want %q, %q, %v, acme, 2",
			d.MessageId, d.RoutingKey, d.Timestamp, d.Headers["x-tenant"], d.DeliveryMode, "order-1", q, m.Time)
	}
	_ = ch.Close() // the message goes back

	src, err := NewSource(testConfig(q))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	got := receiveOne(t, src, 10*time.Second)
	if got.ID != m.ID || string(got.Key) != q || string(got.Body) != `{"n":1}` || !got.Time.Equal(m.Time) {
		t.Errorf("received ID %q, Key %q, Body %s, Time %v; want %q, %q, %s, %v", got.ID, got.Key, got.Body, got.Time, m.ID, q, m.Body, m.Time)
	}
	want := map[string]string{broker.HeaderContentType: broker.ContentTypeJSON, "x-tenant": "acme"}
	if fmt.Sprint(got.Header) != fmt.Sprint(want) {
		t.Errorf("received Header %v; want %v", got.Header, want)
	}

	// An ID left empty gets a random one.
	if err := pub.Publish(ctx, "", &broker.Message{Key: []byte(q), Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if got := receiveOne(t, src, 10*time.Second); len(got.ID) != 32 {
		t.Errorf("message published without an ID arrived with ID %q; want a random 32-hex-digit one", got.ID)
	}
}

// Issue 10 item 2: the messages of one Publish are written without waiting
// for each other's confirms. With the broker's answers held back by a proxy,
// every message of a batch reaches the queue while Publish still waits; once
// the answers pass, it returns nil.
func TestIssue10PublishPipelinesABatch(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	proxy := newTCPProxy(t)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: proxy.URL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, "", &broker.Message{Key: []byte(q), Body: []byte("warm-up")}); err != nil {
		t.Fatal(err) // the channel is open: what follows is publishes only
	}
	const n = 50
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: []byte(q), ID: fmt.Sprint(i), Body: []byte("x")}
	}
	proxy.freeze(toClient)
	done := make(chan error, 1)
	go func() { done <- pub.Publish(ctx, "", msgs...) }()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("%d messages in the queue with no confirm back", n+1), func() bool {
		qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		return err == nil && qi.Messages == n+1
	})
	select {
	case err := <-done:
		t.Fatalf("Publish returned %v before any confirm could reach it", err)
	default:
	}
	proxy.thaw()
	if err := <-done; err != nil {
		t.Fatalf("Publish of %d messages = %v", n, err)
	}
}

// Issue 10 item 2: in a batch, an unroutable message is an error that says
// which one; the messages before it were confirmed.
func TestIssue10PublishBatchReportsTheUnroutableMessage(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = pub.Publish(ctx, "",
		&broker.Message{Key: []byte(q), ID: "a"},
		&broker.Message{Key: []byte(q + ".nobody"), ID: "b"},
		&broker.Message{Key: []byte(q), ID: "c"})
	var re *ReturnError
	if !errors.Is(err, ErrReturned) || !errors.As(err, &re) || re.RoutingKey != q+".nobody" || !strings.Contains(err.Error(), `message 2 of 3 (id "b")`) {
		t.Fatalf("Publish with an unroutable second message = %v; want a *ReturnError naming message 2 of 3", err)
	}
	if got := receiveIDs(t, q, 2); got != "a c" {
		t.Errorf("queue holds %q; want the routable messages, a c", got)
	}

	if err := pub.Publish(ctx, "", &broker.Message{Key: []byte(q)}, nil); err == nil || !strings.Contains(err.Error(), "message 2 of 2 is nil") {
		t.Errorf("Publish with a nil message = %v; want an error naming it", err)
	}
	if err := pub.Publish(ctx, ""); err != nil {
		t.Errorf("Publish of no messages = %v; want nil", err)
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, "", &broker.Message{Key: []byte(q)}); !errors.Is(err, broker.ErrPublisherClosed) {
		t.Errorf("Publish after Close = %v; want broker.ErrPublisherClosed", err)
	}
	if got := receiveIDs(t, q, 0); got != "" {
		t.Errorf("queue holds %q after the nil-message and closed publishes; want nothing", got)
	}
}

// receiveIDs gets everything in q (acking it) and returns the message ids,
// space-separated; it waits until it has at least n.
func receiveIDs(t *testing.T, q string, n int) string {
	t.Helper()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var ids []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			ids = append(ids, d.MessageId)
			continue
		}
		if len(ids) >= n || time.Now().After(deadline) {
			return strings.Join(ids, " ")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Issue 10 item 2: Close is bounded by its context. With the broker hung
// (a proxy that forwards nothing) and a Publish waiting for its confirm,
// Close gives up at ctx's end: it returns an error wrapping ctx's, and the
// Publish fails instead of waiting out its own deadline.
func TestIssue10PublisherCloseIsBoundedByItsContext(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	proxy := newTCPProxy(t)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: proxy.URL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, "", &broker.Message{Key: []byte(q)}); err != nil {
		t.Fatal(err)
	}
	proxy.freeze(toBroker, toClient)
	done := make(chan error, 1)
	go func() { done <- pub.Publish(ctx, "", &broker.Message{Key: []byte(q)}) }()
	time.Sleep(100 * time.Millisecond) // the publish is written and waits

	cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer ccancel()
	start := time.Now()
	err = pub.Close(cctx)
	took := time.Since(start)
	t.Logf("Close(300 ms) on a hung connection = %v after %v", err, took)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	if took > 2*time.Second {
		t.Errorf("Close(ctx with 300 ms) took %v", took)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Publish on the hung connection = nil; want an error")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Publish still waits 2 s after Close gave up")
	}
}

// Issue 10 item 2: a Publish waiting for a dial that hangs returns
// broker.ErrPublisherClosed when the publisher is closed, not at its own
// deadline.
func TestIssue10CloseEndsAPublishWaitingForADial(t *testing.T) {
	release := make(chan struct{})
	dialing := make(chan struct{}, 1)
	pub, err := NewPublisher(PublisherConfig{Logger: quietLogger(), Dialer: Dialer{
		URL: "amqp://guest:guest@broker.invalid:5672/",
		Dial: func(network, addr string) (net.Conn, error) {
			dialing <- struct{}{}
			<-release
			return nil, errors.New("unreachable (test dialer)")
		}}})
	if err != nil {
		t.Fatal(err)
	}
	defer close(release) // the dial returns, and its goroutine ends
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pub.Publish(ctx, "", &broker.Message{Key: []byte("q")}) }()
	<-dialing
	cctx, ccancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer ccancel()
	if err := pub.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a custom dial that hangs = %v; want the ctx's deadline", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, broker.ErrPublisherClosed) {
			t.Errorf("Publish waiting for the dial = %v; want broker.ErrPublisherClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Publish still waits for the dial 2 s after Close")
	}
}
