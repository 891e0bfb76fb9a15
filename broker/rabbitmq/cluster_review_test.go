package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
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

// TestClusterPassiveSourceSurvivesItsQueueNodeStopping (review H4): a
// classic queue on node 1, a Passive source connected to the other nodes,
// and node 1 stopped (stop_app) for a while. The passive check answered 404
// "process is stopped by supervisor" (or "is down or inaccessible"), which
// is fatal under Passive for a queue that does not exist: the source gave
// up for good. It must retry, and deliver once the node is back.
func TestClusterPassiveSourceSurvivesItsQueueNodeStopping(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	q := fmt.Sprintf("qk-review-h4-%06d", rand.IntN(1000000))
	topo := Topology{} // classic
	// Declared through the first node: the classic queues are local to it.
	if err := DeclareTopology(ctx, Dialer{URL: c.urls[0]}, q, topo); err != nil {
		t.Fatal(err)
	}
	others := Dialer{URLs: c.urls[1:]}
	topo.Passive = true
	src, err := NewSource(Config{Dialer: others, Queue: q, Topology: topo, Logger: clusterLogger(),
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close(ctx) }()
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, _ = src.Receive(rctx) // subscribes
	cancel()
	if err := src.Status().Err; err != nil {
		t.Fatalf("source not subscribed: %v", err)
	}
	c.stopApp(t, c.nodes[0])
	waitFor(t, 20*time.Second, "the source to see its queue's node go", func() bool { return src.Status().Err != nil })
	time.Sleep(time.Second) // a few passive checks while the node is down
	t.Logf("while node %d is stopped: %v", c.nodes[0], src.Status().Err)
	c.restore(t, c.nodes[0])
	pub, err := NewPublisher(PublisherConfig{Dialer: others, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(ctx) }()
	waitFor(t, 20*time.Second, "a publish to the queue once its node is back", func() bool {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return pub.Publish(pctx, "", &broker.Message{ID: "m", Key: []byte(q), Body: []byte("m")}) == nil
	})
	rctx, cancel = context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	d, err := src.Receive(rctx)
	if err != nil {
		t.Fatalf("Receive from a passive source after its queue's node came back = %v (status %+v); want the message", err, src.Status())
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
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
		t.Run(tc.name, func(t *testing.T) {
			for _, try := range []func() error{
				func() error { _, err := NewConnection(tc.d); return err },
				func() error { _, err := NewPublisher(PublisherConfig{Dialer: tc.d}); return err },
				func() error { _, err := NewSource(Config{Dialer: tc.d, Queue: "q"}); return err },
			} {
				err := try()
				if !errors.Is(err, broker.ErrInvalidConfig) {
					t.Fatalf("error = %v; want one wrapping broker.ErrInvalidConfig", err)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not say %q", err, tc.want)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error %q shows the password", err)
				}
			}
		})
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
