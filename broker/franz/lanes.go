package franz

// Lanes: the poll goroutine takes records from kgo and queues them on
// their lanes; Receive hands out the head of each free lane from s.ready.
//
// Cost per record is what the throughput of the Source is made of, so the
// records of a poll are allocated in one block per partition (each with
// its first delivery inside), their IDs in one string, and queued under
// one lock per chunk; lanes and the ready queue are intrusive lists (record.next),
// so queueing allocates nothing.

import (
	"context"
	"errors"
	"hash/maphash"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
)

// record is one polled record on its way through the Source.
type record struct {
	r  *kgo.Record
	id string // topic/partition/offset
	// Under s.mu:
	p       *partState
	ln      *lane
	next    *record // the next record on the list it is on (s.ready or its lane)
	key     uint64  // the lane key under ByKey
	attempt int
	out     bool     // first was handed out: a new hand-out gets a new delivery
	first   delivery // the first hand-out, allocated with the record
}

// lane is an ordered lane of a partition: all of it (ByPartition) or one
// key (ByKey). While busy, one record of the lane is on s.ready or out, and
// the records behind it wait on the lane's list. Under s.mu.
type lane struct {
	key        uint64
	busy       bool
	head, tail *record
	// extra counts the records of the lane out beyond the one a busy lane
	// has: those of a batch (batch.go).
	extra int
	// run counts the records of the lane made ready at the front of
	// s.ready in a row (freeLaneLocked).
	run int
}

// affinityRun bounds how many records of a lane in a row freeLaneLocked
// puts at the front of s.ready, so that the other lanes are not starved.
const affinityRun = 64

func (l *lane) push(r *record) {
	r.next = nil
	if l.tail == nil {
		l.head, l.tail = r, r
		return
	}
	l.tail.next = r
	l.tail = r
}

func (l *lane) pop() *record {
	r := l.head
	if r == nil {
		return nil
	}
	l.head = r.next
	if l.head == nil {
		l.tail = nil
	}
	r.next = nil
	return r
}

// insert puts r into the lane's list in offset order.
func (l *lane) insert(r *record) {
	if l.head == nil || l.head.r.Offset > r.r.Offset {
		r.next = l.head
		l.head = r
		if l.tail == nil {
			l.tail = r
		}
		return
	}
	at := l.head
	for at.next != nil && at.next.r.Offset < r.r.Offset {
		at = at.next
	}
	r.next = at.next
	at.next = r
	if r.next == nil {
		l.tail = r
	}
}

// readyList is the FIFO of records waiting for Receive, under s.mu. It
// counts, per partition, the records it holds (partState.ready), so that a
// record is put at its front only when no older record of its partition
// waits behind it (see frontOK).
type readyList struct {
	head, tail *record
}

func (q *readyList) push(r *record) {
	r.p.ready++
	r.next = nil
	if q.tail == nil {
		q.head, q.tail = r, r
		return
	}
	q.tail.next = r
	q.tail = r
}

func (q *readyList) pushFront(r *record) {
	r.p.ready++
	r.next = q.head
	q.head = r
	if q.tail == nil {
		q.tail = r
	}
}

func (q *readyList) pop() *record {
	r := q.head
	if r == nil {
		return nil
	}
	q.head = r.next
	if q.head == nil {
		q.tail = nil
	}
	r.next = nil
	r.p.ready--
	return r
}

// remove takes off the records for which drop reports true.
func (q *readyList) remove(drop func(*record) bool) {
	var head, tail *record
	for r := q.head; r != nil; {
		next := r.next
		r.next = nil
		if drop(r) {
			r.p.ready--
		} else {
			if tail == nil {
				head = r
			} else {
				tail.next = r
			}
			tail = r
		}
		r = next
	}
	q.head, q.tail = head, tail
}

