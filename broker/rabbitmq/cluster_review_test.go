package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// The regression tests of the hostile review of Dialer.URLs and cluster
// failover (findings H1–H4, M1, M2, L2).

// holeNode is a listener that accepts TCP connections and never answers:
// a hung node.
type holeNode struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func newHoleNode(t *testing.T) *holeNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &holeNode{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c) // held open, never answered
			h.mu.Unlock()
		}
	}()
	t.Cleanup(h.close)
	return h
}

func (h *holeNode) addr() string { return h.ln.Addr().String() }

func (h *holeNode) close() {
	_ = h.ln.Close()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		_ = c.Close()
	}
}

// TestDialerCustomDialBoundsTheHandshake (review H2): with a Dialer.Dial of
// the user's, no handshake deadline was set (only the default dial set
// one), so a node that accepts TCP and never answers held the dial forever
// and the next URL was never tried. The URL's connection_timeout (300ms
// here, 10s by default) bounds the handshakes on both paths.
func TestDialerCustomDialBoundsTheHandshake(t *testing.T) {
	for _, custom := range []bool{false, true} {
		name := map[bool]string{false: "default dial", true: "custom Dial"}[custom]
		t.Run(name, func(t *testing.T) {
			h := newHoleNode(t)
			d := Dialer{URL: "amqp://guest:hole-s3cret@" + h.addr() + "/?connection_timeout=300"}
			if custom {
				d.Dial = func(network, addr string) (net.Conn, error) { return net.Dial(network, addr) }
			}
			c, err := NewConnection(d)
			if err != nil {
				t.Fatal(err)
			}
			defer c.abort()
			res := make(chan error, 1)
			go func() { _, err := c.get(); res <- err }()
			select {
			case err = <-res:
			case <-time.After(10 * time.Second):
				h.close() // ends the dial, for goleak
				t.Fatalf("dial to a node that never answers still waiting after 10s (%s)", name)
			}
			t.Logf("dial = %v", err)
			// amqp091 reports a deadline hit in its handshake as an
			// Exception (501) with the text of the timeout.
			if !errors.Is(err, os.ErrDeadlineExceeded) && (err == nil || !strings.Contains(err.Error(), "i/o timeout")) {
				t.Errorf("dial to a node that never answers = %v; want a timeout (os.ErrDeadlineExceeded)", err)
			}
		})
	}
}

// TestQueueNodeDownReasons: the broker's answers to the declaration of a
// classic queue whose node is down. A stopped node (stop_app) answers
// "process is stopped by supervisor", a lost one "is down or inaccessible";
// a queue that does not exist is not one of them.
func TestQueueNodeDownReasons(t *testing.T) {
	for _, tc := range []struct {
		reason string
		want   bool
	}{
		{"NOT_FOUND - home node 'rabbit@a' of durable queue 'q' in vhost '/' is down or inaccessible", true},
		{"NOT_FOUND - queue 'q' in vhost '/' process is stopped by supervisor", true},
		{"NOT_FOUND - no queue 'q' in vhost '/'", false},
	} {
		err := fmt.Errorf("rabbitmq: declare: %w", &amqp.Error{Code: amqp.NotFound, Reason: tc.reason})
		if got := queueNodeDown(err); got != tc.want {
			t.Errorf("queueNodeDown(%q) = %v; want %v", tc.reason, got, tc.want)
		}
		// Under Passive a missing queue is fatal; one on a node that is
		// down is retried.
		if got := unfixable(err, true); got == tc.want {
			t.Errorf("unfixable(%q, passive) = %v; want %v", tc.reason, got, !tc.want)
		}
	}
}

