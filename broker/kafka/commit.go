package kafka

// Commit and drain: the committer goroutine of each generation commits the
// longest handled prefix of each partition by count and interval, and when
// the generation ends drains it and commits a last time before kafka-go
// gives the partitions up.

import (
	"context"
	"errors"
	"fmt"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
)

// commitLoop commits the generation's progress by count and interval, and
// drains and commits a last time when the generation ends.
func (g *generation) commitLoop(ctx context.Context) {
	t := time.NewTicker(g.s.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-g.kick:
		case <-ctx.Done():
			g.drain()
			return
		}
		g.commit()
	}
}

// drain runs when the generation ends: stop dispatching, wait up to
// RebalanceDrainTimeout for records already handed out, fence the rest, commit.
func (g *generation) drain() {
	s := g.s
	start := time.Now()
	s.mu.Lock()
	g.draining = true
	// Records waiting for Receive were never started: leave them to the
	// partition's next owner (they are not committed).
	s.ready.keep(func(r *record) bool { return r.g != g })
	waiting := g.dispatched
	// At Close nothing is waited for: the runtime calls Close only after
	// every delivery it received was settled or abandoned (broker.Source),
	// so a record still out will not be settled, and waiting for it would
	// only hold the final commit and the leave back by the whole budget.
	if waiting == 0 || s.closed {
		g.closeDrainedLocked()
	}
	s.mu.Unlock()

	timer := time.NewTimer(s.cfg.RebalanceDrainTimeout)
	select {
	case <-g.drained:
	case <-timer.C:
	case <-s.aborted: // Close's ctx ended: no more waiting
	}
	timer.Stop()

	s.mu.Lock()
	g.fenced = true
	g.endLease()
	for r := range s.unwritable {
		if r.g == g {
			delete(s.unwritable, r) // the partition's next owner has it now
		}
	}
	fenced := g.dispatched
	if s.gen == g {
		s.gen = nil
	}
	closing := s.closed
	s.mu.Unlock()

	var err error
	if s.isAborted() {
		err = errors.New("kafka: final commit skipped: Close's context ended")
	} else {
		err = g.finalCommit(start.Add(s.cfg.RebalanceDrainTimeout))
	}
	s.log.Info("kafka: generation ended", "generation", g.kg.ID, "in_flight_at_end", waiting,
		"fenced", fenced, "drain", time.Since(start), "commit_error", err)
	if closing && err != nil && !s.isAborted() {
		// Close returns it (an abort is reported by Close as ctx's error).
		s.mu.Lock()
		s.closeCommitErr = err
		s.mu.Unlock()
	}
	if !closing {
		// EventRebalanced, not EventReconnecting: the connection is fine,
		// the group moved partitions (metrics count the two apart).
		s.emit(broker.EventRebalanced, fmt.Errorf("%w: generation %d ended (%d in flight finished, %d fenced)",
			ErrRebalance, g.kg.ID, waiting-fenced, fenced))
	}
}

func (g *generation) closeDrainedLocked() {
	if !g.drainOnce {
		g.drainOnce = true
		close(g.drained)
	}
}