// pollLoop moves records from kgo to the lanes until ctx ends. It polls
// only while a partition wants records (gateOpenLocked): records kgo
// fetched meanwhile wait in kgo's buffer, which stops kgo fetching further
// ahead, so that a consumer slower than the fetches neither piles records
// up nor makes kgo fetch records it would throw away.
func (s *Source) pollLoop(ctx context.Context) {
	defer s.run.Done()
	var scratch pollScratch
	for {
		s.mu.Lock()
		for !s.gateOpenLocked() {
			s.pollWaiting = true
			s.mu.Unlock()
			select {
			case <-s.gate:
			case <-ctx.Done():
				return
			}
			s.mu.Lock()
		}
		s.mu.Unlock()
		fs := s.cl.PollRecords(ctx, 0)
		if ctx.Err() != nil {
			s.cl.AllowRebalance()
			return
		}
		s.take(fs, &scratch)
		// Records are queued (or dropped as not ours): a rebalance may
		// run now.
		s.cl.AllowRebalance()
	}
}

// gateOpenLocked reports whether the poll goroutine should poll: some
// partition assigned here is fetched and hungry.
func (s *Source) gateOpenLocked() bool {
	for _, p := range s.parts {
		if p.hungry(s.cfg.MaxInFlight) {
			return true
		}
	}
	return false
}

// hungry reports whether p, fetched, holds (on its lanes and in its
// backlog) at most half of what its polls bring: the next poll is then
// taken while half a poll's worth is still to be handled, so that kgo
// fetches the one after it meanwhile, and the lanes do not run dry
// waiting for a fetch. With polls smaller than MaxInFlight, half of
// MaxInFlight counts instead.
func (p *partState) hungry(maxIn int) bool {
	return !p.revoking && !p.fetchPaused && p.held+p.nBacklog <= max(p.maxPoll, maxIn)/2
}

// openGateLocked wakes the poll goroutine if it waits for a hungry
// partition.
func (s *Source) openGateLocked() {
	if s.pollWaiting {
		s.pollWaiting = false
		select {
		case s.gate <- struct{}{}:
		default:
		}
	}
}

// pollScratch is reused from poll to poll.
type pollScratch struct {
	ends   []int
	counts map[int32]int // records per partition in the poll
}

// chunk is how many records take queues under one hold of s.mu, so that
// Receive and settlements do not wait long behind a large poll.
const chunk = 1024

// uncommittedWindow bounds, in multiples of MaxInFlight, how far past its
// oldest unfinished record a partition is taken (see Config.MaxInFlight).
const uncommittedWindow = 4

// take queues the records of a poll on their lanes.
func (s *Source) take(fs kgo.Fetches, sc *pollScratch) {
	s.pollErrors(fs)
	if fs.NumRecords() == 0 {
		return
	}
	if sc.counts == nil {
		sc.counts = make(map[int32]int)
	}
	clear(sc.counts)
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		sc.counts[fp.Partition] += len(fp.Records)
	})
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) > 0 {
			s.takePartition(fp, sc)
		}
	})
}