// TestDialerRejectsURLsWithoutANode (review M1, L2): a URL with no host
// dialled localhost (amqp091's default) — another broker than the one
// meant; port 0 cannot be dialled; the same node twice in URLs is a
// mistake. Each is ErrInvalidConfig, for URL and for every URLs entry,
// without the password. An empty URLs is the same as a nil one.
func TestDialerRejectsURLsWithoutANode(t *testing.T) {
	good := "amqp://app:s3cret-pw@127.0.0.1:5672/vh"
	for _, tc := range []struct {
		name string
		d    Dialer
		want string // in the error
	}{
		{"no host", Dialer{URL: "amqp://app:s3cret-pw@/vh"}, "no host"},
		{"port without host", Dialer{URL: "amqp://app:s3cret-pw@:5681/vh"}, "no host"},
		{"nothing but the vhost", Dialer{URL: "amqp:///vh"}, "no host"},
		{"amqps without host", Dialer{URL: "amqps://app:s3cret-pw@/vh"}, "no host"},
		{"no host in URLs", Dialer{URLs: []string{good, "amqp://app:s3cret-pw@:5681/vh"}}, "URLs[1]"},
		{"port 0", Dialer{URL: "amqp://app:s3cret-pw@127.0.0.1:0/vh"}, "port"},
		{"port 0 in URLs", Dialer{URLs: []string{"amqp://app:s3cret-pw@127.0.0.1:0/vh", good}}, "URLs[0]"},
		{"same URL twice", Dialer{URLs: []string{good, "amqp://app:other-s3cret@127.0.0.2:5672/vh", good}}, "URLs[2]"},
		{"same node twice", Dialer{URLs: []string{good, "amqp://app:s3cret-pw@127.0.0.1/vh"}}, "URLs[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) { checkInvalidDialer(t, tc.d, tc.want) })
	}
	for _, d := range []Dialer{
		{URLs: []string{}},
		{URLs: []string{good, "amqp://app:s3cret-pw@127.0.0.1:5673/vh", "amqp://app:s3cret-pw@127.0.0.1:5672/other"}},
		{URL: "amqp://app:s3cret-pw@[::1]:5672/vh"},
	} {
		if _, err := NewConnection(d); err != nil {
			t.Errorf("NewConnection(%v) = %v; want it valid", d.URLs, err)
		}
	}
	if got := (Dialer{URLs: []string{}}).urls(); len(got) != 1 || got[0] != DefaultURL {
		t.Errorf("Dialer{URLs: []string{}}.urls() = %v; want [DefaultURL], as for nil", got)
	}
}

// switchNode is a node in front of the tests' broker that can be down
// (it accepts each connection and closes it at once) or up (it forwards
// each connection to the broker).
type switchNode struct {
	ln    net.Listener
	up    atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newSwitchNode(t *testing.T) *switchNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &switchNode{ln: ln}
	backend := hostPort()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !n.up.Load() {
				_ = c.Close()
				continue
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				_ = c.Close()
				continue
			}
			n.mu.Lock()
			n.conns = append(n.conns, c, b)
			n.mu.Unlock()
			n.wg.Add(2)
			go func() { defer n.wg.Done(); _, _ = io.Copy(b, c); _ = b.Close() }()
			go func() { defer n.wg.Done(); _, _ = io.Copy(c, b); _ = c.Close() }()
		}
	}()
	t.Cleanup(n.close)
	return n
}

// url is the tests' broker URL through this node, with password pw.
func (n *switchNode) url(t *testing.T, pw string) string {
	t.Helper()
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Host = n.ln.Addr().String()
	u.User = url.UserPassword(userOf(amqpURL()), pw)
	return u.String()
}

func (n *switchNode) close() {
	_ = n.ln.Close()
	n.mu.Lock()
	for _, c := range n.conns {
		_ = c.Close()
	}
	n.mu.Unlock()
	n.wg.Wait()
}

// wrongPassword is the tests' broker URL with a password it refuses.
func wrongPassword(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(userOf(amqpURL()), "wrong-s3cret")
	return u.String()
}

