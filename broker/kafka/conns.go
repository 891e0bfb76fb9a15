package kafka

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// errConnsClosed is the dial error of a connection set after kill. It is
// neither temporary nor a transient network error in kafka-go's eyes, so
// that kafka-go's retry loops (the Writer's attempts, the group's rejoin)
// give up at once instead of backing off.
var errConnsClosed = errors.New("kafka: client closed")

// conns dials and tracks every connection of a Source or a Publisher, so
// that Close can end them when its context ends. kafka-go's group and
// Writer take no context for joining, leaving or flushing; they block on a
// connection's deadline (Timeout, up to Timeout + RebalanceTimeout for a
// join). Closing the connection under them is the one way to make them
// return at once: the blocked read fails, and a new dial fails too.
type conns struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu     sync.Mutex
	open   map[*trackedConn]struct{}
	killed bool
	// dead ends with kill: dials in progress give up.
	dead     context.Context
	endDials context.CancelFunc
}

// newConns returns a connection set that dials as d would.
func newConns(d *kafkago.Dialer) *conns {
	dial := d.DialFunc
	if dial == nil {
		nd := &net.Dialer{
			Timeout:       d.Timeout,
			LocalAddr:     d.LocalAddr,
			DualStack:     d.DualStack,
			FallbackDelay: d.FallbackDelay,
			KeepAlive:     d.KeepAlive,
		}
		if nd.Timeout == 0 {
			nd.Timeout = 10 * time.Second
		}
		dial = nd.DialContext
	}
	c := &conns{dial: dial, open: make(map[*trackedConn]struct{})}
	c.dead, c.endDials = context.WithCancel(context.Background())
	return c
}

// Dial dials addr and tracks the connection until it is closed. After kill
// it fails at once, and a dial in progress when kill is called fails too.
func (c *conns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.dead.Err() != nil {
		return nil, errConnsClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.dead, cancel)
	defer stop()
	nc, err := c.dial(ctx, network, addr)
	if err != nil {
		if c.dead.Err() != nil {
			return nil, errConnsClosed
		}
		return nil, err
	}
	tc := &trackedConn{Conn: nc, c: c}
	c.mu.Lock()
	if c.killed {
		c.mu.Unlock()
		nc.Close()
		return nil, errConnsClosed
	}
	c.open[tc] = struct{}{}
	c.mu.Unlock()
	return tc, nil
}

// kill closes every tracked connection and makes every later Dial fail.
func (c *conns) kill() {
	c.mu.Lock()
	if c.killed {
		c.mu.Unlock()
		return
	}
	c.killed = true
	c.endDials()
	open := c.open
	c.open = nil
	c.mu.Unlock()
	for tc := range open {
		tc.Conn.Close()
	}
}

// dialer returns a copy of d that dials through c.
func (c *conns) dialer(d *kafkago.Dialer) *kafkago.Dialer {
	cp := *d
	cp.DialFunc = c.Dial
	return &cp
}

// trackedConn removes itself from its set when closed.
type trackedConn struct {
	net.Conn
	c    *conns
	once sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.c.mu.Lock()
		delete(t.c.open, t)
		t.c.mu.Unlock()
	})
	return t.Conn.Close()
}