// takePartition queues the records of one partition of a poll. Outside the
// lock, it makes them, with their first deliveries, in one block, and
// their IDs in one string: one allocation each per partition and poll, as
// kgo allocates its records per record batch. A record still out keeps
// its block alive, so a block is never more than one partition's share of
// a poll.
func (s *Source) takePartition(fp kgo.FetchTopicPartition, sc *pollScratch) {
	n := len(fp.Records)
	block := make([]record, n)
	byKey := s.cfg.Ordering == ByKey
	idBuf := make([]byte, 0, n*(len(fp.Topic)+12))
	idBuf = append(idBuf, fp.Topic...)
	idBuf = append(idBuf, '/')
	idBuf = strconv.AppendInt(idBuf, int64(fp.Partition), 10)
	idBuf = append(idBuf, '/')
	plen := len(idBuf)
	sc.ends = sc.ends[:0]
	prev, prevOff := 0, int64(-2) // the previous ID starts at prev
	for j, r := range fp.Records {
		start := len(idBuf)
		if j == 0 {
			start = 0 // the prefix is written already
		}
		if j > 0 && r.Offset == prevOff+1 && !allNines(idBuf[prev+plen:start]) {
			// The next offset: the previous ID with its number incremented
			// in place, cheaper than formatting it.
			idBuf = append(idBuf, idBuf[prev:start]...)
			k := len(idBuf) - 1
			for idBuf[k] == '9' {
				idBuf[k] = '0'
				k--
			}
			idBuf[k]++
		} else {
			if j > 0 {
				idBuf = append(idBuf, idBuf[:plen]...)
			}
			idBuf = strconv.AppendInt(idBuf, r.Offset, 10)
		}
		prev, prevOff = start, r.Offset
		sc.ends = append(sc.ends, len(idBuf))
		rec := &block[j]
		rec.r = r
		rec.attempt = 1
		if byKey && len(r.Key) > 0 {
			rec.key = maphash.Bytes(s.seed, r.Key)
		}
	}
	// idBuf is never written again: the IDs share its bytes.
	ids := unsafe.String(&idBuf[0], len(idBuf))
	start := 0
	for k := range block {
		block[k].id = ids[start:sc.ends[k]]
		start = sc.ends[k]
	}
	for lo := 0; lo < n; lo += chunk {
		s.queue(block[lo:min(lo+chunk, n)], sc.counts)
	}
}

// queue puts recs, records of one poll in partition and offset order
// (counts says how many of each partition the whole poll brought), on
// their partitions' backlogs and admits what the lanes have room for,
// under one hold of s.mu. A record of a partition not (or no longer)
// assigned here, or already taken, is dropped: kgo fetches it again for
// the partition's owner from the committed offset.
//
// A partition whose backlog grew past three of its largest polls is not
// keeping up with the polls that the other partitions' hunger makes (its
// lanes are slow): it is paused in kgo (pause.go) until its backlog is
// down to MaxInFlight, so that it holds at most about four fetch responses
// (Config.MaxBytes each) beyond its lanes while the other partitions go
// on. A partition that keeps up is never paused: pausing makes kgo drop
// what it fetched ahead for it, and fetch it again.
func (s *Source) queue(recs []record, counts map[int32]int) {
	flow := false
	s.mu.Lock()
	var p *partState
	pid := int32(-1)
	done := func() {
		if p == nil {
			return
		}
		p.maxPoll = max(p.maxPoll, counts[p.id])
		s.admitLocked(p, false)
		if !p.wantPause && p.nBacklog > 3*max(p.maxPoll, s.cfg.MaxInFlight) {
			p.wantPause = true
			flow = true
		}
	}
	for k := range recs {
		rec := &recs[k]
		r := rec.r
		if r.Partition != pid {
			done()
			pid = r.Partition
			p = s.parts[pid]
		}
		if p == nil || p.revoking || r.Offset < p.next || r.Topic != s.cfg.Topic {
			continue
		}
		p.next = r.Offset + 1
		p.epoch = r.LeaderEpoch
		rec.p = p
		rec.next = nil
		if p.btail == nil {
			p.bhead = rec
		} else {
			p.btail.next = rec
		}
		p.btail = rec
		p.nBacklog++
	}
	done()
	s.mu.Unlock()
	if flow {
		s.kickFlow()
	}
}

