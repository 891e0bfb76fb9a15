package main

import (
	"container/list"
	"net"
	"net/http"
	"sync"
	"time"
)

// limitListener accepts at most cap(sem) connections open at once. Past
// the cap, the next connection waits, accepted but not served, until one
// closes, and the others wait in the kernel's accept queue, where they cost
// no goroutine, buffer or file descriptor of the process, and are refused
// once that queue is full. (golang.org/x/net/netutil.LimitListener does
// much the same; this one keeps the module's dependencies as they are.)
//
// A waiting connection makes room by having reclaim close an idle
// keep-alive connection, oldest first (issue 9, hostile review: with the
// cap counting idle connections, -max-conns clients that kept theirs open
// and sent nothing locked everyone out, probes included, for the idle
// timeout).
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{} // closed by Close: a waiting Accept returns
	closeOnce sync.Once
	// reclaim, when set, closes an idle connection and reports whether
	// it closed one.
	reclaim func() bool
}

// reclaimPoll is how often a connection waiting for a slot looks for an
// idle connection to close again: connections become idle after each
// answer, and nothing tells the listener.
const reclaimPoll = 20 * time.Millisecond

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

// Accept waits for a connection, then for a free slot: the slot is taken
// only for a connection that is there, so that idle connections are closed
// only when a client is waiting.
func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := l.acquire(); err != nil {
		c.Close()
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

// acquire takes a slot, closing idle connections to free one.
func (l *limitListener) acquire() error {
	var tick <-chan time.Time
	for {
		select {
		case l.sem <- struct{}{}:
			return nil
		case <-l.done:
			return net.ErrClosed
		default:
		}
		// A closed limitConn gives its slot back within Close.
		if l.reclaim != nil && l.reclaim() {
			continue
		}
		if tick == nil {
			t := time.NewTicker(reclaimPoll)
			defer t.Stop()
			tick = t.C
		}
		select {
		case l.sem <- struct{}{}:
			return nil
		case <-l.done:
			return net.ErrClosed
		case <-tick:
		}
	}
}

// Close closes the listener and wakes an Accept waiting for a slot.
func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// idleConns tracks the idle keep-alive connections of an http.Server, fed
// by its ConnState hook, oldest idle first.
type idleConns struct {
	mu    sync.Mutex
	order list.List // of net.Conn
	elems map[net.Conn]*list.Element
}

// track records c's new state.
func (t *idleConns) track(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.elems[c]; ok {
		t.order.Remove(e)
		delete(t.elems, c)
	}
	if st == http.StateIdle {
		if t.elems == nil {
			t.elems = make(map[net.Conn]*list.Element)
		}
		t.elems[c] = t.order.PushBack(c)
	}
}

// closeOldest closes the connection idle the longest and reports whether
// there was one. A request may arrive on it at that very moment, and its
// client then sees the connection closed, as with the server's idle
// timeout: Go's and most HTTP clients retry an idempotent request on
// another connection.
func (t *idleConns) closeOldest() bool {
	t.mu.Lock()
	e := t.order.Front()
	if e == nil {
		t.mu.Unlock()
		return false
	}
	c := t.order.Remove(e).(net.Conn)
	delete(t.elems, c)
	t.mu.Unlock()
	_ = c.Close()
	return true
}
