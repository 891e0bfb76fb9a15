package memory

import (
	"time"

	"github.com/queuekit/queuekit/broker"
)

// entry is one stored message. The broker owns it: publishers and consumers
// only ever see copies of msg, so neither can change what is redelivered.
// All fields are guarded by Broker.mu.
type entry struct {
	msg        broker.Message // Topic, ID and Time set; Attempt unused
	deliveries int            // how many times it was handed out
	timer      *time.Timer    // set while it waits out a RequeueAfter delay
}

// queue is a named queue. All fields are guarded by Broker.mu.
type queue struct {
	name  string
	ready deque
	seq   uint64 // last ID sequence number assigned by Publish

	// signal is closed (and set to nil) when something a blocked Receive
	// may be waiting for happens on this queue: a message became ready, a
	// delivery of one of its sources was settled (prefetch freed), or a
	// source was resumed, cancelled or closed. Receive creates it lazily,
	// so a queue nobody waits on costs no allocation per message.
	signal chan struct{}

	delayed map[*entry]struct{} // entries waiting out a RequeueAfter delay
	// dead is the record of this queue's dead letters, oldest first, when
	// the queue is a dead-letter queue (see Broker.recordDead): what
	// Broker.DeadLetters and DeadLetters.List show. Consuming the queue
	// does not change it; Redrive and Purge remove from it.
	// Removed records stay in it, marked, until compactDead.
	dead        []*deadRecord
	deadRemoved int        // records of dead that are removed
	deadSeq     uint64     // last dead-letter id number assigned
	stats       QueueStats // counters; Ready, Unacked, Delayed are derived in Stats
	unacked     int
	sources     int
}

// wake wakes every Receive blocked on q.
func (q *queue) wake() {
	if q.signal != nil {
		close(q.signal)
		q.signal = nil
	}
}

// wait returns the channel that the next wake closes.
func (q *queue) wait() <-chan struct{} {
	if q.signal == nil {
		q.signal = make(chan struct{})
	}
	return q.signal
}

// deque is a ring buffer of entries: Publish pushes at the back, Receive pops
// at the front, Requeue pushes at the front. It grows by doubling and never
// shrinks below what the queue once held, so steady traffic does not allocate.
// Its length is a power of two (16 doubled), so that an index wraps with a
// mask instead of a division.
type deque struct {
	buf  []*entry
	head int
	n    int
}

func (d *deque) len() int { return d.n }

// at returns the slot of buf at index i, wrapped.
func (d *deque) at(i int) *(*entry) { return &d.buf[i&(len(d.buf)-1)] }

func (d *deque) grow() {
	if d.n < len(d.buf) {
		return
	}
	nb := make([]*entry, max(16, 2*len(d.buf)))
	for i := 0; i < d.n; i++ {
		nb[i] = *d.at(d.head + i)
	}
	d.buf, d.head = nb, 0
}

func (d *deque) pushBack(e *entry) {
	d.grow()
	*d.at(d.head + d.n) = e
	d.n++
}

func (d *deque) pushFront(e *entry) {
	d.grow()
	d.head = (d.head - 1) & (len(d.buf) - 1)
	d.buf[d.head] = e
	d.n++
}

// removeSet removes the entries of set from the deque in one pass, keeping
// the order of the others, and deletes from set those it removed.
func (d *deque) removeSet(set map[*entry]bool) {
	if len(set) == 0 {
		return
	}
	kept := 0
	for i := 0; i < d.n; i++ {
		e := *d.at(d.head + i)
		if set[e] {
			delete(set, e)
			continue
		}
		*d.at(d.head + kept) = e
		kept++
	}
	for i := kept; i < d.n; i++ {
		*d.at(d.head + i) = nil
	}
	d.n = kept
}

func (d *deque) popFront() *entry {
	e := d.buf[d.head]
	d.buf[d.head] = nil
	d.head = (d.head + 1) & (len(d.buf) - 1)
	d.n--
	return e
}
