package rabbitmq

// Regression tests from the review of the adapter (2026-11-23).

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
// check).
type gateConn struct {
	net.Conn
	dropAfterNotFound bool
	sawNotFound       atomic.Bool
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
	_ = src.Close()
}
