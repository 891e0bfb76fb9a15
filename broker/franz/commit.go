package franz

// Commits: the committer goroutine commits, per owned partition, the
// offset after the longest handled prefix (offsets.Tracker) every
// CommitInterval or once CommitBatch records were settled; a revoke
// commits its partitions a last time (group.go, finalCommit). commitMu
// orders them, so that an older snapshot is never sent after a newer one.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// commitOffset is an offset to commit for one assignment of a partition.
type commitOffset struct {
	p  *partState
	at kgo.EpochOffset
}

// commitTimeout bounds one commit of the committer.
const commitTimeout = 10 * time.Second

// commitLoop commits by count and interval until ctx ends.
func (s *Source) commitLoop(ctx context.Context) {
	defer s.run.Done()
	t := time.NewTicker(s.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.kick:
		case <-ctx.Done():
			return
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		s.commit(cctx)
		cancel()
	}
}

// commit commits the new committable offset of every owned partition.
// Failures are logged; the next round tries again.
func (s *Source) commit(ctx context.Context) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	offs := make(map[int32]commitOffset)
	s.mu.Lock()
	s.settled = 0
	for id, p := range s.parts {
		if off, ok := p.trk.Committable(); ok && off != p.committed {
			offs[id] = commitOffset{p: p, at: kgo.EpochOffset{Epoch: p.epoch, Offset: off}}
		}
	}
	s.mu.Unlock()
	if len(offs) == 0 {
		return nil
	}
	err := s.commitLocked(ctx, offs)
	if err != nil && ctx.Err() == nil {
		s.log.Warn("franz: commit failed; it is tried again at the next commit", "error", err)
	}
	return err
}

// finalCommit commits offs, the handled prefixes of revoked partitions,
// trying again on retriable errors until deadline (and for at least half
// a RebalanceDrainTimeout), or until Close's ctx ended.
func (s *Source) finalCommit(offs map[int32]commitOffset, deadline time.Time) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	deadline = later(deadline, time.Now().Add(s.cfg.RebalanceDrainTimeout/2))
	ctx, cancel := context.WithDeadline(s.abortCtx, deadline)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		err := s.commitLocked(ctx, offs)
		if err == nil || !kerr.IsRetriable(err) && !errors.Is(err, context.DeadlineExceeded) {
			if err != nil {
				s.log.Error("franz: the final commit of revoked partitions failed; their next owner will handle again what was handled since the last commit", "error", err)
			}
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			s.log.Error("franz: the final commit of revoked partitions failed within the drain budget; their next owner will handle again what was handled since the last commit", "error", err)
			return err
		}
		wait = min(2*wait, 500*time.Millisecond)
		s.mu.Lock()
		for id, o := range offs {
			if o.p.committed == o.at.Offset { // committed by an earlier try
				delete(offs, id)
			}
		}
		s.mu.Unlock()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// commitLocked sends offs (the caller holds commitMu) and records, per
// partition, what was committed. It returns the first error.
func (s *Source) commitLocked(ctx context.Context, offs map[int32]commitOffset) error {
	m := make(map[int32]kgo.EpochOffset, len(offs))
	for id, o := range offs {
		m[id] = o.at
	}
	var rerr error
	ok := make([]int32, 0, len(offs))
	s.cl.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{s.cfg.Topic: m},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				rerr = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
						if rerr == nil {
							rerr = fmt.Errorf("partition %d: %w", p.Partition, err)
						}
						continue
					}
					ok = append(ok, p.Partition)
				}
			}
		})
	s.mu.Lock()
	for _, id := range ok {
		if o, found := offs[id]; found && o.at.Offset > o.p.committed {
			o.p.committed = o.at.Offset
		}
	}
	s.mu.Unlock()
	return rerr
}
