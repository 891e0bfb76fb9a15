package franz

// Batches: ReceiveBatch hands out runs of consecutive records of a lane
// (broker.BatchReceiver), for the batch consumers of package consumer.
// A lane then has several records out at once; lane.extra counts those
// beyond the one a busy lane always has (see lanes.go), and the lane is
// free for its next record only when all of them are settled.

import (
	"context"
	"time"

	"github.com/queuekit/queuekit/broker"
)

var (
	_ broker.BatchReceiver = (*Source)(nil)
	_ broker.Sequenced     = (*delivery)(nil)
)

// maxBatch is the most a consumer.Batch may hold.
const maxBatch = 1 << 16

// ReceiveBatch implements broker.BatchReceiver: it returns up to n records
// (at least one; n below 1 counts as 1, and n above 65,536 as 65,536),
// waiting for the first until ctx ends and then, for up to wait, for more.
// From each free lane it takes the head and the records queued behind it,
// in offset order; while it waits, the lanes it holds go on growing with
// the records polled meanwhile, and other lanes join as they become free.
// Under ByPartition a batch can so hold up to MaxInFlight records of each
// partition.
//
// It returns early, with what it has, when ctx ends (the caller gives
// those back), the Source closes, a partition of its records is being
// revoked, or the Source is paused.
//
// Whoever settles a batch must keep each lane's order (see
// broker.BatchReceiver; the consumer's batch runtime does): after a failed
// record, the later records of its lane in the batch are given back with
// Release, and come again after it. They may be settled in any order.
// Offsets are committed as with Receive: up to the first unsettled record
// of each partition.
func (s *Source) ReceiveBatch(ctx context.Context, n int, wait time.Duration) ([]broker.Delivery, error) {
	n = min(max(n, 1), maxBatch)
	if err := s.begin(); err != nil {
		return nil, err
	}
	var (
		b      batchTake
		timer  *time.Timer
		tick   *time.Ticker
		due    <-chan time.Time
		poll   <-chan time.Time
		waited bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
			tick.Stop()
		}
	}()
	for {
		// A done ctx wins over ready records, which stay for another
		// call; what was taken already is returned (the caller gives it
		// back), as below.
		if err := ctx.Err(); err != nil {
			if waited {
				// The wake-up this call may have taken is passed on.
				s.mu.Lock()
				s.waiting--
				pass := s.ready.head != nil && s.waiting > 0
				s.mu.Unlock()
				if pass {
					s.signal()
				}
			}
			if len(b.recs) > 0 {
				return b.deliveries(s), nil
			}
			return nil, err
		}
		if s.retry != nil && len(b.recs) == 0 {
			// A due record of a retry tier comes first, in a batch of
			// its own (retry.go).
			if d, err := s.takeRetry(waited); d != nil || err != nil {
				if err != nil {
					return nil, err
				}
				return []broker.Delivery{d}, nil
			}
		}
		s.mu.Lock()
		if waited {
			s.waiting--
			waited = false
		}
		if s.closed {
			s.mu.Unlock()
			if len(b.recs) > 0 {
				return b.deliveries(s), nil
			}
			return nil, broker.ErrSourceClosed
		}
		stop := len(b.recs) > 0 && (s.paused || b.revoking())
		if !stop && !s.paused {
			s.takeBatchLocked(&b, n)
		}
		pass := s.ready.head != nil && s.waiting > 0
		s.mu.Unlock()
		if pass {
			s.signal()
		}
		expired := false
		if due != nil {
			select {
			case <-due:
				expired = true
			default:
			}
		}
		if len(b.recs) > 0 && (stop || len(b.recs) >= n || wait <= 0 || expired) {
			return b.deliveries(s), nil
		}
		if len(b.recs) > 0 && timer == nil {
			// The lanes held grow without a wake-up (the poll goroutine
			// wakes waiters only for a free lane's head): look again every
			// eighth of the wait, between 1 and 10 ms.
			timer, tick = time.NewTimer(wait), time.NewTicker(min(max(wait/8, time.Millisecond), 10*time.Millisecond))
			due, poll = timer.C, tick.C
		}
		s.mu.Lock()
		s.waiting++
		waited = true
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-poll:
		case <-due:
			due = closedTime // look once more, then return
		case <-s.closedCh:
		case <-ctx.Done():
			s.mu.Lock()
			s.waiting--
			s.mu.Unlock()
			if len(b.recs) > 0 {
				return b.deliveries(s), nil
			}
			return nil, ctx.Err()
		}
	}
}

// closedTime is a closed channel: a deadline that has passed.
var closedTime = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

// batchTake is a batch that ReceiveBatch is taking: its records, their
// hand-outs and attempts, and the lanes it holds alone (whose lists it may
// go on taking from).
type batchTake struct {
	recs     []*record
	ds       []*delivery
	attempts []int
	owned    []*record // the first record taken of each lane held alone
}

// revoking reports whether a partition of the batch's records is being
// revoked (under s.mu).
func (b *batchTake) revoking() bool {
	for _, r := range b.owned {
		if r.p.revoking {
			return true
		}
	}
	for _, r := range b.recs {
		if r.p.revoking {
			return true
		}
	}
	return false
}

// deliveries fills the hand-outs, outside s.mu, and returns them.
func (b *batchTake) deliveries(s *Source) []broker.Delivery {
	out := make([]broker.Delivery, len(b.recs))
	for i, rec := range b.recs {
		s.fill(b.ds[i], rec, b.attempts[i])
		out[i] = b.ds[i]
	}
	return out
}

func (s *Source) addToBatchLocked(b *batchTake, rec *record) {
	d, attempt := s.handOutLocked(rec)
	b.recs = append(b.recs, rec)
	b.ds = append(b.ds, d)
	b.attempts = append(b.attempts, attempt)
}

// takeBatchLocked adds to b, up to n records: first the records queued
// since on the lanes b holds alone, then from s.ready the heads of free
// lanes and the records queued behind them.
func (s *Source) takeBatchLocked(b *batchTake, n int) {
	for _, first := range b.owned {
		if len(b.recs) >= n {
			return
		}
		s.takeLaneLocked(b, first, n)
	}
	for len(b.recs) < n {
		rec := s.ready.pop()
		if rec == nil {
			return
		}
		s.addToBatchLocked(b, rec)
		if rec.ln.extra > 0 {
			// Other records of the lane are out (another batch's, one of
			// which may yet be given back ahead of the list): the list
			// waits.
			continue
		}
		b.owned = append(b.owned, rec)
		s.takeLaneLocked(b, rec, n)
	}
}

// takeLaneLocked adds to b, up to n records, the records waiting on the
// lane of first, which b holds alone.
func (s *Source) takeLaneLocked(b *batchTake, first *record, n int) {
	if first.p.revoking {
		return
	}
	ln := first.ln
	for len(b.recs) < n {
		next := ln.pop()
		if next == nil {
			return
		}
		ln.extra++
		s.addToBatchLocked(b, next)
	}
}

// Lane implements broker.Sequenced: the record's partition, and under
// ByKey its key's lane. Lanes of different partitions may share a value (a
// hash collision), which only makes the runtime give back more.
//
// A retry record's lane (its tier partition) is salted with its tier, so
// that it is not the lane of the main topic's partition, or of another
// tier's, of the same number.
func (d *delivery) Lane() uint64 {
	v := uint64(d.rec.p.id+1)*0x9E3779B97F4A7C15 ^ d.rec.key
	if t := d.s.tier; t != nil {
		v ^= (uint64(t.index) + 1) * 0xC2B2AE3D27D4EB4F
	}
	return v
}
