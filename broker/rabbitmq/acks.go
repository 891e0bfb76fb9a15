package rabbitmq

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// An acker coalesces the acks of one channel: instead of a basic.ack per
// delivery it sends one basic.ack with multiple=true for the longest prefix
// of the channel's delivery tags whose deliveries are all settled, acks
// waiting among them. Every subscription on the channel (one per Resume)
// shares it, since delivery tags count per channel, and it dies with the
// channel: a later channel gets an acker of its own, so nothing is ever acked
// across channels.
//
// RabbitMQ acks, on basic.ack multiple=true with tag u, every delivery of the
// channel still unacknowledged with a tag <= u, and closes the channel
// (PRECONDITION_FAILED "unknown delivery tag") when u itself is not
// unacknowledged. So the acker keeps two invariants:
//
//   - A multiple ack covers only tags whose deliveries were acked by their
//     handlers or already settled on the wire: the prefix stops at the first
//     tag still being handled, still being nacked, or not seen yet (a
//     delivery another worker took from the client but has not registered).
//     Tags are handed out consecutively from 1 on a channel, so a tag is
//     known to be seen only when every smaller one was (high).
//   - Every write (multiple acks, single acks, nacks) is decided and sent
//     under wmu, in order, so an ack never reaches the broker after a
//     multiple ack that covered its tag, and u is always a tag whose ack is
//     in the write.
//
// A nack is always sent with multiple=false (a multiple nack would reject
// the acked deliveries below it), after the prefix has been acked; its tag
// counts as settled only once the nack was written, so no multiple ack can
// overtake it.
//
// Acks above a gap (a slow or stuck handler holds the tag the prefix stops
// at) wait at most one tick, or until batch of them are waiting, and then go
// out one by one as they would without coalescing: a handler that never
// finishes holds its own prefetch slot, not those of the deliveries after
// it. (They waited ten ticks, or 2*batch acks, before review R2: with the
// prefetch equal to the concurrency those held slots idled workers.)
//
// Nor does a waiting ack hold the credit a worker waits for (issue 15): a
// Receive that finds nothing buffered counts itself idle (wait), and when
// the live entries (deliveries taken and not settled on the wire) plus the
// idle Receives use up the prefetch, every waiting ack goes out at once
// (starving). ack checks the same, for an ack made while Receives wait or
// every slot is held.
//
// Flushes that meet a write in progress do not wait for it (a worker must
// not queue behind another's socket write): they set kick, and whoever
// holds wmu serves it after releasing wmu (unlockW). Since the kick is set
// before the TryLock that failed, and the holder reads it after its
// Unlock, no kick is left unserved (acks wait at most one delay for a
// tick otherwise).
type acker struct {
	ch       ackWriter
	link     link
	batch    int           // flush the prefix once it holds this many acks
	delay    time.Duration // flush waiting acks at least this often
	prefetch int           // the channel's basic.qos prefetch count

	// idle counts the Receives of the channel's subscriptions waiting
	// for a delivery with nothing buffered (see starving).
	idle atomic.Int32

	// wmu serialises the writes (see above). Ack takes it with TryLock: a
	// worker never waits for another's write; what it leaves behind goes
	// with the next flush or tick.
	wmu sync.Mutex

	mu      sync.Mutex
	closed  bool       // the channel is being closed: acks are refused (stale)
	broken  bool       // tags came out of order beyond repair: no more multiple acks
	high    uint64     // every tag <= high has been registered
	early   []tagRange // registered tags > high+1
	ents    []ackEnt   // registered tags not yet settled on the wire, by tag; live from head
	head    int
	pre     int // ents[head:head+pre] wait to be acked and are <= high: the prefix
	waiting int // entries waiting to be acked, in the prefix or beyond it
	armed   bool
	timer   *time.Timer
	// kick asks the next holder of wmu for a flush: of the prefix, and of
	// the acks beyond it too when kickAll (a worker starves) or when
	// batch of them wait. Whoever sets it tries wmu after; whoever
	// releases wmu looks at it after (see unlockW), so a kick is never
	// left behind by a write in progress.
	kick, kickAll bool
	stats         *ackStats // the source's counters, or nil
	// The entry the prefix stopped at on the last ticks, and how many
	// ticks in a row it did.
	stopTag   uint64
	stopTicks int
}

// ackWriter is the part of *amqp.Channel an acker writes to.
type ackWriter interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

// ackStats counts what the ackers of a source wrote, for tests and
// benchmarks.
type ackStats struct {
	acked     atomic.Int64 // deliveries acked by the acker
	multiples atomic.Int64 // basic.ack frames with multiple=true
	singles   atomic.Int64 // basic.ack frames with multiple=false
}

type ackEnt struct {
	tag     uint64
	waiting bool // acked by its handler, not yet written
}

