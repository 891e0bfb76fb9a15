package kafka

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/produce"
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

// layoutDropper makes a kafka-go Transport read the cluster's layout (the
// partitions' leaders, the brokers' addresses) before its next request.
// kafka-go's Transport refreshes its cached layout only every MetadataTTL
// (at a random point within it) and never on a NOT_LEADER answer, so a
// client would ask the old leader of a moved partition again and again
// until then. Dropping the transport's connection pool is the one way to
// get a fresh layout at once: the next request opens a new pool, whose
// first step is a Metadata request. Requests in flight finish on the old
// pool, which closes when the last of them returns.
//
// When several requests fail because of one move, the first drop is
// enough: drop does nothing for a request sent before the last drop.
type layoutDropper struct {
	t *kafkago.Transport

	mu      sync.Mutex
	dropped time.Time // the last drop
}

// drop drops the transport's pool after a request sent at sent failed with
// a staleLeader error, unless it was dropped since.
func (d *layoutDropper) drop(sent time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dropped.After(sent) {
		return
	}
	d.dropped = time.Now()
	d.t.CloseIdleConnections()
}

// staleLeader reports whether a request failed in a way that reading the
// cluster's layout again can fix: the broker it reached no longer leads
// the partition (the leader moved), the leader is being elected, the
// broker is not in the layout any more, or the connection to it failed
// (the broker went away).
func staleLeader(err error) bool {
	var ke kafkago.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafkago.NotLeaderForPartition, kafkago.LeaderNotAvailable, kafkago.BrokerNotAvailable,
			kafkago.ReplicaNotAvailable, kafkago.FencedLeaderEpoch, kafkago.UnknownLeaderEpoch:
			return true
		}
		return false
	}
	return true // not a Kafka error code: a network error or a timeout
}

// leaderFollower is the RoundTripper of a Publisher's kafka-go Writer: a
// produce request that failed because the partition's leader moved or its
// broker went away drops the transport's cached layout (layoutDropper), so
// that the Writer's next attempt, after its backoff, goes to the new
// leader. Without it every attempt within the transport's MetadataTTL (6 s
// by default) went to the old leader and the publish failed.
type leaderFollower struct {
	d layoutDropper
}

func (f *leaderFollower) RoundTrip(ctx context.Context, addr net.Addr, req kafkago.Request) (kafkago.Response, error) {
	sent := time.Now()
	resp, err := f.d.t.RoundTrip(ctx, addr, req)
	if err != nil {
		if ctx.Err() == nil && staleLeader(err) {
			f.d.drop(sent)
		}
		return resp, err
	}
	if pr, ok := resp.(*produce.Response); ok {
		for _, rt := range pr.Topics {
			for _, rp := range rt.Partitions {
				if rp.ErrorCode != 0 && staleLeader(kafkago.Error(rp.ErrorCode)) {
					f.d.drop(sent)
					return resp, err
				}
			}
		}
	}
	return resp, err
}
