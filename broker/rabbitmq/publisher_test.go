package rabbitmq

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// TestPublisherErrors checks that a publish the broker did not take is an
// error: to a missing exchange (the broker closes the channel with 404), an
// unroutable mandatory publish (basic.return), a nacked publish (a full
// queue with overflow reject-publish), and a passed context deadline; and
// that the publisher keeps working after each.
func TestPublisherErrors(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-max-length": 1, "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	x := q + ".unbound"
	if err := ch.ExchangeDeclare(x, "direct", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// Auto-delete removes an exchange only when its last binding goes; this
	// one never has any.
	t.Cleanup(func() {
		if ch, err := rawConn(t).Channel(); err == nil {
			_ = ch.ExchangeDelete(x, false, false)
			_ = ch.Close()
		}
	})
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx := context.Background()
	msg := amqp.Publishing{Body: []byte("x")}

	ok := func(what string) {
		t.Helper()
		if err := pub.PublishRaw(ctx, "", q, msg); err != nil {
			t.Fatalf("Publish %s = %v; want nil", what, err)
		}
	}
	ok("into an empty queue")

	err = pub.PublishRaw(ctx, "qk-no-such-exchange", "k", msg)
	t.Logf("missing exchange: %v", err)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Errorf("Publish to a missing exchange = %v; want an error wrapping a 404 *amqp.Error", err)
	}

	err = pub.PublishRaw(ctx, x, "nobody-listens", msg)
	t.Logf("unroutable: %v", err)
	var re *ReturnError
	if !errors.Is(err, ErrReturned) || !errors.As(err, &re) || re.Code != amqp.NoRoute {
		t.Errorf("unroutable mandatory Publish = %v; want ErrReturned with code 312", err)
	}

	err = pub.PublishRaw(ctx, "", q, msg) // the queue holds 1 already: rejected
	t.Logf("full queue: %v", err)
	if !errors.Is(err, ErrNacked) {
		t.Errorf("Publish to a full reject-publish queue = %v; want ErrNacked", err)
	}

	if _, err := ch.QueuePurge(q, false); err != nil {
		t.Fatal(err)
	}
	ok("after the errors")

	dead, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	err = pub.PublishRaw(dead, "", q, msg)
	t.Logf("passed deadline: %v", err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish with a passed deadline = %v; want context.DeadlineExceeded", err)
	}
}

// TestPublisherHonoursTheDeadlineWhileTheBrokerIsUnreachable publishes
// through a dialer whose connections go nowhere: Publish must keep retrying
// only until its context's deadline and then return the deadline error.
func TestPublisherHonoursTheDeadlineWhileTheBrokerIsUnreachable(t *testing.T) {
	pub, err := NewPublisher(PublisherConfig{
		Dialer: Dialer{URL: "amqp://guest:sekrit@broker.invalid:5672/", Dial: func(network, addr string) (net.Conn, error) {
			return nil, errors.New("network unreachable (test dialer)")
		}},
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = pub.PublishRaw(ctx, "", "q", amqp.Publishing{Body: []byte("x")})
	took := time.Since(start)
	t.Logf("Publish = %v after %v", err, took)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish = %v; want context.DeadlineExceeded", err)
	}
	if took > 5*time.Second {
		t.Errorf("Publish took %v with a 300ms deadline", took)
	}
	if strings.Contains(err.Error(), "sekrit") {
		t.Errorf("error %q shows the password", err)
	}
}

// TestPublisherIsSafeForConcurrentUse publishes from 8 goroutines at once;
// every publish must be confirmed and arrive exactly once.
func TestPublisherIsSafeForConcurrentUse(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	const g, per = 8, 250
	var wg sync.WaitGroup
	errs := make(chan error, g*per)
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < per; j++ {
				if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{Body: []byte("x")}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Publish: %v", err)
	}
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	qi, err := ch.QueueDeclarePassive(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: Classic})
	if err != nil {
		t.Fatal(err)
	}
	if qi.Messages != g*per {
		t.Errorf("queue has %d messages; want %d", qi.Messages, g*per)
	}
	if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{}); !errors.Is(err, broker.ErrPublisherClosed) {
		t.Errorf("Publish after Close = %v; want ErrPublisherClosed", err)
	}
}

// TestConcurrentReturnsOfOneMessageID (issue 15): a mandatory publish
// carries seqHeader only when another one with its message-id is pending,
// and a return without it is matched by exchange, key and message-id. 64
// goroutines publish with one message-id at once, half to a queue and half
// to a routing key nobody binds: each unroutable one must fail with
// ErrReturned, each routable one succeed, and the queue hold exactly those.
func TestConcurrentReturnsOfOneMessageID(t *testing.T) {
	needBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	const n = 64
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			key := q
			if i%2 == 1 {
				key = q + ".nobody"
			}
			errs[i] = pub.Publish(ctx, "", &broker.Message{ID: "same", Key: []byte(key), Body: []byte(strconv.Itoa(i))})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 0 && err != nil {
			t.Errorf("routable publish %d = %v; want nil", i, err)
		}
		if i%2 == 1 && !errors.Is(err, ErrReturned) {
			t.Errorf("unroutable publish %d = %v; want ErrReturned", i, err)
		}
	}
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil || qi.Messages != n/2 {
		t.Errorf("queue: %+v, %v; want %d messages", qi, err, n/2)
	}
}