const (
	// gapTicks is how many ticks in a row acks may wait behind the same
	// unsettled delivery before they are sent one by one: one, as every
	// waiting ack holds a prefetch slot (review R2).
	gapTicks = 1
	// maxEarly bounds the runs of tags registered ahead of missing ones
	// (see addTag).
	maxEarly = 1024
	// ackWriteTimeout bounds a flush that no settlement's context bounds
	// (a tick, Pause, the channel's end): past it the connection's socket
	// is closed, and the broker redelivers what was unacknowledged.
	ackWriteTimeout = 5 * time.Second
)

// errNotPending is what ack returns for a tag it does not know as
// outstanding.
var errNotPending = fmt.Errorf("rabbitmq: delivery tag not outstanding on its channel: %w", broker.ErrAlreadySettled)

func newAcker(ch ackWriter, l link, batch int, delay time.Duration, prefetch int, stats *ackStats) *acker {
	return &acker{ch: ch, link: l, batch: batch, delay: delay, prefetch: prefetch, stats: stats}
}

// register records that tag was taken from the client's deliveries.
func (a *acker) register(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.broken:
	case tag == a.high+1:
		a.high++
		if len(a.early) > 0 && a.early[0].lo == a.high+1 {
			a.high = a.early[0].hi
			a.early = slices.Delete(a.early, 0, 1)
		}
	case tag > a.high+1:
		a.early = addTag(a.early, tag)
		if len(a.early) > maxEarly {
			// As many tags missing at once is no race between Receive
			// calls: stop trusting the order, and ack one by one.
			a.broken, a.early = true, nil
		}
	}
	n := len(a.ents)
	if n == a.head || a.ents[n-1].tag < tag {
		a.ents = append(a.ents, ackEnt{tag: tag})
		return
	}
	i, found := slices.BinarySearchFunc(a.ents[a.head:], tag, cmpEnt)
	if !found {
		a.ents = slices.Insert(a.ents, a.head+i, ackEnt{tag: tag})
	}
}

// A tagRange is the tags lo..hi.
type tagRange struct{ lo, hi uint64 }

// addTag adds t to rs, sorted ranges that neither overlap nor touch, and
// returns rs. A worker preempted between taking a delivery and registering
// it leaves one tag missing while the others go on: the tags above it are
// one range, whatever its length.
func addTag(rs []tagRange, t uint64) []tagRange {
	i, _ := slices.BinarySearchFunc(rs, t, func(r tagRange, t uint64) int {
		if r.hi+1 < t {
			return -1
		}
		return 1
	}) // the first range that ends at t-1 or later
	switch {
	case i < len(rs) && rs[i].lo <= t && t <= rs[i].hi:
		// registered already
	case i < len(rs) && rs[i].hi+1 == t:
		rs[i].hi = t
		if i+1 < len(rs) && rs[i+1].lo == t+1 {
			rs[i].hi = rs[i+1].hi
			rs = slices.Delete(rs, i+1, i+2)
		}
	case i < len(rs) && rs[i].lo == t+1:
		rs[i].lo = t
	default:
		rs = slices.Insert(rs, i, tagRange{t, t})
	}
	return rs
}

func cmpEnt(e ackEnt, tag uint64) int {
	switch {
	case e.tag < tag:
		return -1
	case e.tag > tag:
		return 1
	}
	return 0
}

// find returns the index in ents of tag, or -1.
func (a *acker) find(tag uint64) int {
	i, found := slices.BinarySearchFunc(a.ents[a.head:], tag, cmpEnt)
	if !found {
		return -1
	}
	return a.head + i
}

// extend grows the prefix over the waiting acks that follow it.
func (a *acker) extend() {
	for k := a.head + a.pre; k < len(a.ents) && a.ents[k].waiting && a.ents[k].tag <= a.high; k++ {
		a.pre++
	}
}

// ack records that tag's handler acked it. It reports whether the caller
// should flush now (the prefix, or the acks waiting beyond it, reached
// batch, or a worker starves: see starving), having set the kick the flush
// serves, and amqp.ErrClosed when the channel is being closed.
func (a *acker) ack(tag uint64) (flush bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false, amqp.ErrClosed
	}
	i := a.find(tag)
	if i < 0 || a.ents[i].waiting {
		// Never registered, or settled already: the delivery's own
		// guard (begin) rules both out. Acking it now could close the
		// channel (an unknown tag); left alone, it is redelivered.
		return false, errNotPending
	}
	a.ents[i].waiting = true
	a.waiting++
	a.extend()
	if !a.armed {
		a.arm()
	}
	switch {
	case a.starving():
		a.kick, a.kickAll = true, true
	case a.broken || a.pre >= a.batch || a.waiting-a.pre >= a.batch:
		a.kick = true
	default:
		return false, nil
	}
	return true, nil
}

