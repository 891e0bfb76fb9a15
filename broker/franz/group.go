package franz

// The group: kgo runs the membership (join, sync, heartbeats, the
// balancer) and calls onAssigned, onRevoked and onLost from its group
// goroutine. Each assignment of a partition to this member gets a
// partState of its own; a partition revoked and assigned again gets a new
// one, so that a late settlement of a record of the earlier assignment
// (which holds the old partState) can touch nothing of the new one.
//
// Who owns what: kgo owns fetching; the poll goroutine (lanes.go) moves
// polled records onto lanes; the committer (commit.go) commits; the flow
// goroutine (pause.go) pauses and resumes partitions for backpressure;
// every piece of state is guarded by s.mu, held for short sections only.
// Rebalance callbacks never run between a poll's return and the queueing
// of its records (kgo.BlockRebalanceOnPoll; the poll goroutine allows
// rebalances once it queued them).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/offsets"
)

// ErrRebalance is wrapped by the Err of the broker.EventRebalanced event a
// Source emits when its consumer group moved partitions: when partitions
// were taken from it (the text says how many in-flight records finished
// during the drain and how many were fenced), and when it was assigned
// partitions after its first assignment (with the cooperative balancer, a
// member that only gains partitions — another one left — is revoked
// nothing).
var ErrRebalance = errors.New("franz: consumer group rebalance")

// ErrPartitionsLost is wrapped by the Err of the broker.EventReconnecting
// event a Source emits when kgo reports its partitions lost (the member
// was fenced from its group: session expired, unknown member, fatal group
// error). They are fenced at once, without a commit, and the member
// rejoins.
var ErrPartitionsLost = errors.New("franz: partitions lost")

// partState is one assignment of one partition to this member. Every field
// is under s.mu except id and prefix, which never change.
type partState struct {
	id    int32
	trk   offsets.Tracker
	next  int64 // the next offset expected from a poll; -1 until the first
	epoch int32 // leader epoch of the last record taken, for commits
	// committed is the offset last committed for this assignment, -1 if
	// none.
	committed int64
	held      int // records queued or out (backpressure)
	out       int // deliveries handed out and not settled (the drain)
	// revoking: the partition is being taken away; nothing more of it is
	// handed out, and drained (if set) is closed when out reaches 0.
	revoking bool
	drained  chan struct{}
	// fenced: the assignment ended; settlements of its records return
	// broker.ErrStaleDelivery and lease is cancelled.
	fenced      bool
	lease       context.Context
	cancelLease context.CancelFunc
	// backlog holds, in offset order, the records polled beyond what
	// the lanes take (MaxInFlight): they are not in trk yet. admitLocked
	// moves them onto the lanes as room frees up.
	bhead, btail *record
	nBacklog     int
	maxPoll      int // the most records of the partition one poll brought
	run          int // records admitted to the front of s.ready in a row
	ready        int // records of this assignment waiting on s.ready
	// wantPause asks the flow goroutine to stop kgo fetching the
	// partition (its backlog does not drain as fast as polls fill it);
	// fetchPaused is what the flow goroutine applied (pause.go).
	wantPause   bool
	fetchPaused bool
	one         lane      // the lane of every record, with ByPartition
	lanes       laneTable // the busy lanes by key hash, with ByKey
	spare       []*lane   // idle lanes of lanes, for reuse
}

func (s *Source) newPart(id int32) *partState {
	p := &partState{id: id, next: -1, committed: -1}
	p.lease, p.cancelLease = context.WithCancel(context.Background())
	return p
}

// onAssigned is kgo's OnPartitionsAssigned: a state for each partition
// newly assigned (with the cooperative balancer, only the new ones).
func (s *Source) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	<-s.clReady
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	for _, id := range assigned[s.cfg.Topic] {
		if old := s.parts[id]; old != nil {
			// Not expected (kgo revokes before it assigns again): the
			// old assignment ends here, unsettled records fenced.
			s.fenceLocked(old)
		}
		s.parts[id] = s.newPart(id)
	}
	s.openGateLocked() // lanes.go: the new partitions want records
	first := !s.joined
	s.joined = true
	s.status = broker.Status{Connected: true}
	s.mu.Unlock()
	s.clearErr() // status.go: the failures before this assignment are over
	ids := assigned[s.cfg.Topic]
	s.log.Debug("franz: partitions assigned", "partitions", ids)
	switch {
	case first:
		s.emit(broker.EventConnected, nil)
	case len(ids) > 0:
		// A member that gains partitions without losing any (another one
		// left, with the cooperative balancer) sees the rebalance too.
		s.emit(broker.EventRebalanced, fmt.Errorf("%w: partitions %v assigned", ErrRebalance, ids))
	}
}