// TestDialerURLsOneNodeRefusesTheUser (review H3): URLs = [a node that
// refuses the user (403 ACCESS_REFUSED), a live node]. While the live node
// was down too, the combined dial error held the 403, and the Source gave
// up for good (it never resumed when the node came back), while the
// Publisher recovered. The rule: a dial to several nodes is fatal only when
// every node refused for a reason reconnecting cannot fix; a node that was
// merely unreachable may come back. (That every node refusing is fatal is
// TestNodeRefusalRule's: RabbitMQ takes 3s to refuse a password.)
func TestDialerURLsOneNodeRefusesTheUser(t *testing.T) {
	needBroker(t)
	ctx := context.Background()
	q := uniqueQueue(t)
	if err := DeclareTopology(ctx, Dialer{URL: amqpURL()}, q, Topology{}); err != nil {
		t.Fatal(err)
	}
	defer deleteQueues(q)
	pw := func() string { u, _ := url.Parse(amqpURL()); p, _ := u.User.Password(); return p }()
	node := newSwitchNode(t) // down
	d := Dialer{URLs: []string{wrongPassword(t), node.url(t, pw)}}
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	// The refusing node first (the order is random otherwise), on a
	// connection the Source and the Publisher share.
	conn, err := NewConnection(d)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	conn.init()
	conn.addrs = slices.Clone(d.URLs)
	conn.log = log
	src, err := NewSource(Config{Conn: conn, Queue: q, Logger: log, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close(ctx) }()
	pub, err := NewPublisher(PublisherConfig{Conn: conn, Logger: log, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(ctx) }()

	// RabbitMQ answers a wrong password after about 3s.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = src.Receive(rctx)
	cancel()
	t.Logf("Receive while the live node is down = %v", err)
	if broker.IsFatal(err) {
		t.Fatalf("Receive while the live node is down = %v; want a transient error, not a fatal one", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = pub.Publish(pctx, "", &broker.Message{ID: "down", Key: []byte(q), Body: []byte("down")})
	cancel()
	if err == nil || broker.IsFatal(err) {
		t.Fatalf("Publish while the live node is down = %v; want a transient error", err)
	}
	if !strings.Contains(logs.String(), "refused") || strings.Contains(logs.String(), "wrong-s3cret") {
		t.Errorf("log does not name the refusing node (or shows its password):\n%s", logs.String())
	}

	node.up.Store(true)
	waitFor(t, 10*time.Second, "a publish through the live node", func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return pub.Publish(pctx, "", &broker.Message{ID: "up", Key: []byte(q), Body: []byte("up")}) == nil
	})
	rctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	del, err := src.Receive(rctx)
	if err != nil {
		t.Fatalf("Receive after the live node came back = %v; want the message", err)
	}
	if err := del.Ack(ctx); err != nil {
		t.Fatal(err)
	}

}

// TestNodeRefusalRule: a refusal that reconnecting cannot fix is fatal for
// a dial to several nodes only when every node refused so; a vhost that is
// down (a node still booting, 530 NOT_ALLOWED "… is down") is transient.
func TestNodeRefusalRule(t *testing.T) {
	refused := fmt.Errorf("rabbitmq: dial a: %w", &amqp.Error{Code: amqp.AccessRefused, Reason: "username or password not allowed"})
	gone := fmt.Errorf("rabbitmq: dial b: %w", errors.New("connect: connection refused"))
	booting := fmt.Errorf("rabbitmq: dial c: %w", &amqp.Error{Code: amqp.NotAllowed, Reason: "NOT_ALLOWED - access to vhost 'v' refused for user 'u': vhost 'v' is down"})
	noVhost := fmt.Errorf("rabbitmq: dial d: %w", &amqp.Error{Code: amqp.NotAllowed, Reason: "NOT_ALLOWED - vhost v not found"})
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"one node refused", refused, true},
		{"one node gone", gone, false},
		{"one node booting", booting, false},
		{"one node without the vhost", noVhost, true},
		{"refused and gone", dialErr([]error{refused, gone}), false},
		{"gone and refused", dialErr([]error{gone, refused}), false},
		{"refused and booting", dialErr([]error{refused, booting}), false},
		{"every node refused", dialErr([]error{refused, noVhost, refused}), true},
		{"wrapped", fmt.Errorf("rabbitmq: declare: %w", dialErr([]error{refused, gone})), false},
	} {
		if got := unfixable(tc.err, false); got != tc.want {
			t.Errorf("%s: unfixable(%v) = %v; want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// logBuffer is an io.Writer for a slog handler, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPublisherSharesItsDialsDuringAnOutage (review M2): with every node
// down, each of 50 concurrent Publishes dialled on its own, with no shared
// backoff (433 dials/s and 250 warnings in 10s in the review). Concurrent
// publishes share one dial and one backoff, and the warning is logged once
// per 10s for the publisher.
func TestPublisherSharesItsDialsDuringAnOutage(t *testing.T) {
	needBroker(t)
	node := newSwitchNode(t) // down: accepts and closes at once
	var dials atomic.Int64
	var logs logBuffer
	pub, err := NewPublisher(PublisherConfig{
		Dialer: Dialer{URL: node.url(t, "s3cret"), Dial: func(network, addr string) (net.Conn, error) {
			dials.Add(1)
			return net.Dial(network, addr)
		}},
		ReconnectMin: 100 * time.Millisecond, ReconnectMax: 400 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(context.Background()) }()
	const publishers = 50
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_ = pub.Publish(ctx, "", &broker.Message{ID: fmt.Sprint(i), Key: []byte("q"), Body: []byte("x")})
			}
		}()
	}
	wg.Wait()
	warnings := strings.Count(logs.String(), "publisher channel unavailable")
	t.Logf("%d publishers for 2s with the node down: %d dials, %d warnings", publishers, dials.Load(), warnings)
	// One dial per backoff step (at least 50ms, at most 400ms): about 10
	// in 2s; one each would be hundreds.
	if n := dials.Load(); n > 45 {
		t.Errorf("%d concurrent publishes for 2s made %d dials; want them to share one dial per backoff step (at most 45)", publishers, n)
	}
	if warnings > 1 {
		t.Errorf("%d warnings in 2s; want at most 1", warnings)
	}
}
