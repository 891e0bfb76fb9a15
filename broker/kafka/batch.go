package kafka

// Batches: ReceiveBatch hands out runs of consecutive records of a lane
// (broker.BatchReceiver), for the batch consumers of package consumer.
// A lane then has several records out at once; lane.extra counts those
// beyond the one a lane always has while it exists (see lanes.go), and the
// lane is free for its next record only when all of them are settled.

import (
	"context"

	"github.com/queuekit/queuekit/broker"
)

var (
	_ broker.BatchReceiver = (*Source)(nil)
	_ broker.Sequenced     = (*delivery)(nil)
)

// ReceiveBatch implements broker.BatchReceiver: it returns up to n
// records (at least one; n below 1 counts as 1), waiting only for the
// first. From each free lane it takes the head and the records queued
// behind it, in offset order, as long as nothing else of that lane is out:
// under ByPartition a batch can hold up to MaxInFlight records of one
// partition. Then it takes from the next free lane, and so on. A lane with
// records out takes no part in a later call until they are all settled: so
// a batch collected over several calls (consumer.Batch.MaxWait) holds, of
// each lane, the run that was queued when it first took from the lane, and
// records of the lane fetched meanwhile wait for the next batch.
//
// Whoever settles a batch must keep each lane's order (see
// broker.BatchReceiver; the consumer's batch runtime does): after a failed
// record, the later records of its lane in the batch are given back with
// Release, and come again after it. They may be settled in any order.
// Offsets are committed as with Receive: up to the first unsettled record
// of each partition. With Config.RetryTopics, a due retry record is handed
// out first, in a batch of its own.
func (s *Source) ReceiveBatch(ctx context.Context, n int) ([]broker.Delivery, error) {
	n = min(max(n, 1), 1<<16)
	s.startOnce.Do(s.start)
	if s.startErr != nil {
		return nil, s.startErr
	}
	for {
		// A due retry record (Config.RetryTopics) goes first, alone.
		if d, err := s.nextRetry(); d != nil || err != nil { // retry.go
			if err != nil {
				return nil, err
			}
			return []broker.Delivery{d}, nil
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, broker.ErrSourceClosed
		}
		if s.ready.len() > 0 && !s.paused {
			recs := s.takeBatchLocked(n)
			ds := make([]broker.Delivery, len(recs))
			attempts := make([]int, len(recs))
			for i, rec := range recs {
				ds[i], attempts[i] = s.handOutLocked(rec)
			}
			more := s.ready.len() > 0
			s.mu.Unlock()
			if more {
				// Pass the wake-up on, as Receive does.
				select {
				case s.notify <- struct{}{}:
				default:
				}
			}
			for i, rec := range recs {
				s.fillDelivery(ds[i].(*delivery), rec, attempts[i])
			}
			return ds, nil
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.closedCh:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// takeBatchLocked takes up to max records off s.ready and their lanes'
// queues (see ReceiveBatch); s.ready is not empty.
func (s *Source) takeBatchLocked(max int) []*record {
	recs := make([]*record, 0, min(max, s.ready.len()+64))
	for len(recs) < max && s.ready.len() > 0 {
		rec := s.ready.pop()
		recs = append(recs, rec)
		ln := rec.p.lanes[rec.lane]
		if ln == nil || ln.extra > 0 {
			// Other records of the lane are out (a batch's, one of which
			// may yet be given back ahead of the queue): the queue waits.
			continue
		}
		for len(recs) < max && len(ln.q) > 0 {
			next := ln.q[0]
			ln.q[0] = nil
			ln.q = ln.q[1:]
			ln.extra++
			recs = append(recs, next)
		}
	}
	return recs
}

// Lane implements broker.Sequenced: the record's partition, and under
// ByKey its key's lane. Lanes of different partitions may share a value
// (a hash collision), which only makes the runtime give back more.
func (d *delivery) Lane() uint64 {
	return uint64(d.rec.p.id)*0x9E3779B97F4A7C15 ^ d.rec.lane
}