// starving reports whether the acks waiting hold prefetch credit that a
// worker waits for, or soon will: the deliveries the channel's workers
// hold (being handled, or acked and waiting: every registered entry not
// settled on the wire) plus the Receives that found nothing buffered
// (idle) use up the prefetch, so the broker can send no delivery ahead
// for the next worker that gets free, or not one to each idle Receive,
// before it gets an ack. With the prefetch equal to the concurrency that
// is the case whenever an ack waits and every worker is busy or idle;
// with the prefetch well above it, it is not, and acks go in batches.
// (Flushing on every idle Receive instead would, with a fast handler,
// send a small batch each time the client outran the broker, which does
// not need the credit then.) The caller holds mu.
func (a *acker) starving() bool {
	return a.waiting > 0 && len(a.ents)-a.head+int(a.idle.Load()) >= a.prefetch
}

// wait is called by a Receive that found nothing buffered, before it
// blocks; it calls unidle when it stops waiting. If the waiting acks hold
// the credit it waits for (starving), wait sends them all: the prefix with
// a multiple ack, the rest one by one, as per-message acks would have.
// The write is bounded by ackWriteTimeout.
func (a *acker) wait() {
	a.idle.Add(1)
	a.mu.Lock()
	starving := !a.closed && a.starving()
	if starving {
		a.kick, a.kickAll = true, true
	}
	a.mu.Unlock()
	if starving {
		_ = a.serveKicks(true)
	}
}

func (a *acker) unidle() { a.idle.Add(-1) }

// arm starts the timer. The caller holds mu.
func (a *acker) arm() {
	a.armed = true
	if a.timer == nil {
		a.timer = time.AfterFunc(a.delay, a.tick)
		return
	}
	a.timer.Reset(a.delay)
}

// takePrefix removes the prefix and returns the tag a multiple ack of it
// names (0 when there is none) and how many acks it holds. The caller holds
// wmu and mu, and writes it.
func (a *acker) takePrefix() (u uint64, n int) {
	if a.pre == 0 {
		return 0, 0
	}
	u, n = a.ents[a.head+a.pre-1].tag, a.pre
	a.head += a.pre
	a.waiting -= a.pre
	a.pre = 0
	a.compact()
	return u, n
}

// batchOut is what one flush writes: a multiple ack up to tag u (of n
// acks), when u > 0, and single acks of tags.
type batchOut struct {
	u    uint64
	n    int
	tags []uint64
}

// takeBeyond removes the waiting acks beyond the prefix and returns their
// tags, to be acked one by one. The caller holds wmu and mu, has taken the
// prefix, and writes them.
func (a *acker) takeBeyond() []uint64 {
	if a.waiting == 0 {
		return nil
	}
	tags := make([]uint64, 0, a.waiting)
	live := a.ents[:a.head]
	for _, e := range a.ents[a.head:] {
		if e.waiting {
			tags = append(tags, e.tag)
		} else {
			live = append(live, e)
		}
	}
	clear(a.ents[len(live):])
	a.ents = live
	a.waiting = 0
	a.compact()
	return tags
}

// compact keeps ents from growing with the channel's lifetime.
func (a *acker) compact() {
	switch {
	case a.head == len(a.ents):
		a.ents, a.head = a.ents[:0], 0
	case a.head > 64 && a.head > len(a.ents)/2:
		n := copy(a.ents, a.ents[a.head:])
		a.ents, a.head = a.ents[:n], 0
	}
}

// remove forgets tag once its nack was written, and lets the prefix grow
// past it. The caller holds mu.
func (a *acker) remove(tag uint64) {
	if i := a.find(tag); i >= 0 {
		a.ents = slices.Delete(a.ents, i, i+1)
		a.compact()
		a.extend()
	}
}

// send writes b. The caller holds wmu. A prefix of one ack goes as a
// single ack: it acks the same delivery, and the broker need not look for
// others (with the prefetch equal to the concurrency, most flushes are of
// one ack).
func (a *acker) send(b batchOut) error {
	if b.u > 0 {
		if err := a.ch.Ack(b.u, b.n > 1); err != nil {
			return err
		}
		if a.stats != nil {
			if b.n > 1 {
				a.stats.multiples.Add(1)
			} else {
				a.stats.singles.Add(1)
			}
			a.stats.acked.Add(int64(b.n))
		}
	}
	for _, t := range b.tags {
		if err := a.ch.Ack(t, false); err != nil {
			return err
		}
	}
	if a.stats != nil && len(b.tags) > 0 {
		a.stats.singles.Add(int64(len(b.tags)))
		a.stats.acked.Add(int64(len(b.tags)))
	}
	return nil
}