// admitLocked moves records of p's backlog onto their lanes while p has
// room: fewer than MaxInFlight records held, and fewer than
// 4×MaxInFlight past its oldest unfinished one. Control records
// (transaction markers) are committed past, never handed out. A record
// admitted because one of p settled (front) goes to the front of s.ready,
// up to affinityRun times in a row, for the same reason as in
// freeLaneLocked: the settling worker then gets a record of the same
// partition, and keeps its handler context.
func (s *Source) admitLocked(p *partState, front bool) {
	maxIn := s.cfg.MaxInFlight
	woke := false
	for p.bhead != nil && p.held < maxIn && p.trk.Pending() < uncommittedWindow*maxIn {
		rec := p.bhead
		p.bhead = rec.next
		if p.bhead == nil {
			p.btail = nil
		}
		rec.next = nil
		p.nBacklog--
		off := rec.r.Offset
		if !p.trk.Add(off) {
			continue
		}
		if rec.r.Attrs.IsControl() {
			p.trk.Done(off)
			continue
		}
		p.held++
		var ln *lane
		if s.cfg.Ordering == ByKey {
			ln = p.lanes.get(rec.key)
			if ln == nil {
				ln = p.newLane(rec.key)
			}
		} else {
			ln = &p.one
		}
		rec.ln = ln
		switch {
		case ln.busy:
			ln.push(rec)
		case front && p.run < affinityRun && p.ready == 0:
			// Only when no record of p waits on s.ready: those are older
			// (other keys' lanes), and a newer record handed out before
			// them leaves a gap that no commit can pass until they are
			// handled — at a stop or a rebalance, the records handled
			// after the gap are handled again by the next owner.
			p.run++
			ln.busy = true
			s.ready.pushFront(rec)
			woke = true
		default:
			p.run = 0
			ln.busy = true
			s.ready.push(rec)
			woke = true
		}
	}
	if woke {
		s.wakeLocked()
	}
	if p.wantPause && p.nBacklog <= maxIn {
		p.wantPause = false
		s.kickFlow()
	}
}

// allNines reports whether the decimal number b is all nines (its
// increment is one digit longer).
func allNines(b []byte) bool {
	for _, c := range b {
		if c != '9' {
			return false
		}
	}
	return true
}

// newLane returns an idle lane of p for key, from spare or new, and
// registers it.
func (p *partState) newLane(key uint64) *lane {
	var ln *lane
	if n := len(p.spare); n > 0 {
		ln = p.spare[n-1]
		p.spare[n-1] = nil
		p.spare = p.spare[:n-1]
	} else {
		ln = new(lane)
	}
	ln.key = key
	p.lanes.put(ln)
	return ln
}

// handOutLocked counts rec as out and returns the delivery for this
// hand-out and its attempt. The delivery is not shared yet: fill fills it
// outside s.mu.
func (s *Source) handOutLocked(rec *record) (*delivery, int) {
	rec.p.out++
	d := &rec.first
	if rec.out {
		d = new(delivery)
	}
	rec.out = true
	return d, rec.attempt
}

// fill makes d the hand-out of rec with attempt.
func (s *Source) fill(d *delivery, rec *record, attempt int) {
	r := rec.r
	*d = delivery{s: s, rec: rec, msg: broker.Message{
		ID:      rec.id,
		Topic:   s.cfg.Topic,
		Key:     r.Key,
		Body:    r.Value,
		Header:  messageHeader(r.Headers),
		Time:    r.Timestamp,
		Attempt: attempt,
	}}
}

// freeLaneLocked frees rec's lane after rec settled for good or went back
// to wait: its next record is made ready, or the lane ends. With records
// of a batch still out on the lane (extra), it only counts one of them
// done.
func (s *Source) freeLaneLocked(rec *record) {
	ln := rec.ln
	if ln.extra > 0 {
		ln.extra--
		return
	}
	if next := ln.pop(); next != nil {
		// The lane's next record goes to the front, up to affinityRun
		// times in a row: the worker that settled this record, which is
		// likely to ask next, gets a record of the same partition (the
		// same Lease), which lets the consumer runtime keep its handler
		// context instead of making one per record.
		if ln.run < affinityRun && rec.p.ready == 0 {
			// Not ahead of older records of the partition (other keys'
			// lanes) waiting on s.ready: see admitLocked.
			ln.run++
			s.ready.pushFront(next)
		} else {
			ln.run = 0
			s.ready.push(next)
		}
		s.wakeLocked()
		return
	}
	ln.busy = false
	if s.cfg.Ordering == ByKey {
		p := rec.p
		if p.lanes.del(ln) {
			p.spare = append(p.spare, ln)
		}
	}
}

