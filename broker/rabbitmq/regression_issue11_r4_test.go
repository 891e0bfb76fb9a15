package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// killProxy forwards loopback TCP connections to the broker; kill closes
// the connections it holds and keeps accepting new ones (a connection
// lost, then a reconnect that works).
type killProxy struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newKillProxy(t *testing.T) *killProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return forwardFrom(t, ln)
}

// forwardFrom is a killProxy on ln (a TCP or TLS listener), forwarding to
// the tests' broker; it is closed when the test ends.
func forwardFrom(t *testing.T, ln net.Listener) *killProxy {
	p := &killProxy{ln: ln}
	target := hostPort()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { defer p.wg.Done(); _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); p.kill(); p.wg.Wait() })
	return p
}

func (p *killProxy) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// port is the port the proxy listens on.
func (p *killProxy) port() string {
	_, port, _ := net.SplitHostPort(p.ln.Addr().String())
	return port
}

func (p *killProxy) URL() string {
	u, err := url.Parse(amqpURL())
	if err != nil {
		panic(err) // the tests' own URL
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

// Issue 11, review 4 #1: a List on a queue that rotates whose connection
// is lost mid-pass returned only once the dead-letter queue counted as
// many ready messages as before, up to 5 minutes past its ctx; a quorum
// queue with delivery limit 0 drops the messages the lost connection gave
// back, so that count never came. List must return within its ctx.
func TestRegressionIssue11ListReturnsWithinCtxAfterConnectionLoss(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q+".dlq", true, false, false, false, amqp.Table{amqp.QueueTypeArg: Quorum, "x-delivery-limit": int32(0)}); err != nil {
		t.Fatal(err)
	}
	_ = ch.Close()
	fillDeadLetters(t, q, 100)
	p := newKillProxy(t)
	dl := newDLFor(t, DeadLetterConfig{Queue: q, QueueType: Quorum, Dialer: Dialer{URL: p.URL()}})

	// Lose the connection in the middle of the pass (100 round trips).
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		time.Sleep(100 * time.Millisecond)
		p.kill()
	}()
	const wait = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := dl.List(ctx, broker.DeadLetterQuery{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("List = %v", err)
	case <-time.After(wait + 5*time.Second):
		t.Fatalf("List still running %v past its ctx (%v)", 5*time.Second, wait)
	}
	<-killed
}

// Issue 11, review 4 #3: a queue named like the lock that is not a
// queuekit lock (not exclusive) made every operation wait for its ctx and
// fail with "another process holds the lock". It must say what it is.
func TestRegressionIssue11ForeignLockQueue(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			needBroker(t)
			q := uniqueQueue(t)
			declareQueue(t, q+".dlq", Classic)
			ch, err := rawConn(t).Channel()
			if err != nil {
				t.Fatal(err)
			}
			lock := q + ".dlq" + lockSuffix
			if _, err := ch.QueueDeclare(lock, durable, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if c, err := amqp.Dial(amqpURL()); err == nil {
					if ch, err := c.Channel(); err == nil {
						_, _ = ch.QueueDelete(lock, false, false, false)
					}
					_ = c.Close()
				}
			})
			dl := newDLFor(t, DeadLetterConfig{Queue: q})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err = dl.Count(ctx, broker.DeadLetterFilter{})
			if err == nil || errors.Is(err, ErrDeadLettersBusy) || !strings.Contains(err.Error(), "is not a queuekit lock") {
				t.Fatalf("Count = %v, want an error saying the queue %q is not a queuekit lock", err, lock)
			}
		})
	}
}

// Issue 11, review 4 #4: Purge by id with Max counted each copy of a dead
// letter a crash left twice against Max: "Done: [X]" while a copy of X
// stayed. Max counts ids.
func TestRegressionIssue11MaxCountsIDsNotCopies(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q+".dlq", Classic)
	publishTo(t, q+".dlq", []amqp.Publishing{deadLetterOf(q, 0), deadLetterOf(q, 1), deadLetterOf(q, 0)})
	dl := newDLFor(t, DeadLetterConfig{Queue: q})
	ctx := context.Background()
	res, err := dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{dlID(0)}}, Max: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	page, err := dl.List(ctx, broker.DeadLetterQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, d := range page.Items {
		left = append(left, d.ID)
	}
	if slices.Contains(left, dlID(0)) || !slices.Contains(left, dlID(1)) {
		t.Fatalf("Purge = %+v, left %v; want every copy of %s purged and %s kept", res, left, dlID(0), dlID(1))
	}
}
