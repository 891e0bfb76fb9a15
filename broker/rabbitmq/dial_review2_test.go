package rabbitmq

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// review2Node is a node that forwards to the broker and, per mode, breaks
// the handshake: "stall" passes connection.start only and then never
// answers, "hole" accepts and never answers at all.
type review2Node struct {
	ln      net.Listener
	mode    string
	backend string
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
	opened  chan struct{} // a connection was accepted
}

func newReview2Node(t *testing.T, mode string) *review2Node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &review2Node{ln: ln, mode: mode, backend: hostPort(), opened: make(chan struct{}, 100)}
	n.wg.Add(1)
	go n.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		n.mu.Lock()
		for _, c := range n.conns {
			_ = c.Close()
		}
		n.mu.Unlock()
		n.wg.Wait()
	})
	return n
}

func (n *review2Node) keep(c net.Conn) {
	n.mu.Lock()
	n.conns = append(n.conns, c)
	n.mu.Unlock()
}

func (n *review2Node) accept() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		n.keep(c)
		n.opened <- struct{}{}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.serve(c)
		}()
	}
}

func (n *review2Node) serve(c net.Conn) {
	if n.mode == "hole" {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	b, err := net.Dial("tcp", n.backend)
	if err != nil {
		_ = c.Close()
		return
	}
	n.keep(b)
	defer b.Close()
	n.wg.Add(1)
	go func() { defer n.wg.Done(); _, _ = io.Copy(b, c) }()
	// connection.start: a 7-byte header, its payload and the end byte.
	h := make([]byte, 7)
	if _, err := io.ReadFull(b, h); err != nil {
		_ = c.Close()
		return
	}
	body := make([]byte, int(h[3])<<24|int(h[4])<<16|int(h[5])<<8|int(h[6])+1)
	if _, err := io.ReadFull(b, body); err != nil {
		_ = c.Close()
		return
	}
	_, _ = c.Write(append(h, body...))
	_, _ = io.Copy(io.Discard, b) // stall
}

// nodeURL is the tests' URL pointing at addr, with query q.
func nodeURL(addr, q string) string {
	u, _ := url.Parse(amqpURL())
	u.Host = addr
	u.RawQuery = q
	return u.String()
}

// A node that stalls after start-ok (the credentials were sent) is not
// refusing the user: amqp091 reports the handshake deadline as
// ErrCredentials, which made every Source and Publisher on such nodes give
// up for good. A real wrong password on every node still does. (A node that
// drops the connection there cannot be told from RabbitMQ refusing the
// user, which resets it: see Dialer.dial.)
func TestDialReview2LostHandshakeIsTransient(t *testing.T) {
	needBroker(t)
	for _, tc := range []struct {
		mode   string
		custom bool
	}{{"stall", false}, {"stall", true}} {
		var urls []string
		for range 2 {
			urls = append(urls, nodeURL(newReview2Node(t, tc.mode).ln.Addr().String(), "connection_timeout=300"))
		}
		d := Dialer{URLs: urls}
		if tc.custom {
			d.Dial = func(network, addr string) (net.Conn, error) { return net.Dial(network, addr) }
		}
		c := newConnection(d)
		c.log = quietLogger()
		_, err := c.get()
		if err == nil {
			t.Fatalf("%s custom=%v: dial succeeded", tc.mode, tc.custom)
		}
		if unfixable(err, false) || errors.Is(err, amqp.ErrCredentials) {
			t.Errorf("%s custom=%v: a handshake lost after start-ok is taken for a refusal: %v", tc.mode, tc.custom, err)
		}
		_ = c.Close(context.Background())
	}

	u, _ := url.Parse(amqpURL())
	u.User = url.UserPassword(userOf(amqpURL()), "not-the-password")
	a, b := *u, *u
	b.Host = strings.Replace(b.Host, "127.0.0.1", "localhost", 1)
	if b.Host == a.Host {
		t.Skip("cannot name the broker twice")
	}
	c := newConnection(Dialer{URLs: []string{a.String(), b.String()}})
	c.log = quietLogger()
	_, err := c.get()
	if !unfixable(err, false) {
		t.Errorf("a wrong password on every node is not unfixable: %v", err)
	}
	_ = c.Close(context.Background())
}

// A 530 "connection limit (N) is reached" ends as other clients disconnect:
// it is not a refusal of the user.
func TestDialReview2ConnectionLimitIsTransient(t *testing.T) {
	for _, reason := range []string{
		"access to vhost 'v' refused for user 'guest': connection limit (1) is reached",
		"Connection refused for user 'guest'. User connection limit (1) is reached",
		"vhost v is down",
	} {
		if unfixable(&amqp.Error{Code: amqp.NotAllowed, Reason: reason, Server: true}, false) {
			t.Errorf("530 %q is unfixable", reason)
		}
	}
	if !unfixable(&amqp.Error{Code: amqp.NotAllowed, Reason: "access to vhost 'v' refused for user 'u'", Server: true}, false) {
		t.Error("530 access refused to the vhost is not unfixable")
	}

	needBroker(t)
	needCtl(t)
	vh := vhostOf(amqpURL())
	if out, err := rabbitmqctl("set_vhost_limits", "-p", vh, `{"max-connections": 1}`); err != nil {
		t.Skipf("set_vhost_limits: %v %s", err, out)
	}
	defer func() { _, _ = rabbitmqctl("clear_vhost_limits", "-p", vh) }()
	var hog *amqp.Connection
	waitFor(t, 5*time.Second, "the vhost limit to apply", func() bool {
		var err error
		if hog == nil {
			if hog, err = amqp.Dial(amqpURL()); err != nil {
				return false
			}
		}
		c, err := amqp.Dial(amqpURL())
		if err == nil {
			_ = c.Close()
			return false
		}
		return true
	})
	defer hog.Close()
	c := newConnection(Dialer{URL: amqpURL()})
	_, err := c.get()
	if err == nil || unfixable(err, false) {
		t.Errorf("a dial refused for the vhost's connection limit: err=%v, unfixable=%v", err, unfixable(err, false))
	}
	_ = c.Close(context.Background())
}

// Close(ctx) of a Publisher whose dial is in its handshake with hung nodes
// ends the dial instead of waiting for its handshake timeout on each node.
func TestDialReview2CloseEndsAHandshake(t *testing.T) {
	needBroker(t)
	for _, custom := range []bool{false, true} {
		var nodes []*review2Node
		var urls []string
		for range 3 {
			n := newReview2Node(t, "hole")
			nodes = append(nodes, n)
			urls = append(urls, nodeURL(n.ln.Addr().String(), "connection_timeout=20000"))
		}
		d := Dialer{URLs: urls}
		if custom {
			d.Dial = func(network, addr string) (net.Conn, error) { return net.Dial(network, addr) }
		}
		p, err := NewPublisher(PublisherConfig{Dialer: d, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		pubCtx, cancelPub := context.WithCancel(context.Background())
		pubDone := make(chan error, 1)
		go func() { pubDone <- p.Publish(pubCtx, "", &broker.Message{Key: []byte("q"), Body: []byte("x")}) }()
		select { // a dial is in its handshake
		case <-nodes[0].opened:
		case <-nodes[1].opened:
		case <-nodes[2].opened:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = p.Close(ctx)
		cancel()
		if err != nil {
			t.Errorf("custom=%v: Close during a handshake: %v", custom, err)
		}
		cancelPub()
		<-pubDone
	}
}

// Ports above 65535 and negative connection timeouts cannot be dialled.
func TestDialReview2ValidatesPortAndTimeout(t *testing.T) {
	for _, raw := range []string{
		"amqp://guest:guest@localhost:70000/",
		"amqp://guest:guest@localhost:5672/?connection_timeout=-5",
	} {
		if _, err := NewConnection(Dialer{URL: raw}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", raw, err)
		}
	}
}