// releaseToLaneLocked puts rec, out and given back unhandled (Release),
// back in its place in its lane: first in line, at the head of s.ready,
// when nothing else of its lane is out and nothing before it waits; else
// into the lane's list in offset order (a batch's records may be settled
// in any order), so that the lane goes on in order once the others are
// settled.
func (s *Source) releaseToLaneLocked(rec *record) {
	ln := rec.ln
	if ln.extra == 0 && (ln.head == nil || ln.head.r.Offset > rec.r.Offset) {
		s.ready.pushFront(rec)
		s.wakeLocked()
		return
	}
	ln.insert(rec)
	if ln.extra > 0 {
		ln.extra--
		return
	}
	s.ready.pushFront(ln.pop())
	s.wakeLocked()
}

// errThrottle logs a repeated error at most once a second.
type errThrottle struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

// pollErrors reports the errors of a poll: logged (throttled) and in
// Status. A client closed or a cancelled poll is not an error.
func (s *Source) pollErrors(fs kgo.Fetches) {
	fs.EachError(func(topic string, part int32, err error) {
		if errors.Is(err, kgo.ErrClientClosed) || errors.Is(err, context.Canceled) {
			return
		}
		s.noteErr(err) // status.go
		t := &s.pollErr
		t.mu.Lock()
		t.n++
		if time.Since(t.last) < time.Second {
			t.mu.Unlock()
			return
		}
		n := t.n
		t.n, t.last = 0, time.Now()
		t.mu.Unlock()
		s.log.Warn("franz: fetch error", "partition", part, "error", err, "errors_since_last_log", n)
	})
}

// messageHeader returns the headers as a map, nil when there are none. A
// repeated key keeps its last value.
func messageHeader(hs []kgo.RecordHeader) map[string]string {
	if len(hs) == 0 {
		return nil
	}
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		out[h.Key] = string(h.Value)
	}
	return out
}

// laneTable is a partition's busy lanes by key hash, with ByKey: an open
// addressing table (linear probing, deletion by backward shift). A busy
// lane holds at least one record, so it holds at most MaxInFlight lanes;
// it costs a third of a Go map per record here, where every record of a
// distinct key adds a lane and its settlement removes it. The keys are
// maphash values: their low bits are as good as any.
type laneTable struct {
	slots []*lane
	n     int
}

func (t *laneTable) get(key uint64) *lane {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.slots) - 1)
	for i := key & mask; ; i = (i + 1) & mask {
		ln := t.slots[i]
		if ln == nil || ln.key == key {
			return ln
		}
	}
}

// put adds ln, whose key is not in t.
func (t *laneTable) put(ln *lane) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	mask := uint64(len(t.slots) - 1)
	i := ln.key & mask
	for t.slots[i] != nil {
		i = (i + 1) & mask
	}
	t.slots[i] = ln
	t.n++
}

func (t *laneTable) grow() {
	old := t.slots
	t.slots = make([]*lane, max(16, 2*len(old)))
	t.n = 0
	for _, ln := range old {
		if ln != nil {
			t.put(ln)
		}
	}
}

// del removes ln and reports whether it was there.
func (t *laneTable) del(ln *lane) bool {
	if t.n == 0 {
		return false
	}
	mask := uint64(len(t.slots) - 1)
	i := ln.key & mask
	for t.slots[i] != ln {
		if t.slots[i] == nil {
			return false
		}
		i = (i + 1) & mask
	}
	// Backward shift: move up the entries of the probe run behind i whose
	// home slot is not between the hole and them.
	for j := (i + 1) & mask; t.slots[j] != nil; j = (j + 1) & mask {
		home := t.slots[j].key & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = nil
	t.n--
	return true
}
