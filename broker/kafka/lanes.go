package kafka

// Lanes: the fetchers queue records on their lanes, Receive hands out the
// head of each free lane from s.ready. Everything here runs under s.mu
// (the Locked functions) or takes it once per chunk of records (queue).

import (
	"cmp"
	"context"
	"slices"
)

// queue puts as many of recs on their lanes as the partition has room for
// (MaxInFlight) and returns the rest. When there is no room it waits for
// some. It reports false when the generation is ending.
func (g *generation) queue(ctx context.Context, p *partition, recs []*record) ([]*record, bool) {
	rest, ok := g.queueLocked(p, recs)
	if !ok || len(rest) < len(recs) {
		return rest, ok
	}
	select {
	case <-p.room:
		return rest, true
	case <-ctx.Done():
		return nil, false
	}
}

// uncommittedWindow bounds, in multiples of MaxInFlight, how far past its
// oldest unfinished record a partition is fetched (see Config.MaxInFlight).
const uncommittedWindow = 4

// queueLocked puts as many of recs on their lanes as there is room for,
// taking s.mu once, and returns the rest; false if the generation is ending.
// When all were queued it returns recs[:0], for reuse.
func (g *generation) queueLocked(p *partition, recs []*record) ([]*record, bool) {
	s := g.s
	s.mu.Lock()
	if g.draining {
		s.mu.Unlock()
		return nil, false
	}
	// Room is bounded twice: records held (queued or being handled), and
	// the uncommitted window behind the oldest unfinished record (records
	// handled out of order behind it count until it finishes).
	room := min(s.cfg.MaxInFlight-p.held, uncommittedWindow*s.cfg.MaxInFlight-p.trk.Pending())
	n := min(max(room, 0), len(recs))
	woke := false
	for _, rec := range recs[:n] {
		if rec.epoch != p.epoch {
			continue // fetched from the log before a reset (resetBeyondEnd)
		}
		if rec.skip {
			if p.trk.Add(rec.m.Offset) {
				p.trk.Done(rec.m.Offset)
			}
			continue
		}
		if !p.trk.Add(rec.m.Offset) {
			// An offset fetched twice (never expected): keep the tracker
			// consistent by not handing it out twice.
			continue
		}
		p.held++
		if ln, busy := p.lanes[rec.lane]; busy {
			ln.q = append(ln.q, rec)
		} else {
			p.lanes[rec.lane] = p.newLane()
			s.ready.push(rec)
			woke = true
		}
	}
	if woke {
		s.wakeLocked()
	}
	s.mu.Unlock()
	if n == len(recs) {
		clear(recs)
		return recs[:0], true
	}
	clear(recs[:n])
	return recs[n:], true
}

// forgetLocked takes rec, a record that is not out, off the partition's
// bookkeeping without handling it, and returns how many records it forgot.
// If rec is its lane's head (waiting for Receive; the caller takes it off
// s.ready) the lane ends, and the records queued behind it are forgotten
// with it; otherwise rec is one of those queued records (the caller clears
// the lane's q). It is the one place that undoes queueLocked's accounting
// for records never handed out, so that held stays equal to the partition's
// lanes plus the records queued on them: the fetcher's room and its wake-up
// (held <= MaxInFlight/2) depend on it.
func (s *Source) forgetLocked(rec *record, head bool) int {
	p := rec.p
	delete(s.unwritable, rec)
	p.held--
	n := 1
	if head {
		if ln := p.lanes[rec.lane]; ln != nil {
			n += len(ln.q)
			p.held -= len(ln.q)
			clear(ln.q)
			ln.q = ln.q[:0]
			if ln.extra > 0 {
				// Records of a batch are still out on the lane (batch.go):
				// the lane ends when they are settled.
				ln.extra--
			} else {
				delete(p.lanes, rec.lane)
			}
		}
	}
	return n
}