// finalCommit is the commit at the end of the generation: the last chance to
// record what was handled before the next owner reads the offsets. A
// failure that retrying can fix (the coordinator loading or moving, a
// rebalance in progress, a broken connection) is retried with backoff until
// deadline — the drain budget — and for at least half a RebalanceDrainTimeout after
// the first failure, so that a drain that spent its budget waiting for
// handlers still gets a few tries. Every try, like every commit (see
// commit), goes through the Source's client, which finds the group's
// coordinator afresh: a broker that is no longer the coordinator is not
// asked again.
func (g *generation) finalCommit(deadline time.Time) error {
	s := g.s
	err := g.commit()
	if err == nil || !retriableCommit(err) || s.isAborted() {
		return err
	}
	deadline = later(deadline, time.Now().Add(s.cfg.RebalanceDrainTimeout/2))
	wait := 50 * time.Millisecond
	for tries := 1; ; tries++ {
		if !time.Now().Add(wait).Before(deadline) {
			s.log.Error("kafka: the final commit failed within the drain budget; the partitions' next owner will handle again what was handled since the last commit",
				"generation", g.kg.ID, "tries", tries, "error", err)
			return err
		}
		// The generation has ended: nothing ends this wait but the budget,
		// or Close's ctx.
		select {
		case <-time.After(wait):
		case <-s.aborted:
			return err
		}
		wait = min(2*wait, time.Second)
		err = g.commitWith(func(offs map[int]int64) error {
			ctx, cancel := context.WithDeadline(context.Background(), later(deadline, time.Now().Add(100*time.Millisecond)))
			defer cancel()
			return g.commitViaClient(ctx, offs)
		})
		if err == nil {
			s.log.Info("kafka: the final commit succeeded after retries", "generation", g.kg.ID, "tries", tries+1)
			return nil
		}
		if !retriableCommit(err) {
			s.log.Error("kafka: the final commit failed; the partitions' next owner will handle again what was handled since the last commit",
				"generation", g.kg.ID, "tries", tries+1, "error", err)
			return err
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// commitViaClient commits offs for the generation through the Source's
// client, which routes the request to the group's current coordinator.
func (g *generation) commitViaClient(ctx context.Context, offs map[int]int64) error {
	s := g.s
	req := &kafkago.OffsetCommitRequest{
		GroupID:      s.cfg.GroupID,
		GenerationID: int(g.kg.ID),
		MemberID:     g.kg.MemberID,
		Topics:       map[string][]kafkago.OffsetCommit{s.cfg.Topic: make([]kafkago.OffsetCommit, 0, len(offs))},
	}
	for id, off := range offs {
		req.Topics[s.cfg.Topic] = append(req.Topics[s.cfg.Topic], kafkago.OffsetCommit{Partition: id, Offset: off})
	}
	resp, err := s.lagCli.OffsetCommit(ctx, req)
	if err != nil {
		return err
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return p.Error
			}
		}
	}
	return nil
}

// retriableCommit reports whether a failed commit may succeed if sent again
// within the same generation: the coordinator is loading, moving or
// rebalancing, or the request or connection failed. Not when the member was
// fenced (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID: a new owner may already be
// reading the offsets) or the topic is gone (UNKNOWN_TOPIC_OR_PARTITION:
// committing to a recreated topic would skip its records).
func retriableCommit(err error) bool {
	var ke kafkago.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafkago.GroupLoadInProgress, kafkago.GroupCoordinatorNotAvailable, kafkago.NotCoordinatorForGroup,
			kafkago.RebalanceInProgress, kafkago.RequestTimedOut, kafkago.NetworkException:
			return true
		}
		return false
	}
	return true // not a Kafka error code: a network error or a timeout
}

// commit commits, per partition, the offset after the longest handled
// prefix, if it moved. Only the committer goroutine calls it.
//
// It commits through the Source's client (commitViaClient), with the
// generation's ID and member ID, not through kafka-go's Generation
// CommitOffsets: that one shares the group's coordinator connection with
// kafka-go's heartbeat goroutine, and a kafkago.Conn waiting for its
// response while another request's response is ahead of it on the
// connection spins (Conn.waitResponse: lock, set the read deadline, peek,
// unlock, again) until the other goroutine reads it. With a commit every
// 1,000 records that cost ~0.3 µs of CPU per record on a busy 2-core
// machine (BenchmarkConsume), a third of the source's own cost. The
// client's transport multiplexes requests without spinning; the broker
// fences a stale generation the same way (ILLEGAL_GENERATION,
// UNKNOWN_MEMBER_ID).
func (g *generation) commit() error {
	return g.commitWith(func(offs map[int]int64) error {
		ctx, cancel := context.WithTimeout(g.s.abortCtx, g.s.cfg.Timeout)
		defer cancel()
		return g.commitViaClient(ctx, offs)
	})
}

func (g *generation) commitWith(send func(offs map[int]int64) error) error {
	s := g.s
	offs := make(map[int]int64)
	s.mu.Lock()
	g.settled = 0
	for id, p := range g.parts {
		// != rather than >: after a reset beyond the end (resetBeyondEnd)
		// the new offsets are below the stale committed one. Within a
		// generation the tracker's committable offset only grows.
		if off, ok := p.trk.Committable(); ok && off != p.committed {
			offs[id] = off
		}
	}
	s.mu.Unlock()
	if len(offs) == 0 {
		return nil
	}
	if err := send(offs); err != nil {
		s.log.Warn("kafka: commit failed; the records will be redelivered if it is not retried",
			"generation", g.kg.ID, "error", err)
		return err
	}
	for id, off := range offs {
		g.parts[id].committed = off
	}
	return nil
}
