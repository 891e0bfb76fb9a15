package rabbitmq

import (
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
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