// flush is what an Ack that set a kick does (see ack): it writes the
// prefix, and the acks beyond it when batch of them wait (holding that
// many prefetch slots: at most a quarter of them) or a worker starves.
// It is bounded by the caller (delivery.write). When another write is in
// progress it does nothing: that writer serves the kick when it is done.
func (a *acker) flush() error { return a.serveKicks(false) }

// serveKicks writes what the kicks ask for, as long as some are set and
// wmu is free (see unlockW). bounded bounds each write by
// ackWriteTimeout, for callers no context bounds. It returns the first
// write error: the channel is gone, and the broker redelivers what was
// not acked.
func (a *acker) serveKicks(bounded bool) error {
	var first error
	for {
		a.mu.Lock()
		k := a.kick && !a.closed
		a.mu.Unlock()
		if !k || !a.wmu.TryLock() {
			// Nothing asked, or wmu is held: its holder looks at the
			// kick after it releases wmu, which is after now.
			return first
		}
		a.mu.Lock()
		var b batchOut
		if a.kick && !a.closed {
			b.u, b.n = a.takePrefix()
			if a.kickAll || a.broken || a.waiting >= a.batch {
				b.tags = a.takeBeyond()
			}
		}
		a.kick, a.kickAll = false, false
		a.mu.Unlock()
		var err error
		if b.u > 0 || len(b.tags) > 0 {
			if bounded {
				err = boundedWrite(a.link, ackWriteTimeout, func() error { return a.send(b) })
			} else {
				err = a.send(b)
			}
		}
		a.wmu.Unlock()
		if first == nil {
			first = err
		}
	}
}

// unlockW releases wmu and then serves the kicks set meanwhile: a kick set
// while wmu was held found it held and left its flush to this holder.
// Every holder of wmu releases it with unlockW; the caller holds no lock
// of the acker.
func (a *acker) unlockW() {
	a.wmu.Unlock()
	_ = a.serveKicks(true)
}

// tick runs on the timer's goroutine, every delay while acks wait: it
// writes the prefix, and the acks beyond it when the prefix has been stuck
// at the same delivery for gapTicks ticks (one: at every tick).
func (a *acker) tick() {
	a.wmu.Lock()
	defer a.unlockW()
	a.mu.Lock()
	if a.closed {
		a.armed = false
		a.mu.Unlock()
		return
	}
	var b batchOut
	b.u, b.n = a.takePrefix()
	if a.waiting > 0 {
		if stop := a.ents[a.head].tag; stop == a.stopTag {
			a.stopTicks++
		} else {
			a.stopTag, a.stopTicks = stop, 1
		}
		if a.stopTicks >= gapTicks || a.broken {
			b.tags = a.takeBeyond()
			a.stopTicks = 0
		}
	}
	a.armed = false
	if a.waiting > 0 {
		a.arm()
	}
	a.mu.Unlock()
	if b.u == 0 && len(b.tags) == 0 {
		return
	}
	_ = boundedWrite(a.link, ackWriteTimeout, func() error { return a.send(b) })
	// An error means the channel or connection is gone: the broker
	// redelivers what was unacknowledged, and the session loop reconnects.
}

// flushAll writes every waiting ack: the prefix with a multiple ack, the
// rest one by one. Pause calls it (close=false), and the session loop when
// the channel ends (close=true: later acks are refused as stale). Its write
// is bounded by ackWriteTimeout.
func (a *acker) flushAll(close bool) error {
	a.wmu.Lock()
	defer a.unlockW()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return amqp.ErrClosed
	}
	a.closed = close
	if close && a.timer != nil {
		a.timer.Stop()
	}
	var b batchOut
	b.u, b.n = a.takePrefix()
	b.tags = a.takeBeyond()
	a.mu.Unlock()
	if b.u == 0 && len(b.tags) == 0 {
		return nil
	}
	return boundedWrite(a.link, ackWriteTimeout, func() error { return a.send(b) })
}

// nack writes basic.nack with requeue (multiple=false) for tag, a
// registered delivery no ack waits for, after the prefix has been acked.
// The caller bounds it (delivery.write).
func (a *acker) nack(tag uint64) error {
	a.wmu.Lock()
	defer a.unlockW()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return amqp.ErrClosed
	}
	var b batchOut
	b.u, b.n = a.takePrefix()
	a.mu.Unlock()
	if err := a.send(b); err != nil {
		return err
	}
	if err := a.ch.Nack(tag, false, true); err != nil {
		return err
	}
	a.mu.Lock()
	a.remove(tag)
	a.mu.Unlock()
	return nil
}

// boundedWrite runs the write f; if it has not returned after d, it closes
// the connection's socket, which makes it fail (see delivery.write).
func boundedWrite(l link, d time.Duration, f func() error) error {
	t := time.AfterFunc(d, l.drop)
	defer t.Stop()
	return f()
}