// freeLaneLocked is the end of releaseLocked: rec, out on its lane, is done
// with it. The lane is free when no other record of it is out (lane.extra:
// a batch's, see batch.go): then its next queued record is handed out, or
// the lane ends.
func (s *Source) freeLaneLocked(p *partition, rec *record) {
	ln := p.lanes[rec.lane]
	if ln == nil {
		return
	}
	if ln.extra > 0 {
		ln.extra--
		return
	}
	if len(ln.q) > 0 {
		next := ln.q[0]
		ln.q[0] = nil
		ln.q = ln.q[1:]
		s.pushReadyLocked(next)
	} else {
		delete(p.lanes, rec.lane)
		ln.q = ln.q[:0]
		p.spare = append(p.spare, ln)
	}
}

// releaseToLaneLocked puts rec, out and given back unhandled (Release),
// back at its place in its lane: first in line, at the head of s.ready,
// when nothing else of its lane is out; else into the lane's queue in
// offset order, behind any earlier record of the lane given back or failed
// before it (a batch's records may be settled in any order; see batch.go),
// so that the lane goes on in order once the others are settled.
func (s *Source) releaseToLaneLocked(rec *record) {
	ln := rec.p.lanes[rec.lane]
	if ln == nil || ln.extra == 0 && (len(ln.q) == 0 || ln.q[0].m.Offset > rec.m.Offset) {
		// The lane's only record out, and the first of its queue: it was
		// the next to be handled.
		s.ready.pushFront(rec)
		s.wakeLocked()
		return
	}
	i, _ := slices.BinarySearchFunc(ln.q, rec.m.Offset, func(r *record, off int64) int { return cmp.Compare(r.m.Offset, off) })
	ln.q = slices.Insert(ln.q, i, rec)
	if ln.extra > 0 {
		ln.extra--
		return
	}
	next := ln.q[0]
	ln.q[0] = nil
	ln.q = ln.q[1:]
	s.ready.pushFront(next)
	s.wakeLocked()
}

// newLane returns an idle lane of p (see spare), or a new one.
func (p *partition) newLane() *lane {
	if n := len(p.spare); n > 0 {
		ln := p.spare[n-1]
		p.spare[n-1] = nil
		p.spare = p.spare[:n-1]
		return ln
	}
	return &lane{}
}

func (s *Source) pushReadyLocked(rec *record) {
	s.ready.push(rec)
	s.wakeLocked()
}

// readyQueue is the FIFO of records waiting for Receive, under s.mu. Taking
// from the front advances head rather than reslicing, so that the backing
// array is reused instead of reallocated as records come and go (a record
// at a time, with a lane per partition).
type readyQueue struct {
	buf  []*record
	head int
}

func (q *readyQueue) len() int { return len(q.buf) - q.head }

// items returns the waiting records, in order; the caller must not keep it.
func (q *readyQueue) items() []*record { return q.buf[q.head:] }

func (q *readyQueue) push(r *record) {
	if len(q.buf) == cap(q.buf) && q.head >= len(q.buf)/2 {
		// At least half the array is free at the front: move the records
		// there instead of growing it (amortized O(1) per record).
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, r)
}

// pushFront puts r before every waiting record.
func (q *readyQueue) pushFront(r *record) {
	if q.head > 0 {
		q.head--
		q.buf[q.head] = r
		return
	}
	q.buf = append(q.buf, nil)
	copy(q.buf[1:], q.buf)
	q.buf[0] = r
}

// pop takes the first record; the queue must not be empty.
func (q *readyQueue) pop() *record {
	r := q.buf[q.head]
	q.buf[q.head] = nil
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return r
}

// keep keeps, in order, the records for which f reports true.
func (q *readyQueue) keep(f func(*record) bool) {
	live := q.buf[q.head:]
	kept := live[:0]
	for _, r := range live {
		if f(r) {
			kept = append(kept, r)
		}
	}
	clear(live[len(kept):])
	q.buf = q.buf[:q.head+len(kept)]
	if len(kept) == 0 {
		q.buf, q.head = q.buf[:0], 0
	}
}

// wakeLocked wakes one Receive waiting for a record, if any.
func (s *Source) wakeLocked() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}
