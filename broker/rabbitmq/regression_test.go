package rabbitmq

// Regression tests from the review of the adapter (2026-11-23).

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// A password in a URL that net/url cannot parse leaked into the constructor
// error (amqp091's ParseURI error quotes the raw URL).
func TestUnparseableURLDoesNotLeakItsPassword(t *testing.T) {
	for _, u := range []string{
		"amqp://user:s3cr3tpw@host:99x/",
		"amqp://user:s3cr3tpw@ho st/",
		"amqp://user:s3cr3tpw@[::1/",
	} {
		_, err := NewSource(Config{Queue: "q", Dialer: Dialer{URL: u}})
		if err == nil {
			t.Errorf("%q: no error", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3tpw") {
			t.Errorf("NewSource(%q) error leaks the password: %v", u, err)
		}
	}
}

// gateConn wraps a net.Conn: after the server sent a frame containing
// NOT_FOUND, the next Read fails (connection dropped right after the passive
// check). blockWrites makes Write block until release is closed (a socket
// that takes no more bytes).
type gateConn struct {
	net.Conn
	dropAfterNotFound bool
	sawNotFound       atomic.Bool
	blockWrites       *atomic.Bool
	release           chan struct{}
}

func (c *gateConn) Write(p []byte) (int, error) {
	if c.blockWrites != nil && c.blockWrites.Load() {
		<-c.release
	}
	return c.Conn.Write(p)
}

func (c *gateConn) Read(p []byte) (int, error) {
	if c.dropAfterNotFound && c.sawNotFound.Load() {
		_ = c.Conn.Close()
		return 0, errors.New("test: connection dropped")
	}
	n, err := c.Conn.Read(p)
	if c.dropAfterNotFound && bytes.Contains(p[:n], []byte("NOT_FOUND")) {
		c.sawNotFound.Store(true)
	}
	return n, err
}

// The connection lost between a NOT_FOUND passive check and the next channel
// open made Topology.ensure close a nil *amqp.Channel: a panic in the session
// loop's goroutine, which crashed the process.
func TestConnectionLostDuringTheTopologyCheckDoesNotPanic(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t) // does not exist yet: the passive check fails with NOT_FOUND
	var dials atomic.Int32
	cfg := testConfig(q)
	cfg.Logger = quietLogger()
	cfg.Dialer.Dial = func(network, addr string) (net.Conn, error) {
		if dials.Add(1) > 1 {
			return nil, errors.New("test: broker unreachable")
		}
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		return &gateConn{Conn: c, dropAfterNotFound: true}, nil
	}
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := src.Receive(ctx); err == nil {
		t.Error("Receive succeeded with the broker unreachable")
	}
	if dials.Load() < 2 {
		t.Errorf("dials = %d; want the source to have reconnected after the drop (and not panicked)", dials.Load())
	}
	_ = src.Close(context.Background())
}

// A classic-queue requeue whose counted copy could not be published fell back
// to an uncounted nack: Attempt stuck at 2 and the message came back about
// 3,200 times a second, never dead-lettered. Now the error goes back to the
// runtime, which retries the settlement with backoff.
func TestClassicRequeueThatCannotBePublishedIsNotAHotLoop(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	c := rawConn(t)
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{
		amqp.QueueTypeArg: Classic, "x-max-length": int32(1), "x-overflow": "reject-publish",
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"poison", "filler"} {
		if err := ch.Publish("", q, false, false, amqp.Publishing{MessageId: id, DeliveryMode: 2, Body: []byte(id)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// x-max-length 1 with reject-publish: the second publish above was dropped; publish it when one is out.
	cfg := testConfig(q)
	cfg.Prefetch = 1
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var attempts []int
	first := make(chan struct{})
	var once sync.Once
	cons, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if m.ID == "poison" {
			mu.Lock()
			attempts = append(attempts, m.Attempt)
			mu.Unlock()
			once.Do(func() { close(first) })
			return errors.New("always fails")
		}
		return nil
	}), consumer.WithConcurrency(1), consumer.WithMaxDeliveries(3), consumer.WithDrainTimeout(2*time.Second), consumer.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cons.Run(ctx) }()
	<-first
	// poison is unacked now; one ready message makes the queue full.
	if err := ch.Publish("", q, false, false, amqp.Publishing{MessageId: "filler", DeliveryMode: 2, Body: []byte("f")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	tail := attempts
	if len(tail) > 10 {
		tail = tail[len(tail)-10:]
	}
	t.Logf("poison deliveries: %d; last attempts: %v", len(attempts), tail)
	if len(attempts) > 3 {
		t.Errorf("poison delivered %d times with max deliveries 3 (never dead-lettered)", len(attempts))
	}
}

// Topology.QueueType Quorum over an existing classic queue: Requeue nacked,
// nothing counted, and the message came back 15,000 times in 2 s. Whether
// the broker counts is now decided per delivery.
func TestQuorumConfiguredOverAClassicQueueStillKeepsTheBudget(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	cfg := testConfig(q)
	cfg.Topology.QueueType = Quorum
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	var last atomic.Int32
	cons, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		n.Add(1)
		last.Store(int32(m.Attempt))
		return errors.New("always fails")
	}), consumer.WithConcurrency(1), consumer.WithMaxDeliveries(3), consumer.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cons.Run(ctx) }()
	waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
	c := rawConn(t)
	ch, _ := c.Channel()
	_ = ch.Publish("", q, false, false, amqp.Publishing{MessageId: "poison", DeliveryMode: 2})
	time.Sleep(2 * time.Second)
	cancel()
	<-done
	t.Logf("deliveries of one failing message in 2s: %d, last Attempt %d", n.Load(), last.Load())
	if n.Load() != 3 {
		t.Errorf("delivered %d times with max deliveries 3; want exactly 3, then dead-lettered", n.Load())
	}
}

// Publish ignored its deadline when the socket took no more bytes: amqp091-go
// writes frames with no deadline, and the publish lock was held across it.
func TestPublishReturnsAtItsDeadlineWhenTheSocketTakesNoMoreBytes(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	var block atomic.Bool
	release := make(chan struct{})
	pub, err := NewPublisher(PublisherConfig{Logger: quietLogger(), Dialer: Dialer{URL: amqpURL(),
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := net.DialTimeout(network, addr, 5*time.Second)
			if err != nil {
				return nil, err
			}
			return &gateConn{Conn: c, blockWrites: &block, release: release}, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{Body: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	block.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	res := make(chan error, 1)
	start := time.Now()
	go func() { res <- pub.PublishRaw(ctx, "", q, amqp.Publishing{Body: []byte("x")}) }()
	select {
	case err := <-res:
		t.Logf("Publish returned after %v: %v", time.Since(start), err)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Publish = %v; want the deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("Publish with a 500ms deadline still blocked after 5s (socket not writable)")
		block.Store(false)
		close(release)
		<-res
		release = nil
	}
	if release != nil {
		block.Store(false)
		close(release)
	}
	_ = pub.Close(context.Background())
}