// onRevoked is kgo's OnPartitionsRevoked: the partitions are taken away
// (with the cooperative balancer, only those that move). They are drained
// (within RebalanceDrainTimeout), fenced, and their handled prefix
// committed before kgo lets the group go on.
func (s *Source) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	<-s.clReady
	s.revoke(revoked[s.cfg.Topic], false)
}

// onLost is kgo's OnPartitionsLost: the member was fenced from its group;
// the partitions are someone else's already. Fence at once, no commit.
func (s *Source) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	<-s.clReady
	s.revoke(lost[s.cfg.Topic], true)
}

// revoke ends the assignments of ids. Unless lost, it stops handing out
// their records, waits up to RebalanceDrainTimeout for those handed out to
// be settled (not at Close: the runtime settled or abandoned them all),
// then fences what is still out and commits the handled prefix.
func (s *Source) revoke(ids []int32, lost bool) {
	start := time.Now()
	s.mu.Lock()
	var ps []*partState
	for _, id := range ids {
		if p := s.parts[id]; p != nil && !p.revoking {
			p.revoking = true
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		if lost && s.joined {
			s.joined = false
			s.status = broker.Status{Err: ErrPartitionsLost}
		}
		s.mu.Unlock()
		return
	}
	// Records waiting for Receive were never started: they are left to
	// the partitions' next owner (not committed).
	s.ready.remove(func(r *record) bool { return r.p.revoking })
	closing := s.closed
	var waits []chan struct{}
	inFlight := 0
	for _, p := range ps {
		s.dropQueuedLocked(p)
		inFlight += p.out
		if p.out > 0 && !lost && !closing {
			p.drained = make(chan struct{})
			waits = append(waits, p.drained)
		}
	}
	s.mu.Unlock()

	if len(waits) > 0 {
		timer := time.NewTimer(s.cfg.RebalanceDrainTimeout)
	wait:
		for _, ch := range waits {
			select {
			case <-ch:
			case <-timer.C:
				break wait
			case <-s.abortCtx.Done():
				break wait
			case <-s.closedCh:
				// Close began: the runtime settled or abandoned every
				// delivery before it, so the rest will not be settled.
				break wait
			}
		}
		timer.Stop()
	}

	offs := make(map[int32]commitOffset)
	s.mu.Lock()
	fenced := 0
	for _, p := range ps {
		fenced += p.out
		if off, ok := p.trk.Committable(); ok && off != p.committed && !lost {
			offs[p.id] = commitOffset{p: p, at: kgo.EpochOffset{Epoch: p.epoch, Offset: off}}
		}
		s.fenceLocked(p)
	}
	if lost {
		s.joined = false
		s.status = broker.Status{Err: ErrPartitionsLost}
	}
	s.mu.Unlock()
	s.resumeFetch(ps) // pause.go

	var err error
	if len(offs) > 0 {
		if s.isAborted() {
			err = errors.New("franz: final commit skipped: Close's context ended")
		} else {
			err = s.finalCommit(offs, start.Add(s.cfg.RebalanceDrainTimeout))
		}
	}
	if closing && err != nil && !s.isAborted() {
		s.mu.Lock()
		s.closeCommitErr = err
		s.mu.Unlock()
	}
	what := "revoked"
	if lost {
		what = "lost"
	}
	s.log.Info("franz: partitions "+what, "partitions", ids, "in_flight", inFlight, "fenced", fenced,
		"drain", time.Since(start), "commit_error", err)
	switch {
	case closing:
	case lost:
		s.emit(broker.EventReconnecting, fmt.Errorf("%w: partitions %v (%d in flight fenced); rejoining", ErrPartitionsLost, ids, fenced))
	default:
		s.emit(broker.EventRebalanced, fmt.Errorf("%w: partitions %v revoked (%d in flight finished, %d fenced)",
			ErrRebalance, ids, inFlight-fenced, fenced))
	}
}

// fenceLocked ends p's assignment: its deliveries still out become stale,
// their lease is cancelled, and p leaves s.parts.
func (s *Source) fenceLocked(p *partState) {
	if p.fenced {
		return
	}
	p.fenced = true
	p.revoking = true
	p.cancelLease()
	s.dropQueuedLocked(p)
	if s.parts[p.id] == p {
		delete(s.parts, p.id)
	}
}

// dropQueuedLocked forgets p's records that are queued on its lanes or wait
// on a delay timer: they are not handed out any more. The caller takes p's
// records off s.ready.
func (s *Source) dropQueuedLocked(p *partState) {
	for rec, t := range s.timers {
		if rec.p == p {
			t.Stop()
			delete(s.timers, rec)
		}
	}
	p.one = lane{}
	p.lanes = laneTable{}
	p.spare = nil
	p.bhead, p.btail, p.nBacklog = nil, nil, 0
}
