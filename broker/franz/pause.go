package franz

import (
	"context"
)

// Pause implements broker.Pauser: the Source stops fetching the topic
// (kgo's PauseFetchTopics) and stops handing out records, and stays a
// member of its consumer group: heartbeats go on, the partitions stay
// assigned, no rebalance happens. Records already queued are kept, in
// order, and handed out after Resume; Receive blocks meanwhile. Records
// already handed out are settled as usual, and their offsets committed.
//
// Pause takes effect at once and returns nil (ctx is not used). Pausing a
// paused or closed Source does nothing. A rebalance while paused drains
// and commits as usual; partitions assigned meanwhile stay paused too.
//
// The backpressure of MaxInFlight pauses partitions on its own (kgo's
// PauseFetchPartitions); the two do not undo each other.
func (s *Source) Pause(context.Context) error {
	s.setPaused(true)
	s.pauseTiers() // retry.go
	return nil
}

// Resume implements broker.Pauser: fetching and handing out start again
// where they stopped. Resuming a Source that is not paused does nothing.
// It returns nil.
func (s *Source) Resume(context.Context) error {
	s.setPaused(false)
	s.pauseTiers() // retry.go
	return nil
}

// setPaused applies a Pause or Resume. pauseMu orders the calls, so that
// kgo ends in the state of the last one; start sets s.cl under it.
func (s *Source) setPaused(paused bool) {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	s.mu.Lock()
	if s.closed || s.paused == paused {
		s.mu.Unlock()
		return
	}
	s.paused = paused
	if !paused && s.ready.head != nil {
		s.wakeLocked()
	}
	s.mu.Unlock()
	if s.cl == nil {
		return // not started: start applies it
	}
	if paused {
		s.cl.PauseFetchTopics(s.cfg.Topic)
	} else {
		s.cl.ResumeFetchTopics(s.cfg.Topic)
	}
}

// kickFlow wakes the flow goroutine.
func (s *Source) kickFlow() {
	select {
	case s.flowKick <- struct{}{}:
	default:
	}
}

// flowLoop applies the backpressure decided under s.mu (partState's
// wantPause, see queue and admitLocked): it pauses kgo's fetching of a
// partition whose backlog does not drain as fast as polls fill it, and
// resumes it once the backlog is down to MaxInFlight. kgo drops what it
// had buffered of a paused partition and fetches it again from its
// position on resume: nothing is lost.
func (s *Source) flowLoop(ctx context.Context) {
	defer s.run.Done()
	for {
		select {
		case <-s.flowKick:
		case <-ctx.Done():
			return
		}
		s.applyFlow()
	}
}

func (s *Source) applyFlow() {
	s.flowMu.Lock()
	defer s.flowMu.Unlock()
	var pause, resume []int32
	s.mu.Lock()
	for id, p := range s.parts {
		if p.revoking || p.wantPause == p.fetchPaused {
			continue
		}
		p.fetchPaused = p.wantPause
		if p.fetchPaused {
			pause = append(pause, id)
		} else {
			resume = append(resume, id)
		}
	}
	if len(resume) > 0 {
		s.openGateLocked()
	}
	s.mu.Unlock()
	if len(pause) > 0 {
		s.cl.PauseFetchPartitions(map[string][]int32{s.cfg.Topic: pause})
	}
	if len(resume) > 0 {
		s.cl.ResumeFetchPartitions(map[string][]int32{s.cfg.Topic: resume})
	}
}

// resumeFetch resumes, at a revoke, the fetching of the partitions of ps
// that backpressure paused, so that a later assignment of them is fetched.
// ps are fenced: applyFlow does not see them any more.
func (s *Source) resumeFetch(ps []*partState) {
	s.flowMu.Lock()
	defer s.flowMu.Unlock()
	var ids []int32
	s.mu.Lock()
	for _, p := range ps {
		p.wantPause = false
		if p.fetchPaused {
			p.fetchPaused = false
			ids = append(ids, p.id)
		}
	}
	s.mu.Unlock()
	if len(ids) > 0 && s.cl != nil {
		s.cl.ResumeFetchPartitions(map[string][]int32{s.cfg.Topic: ids})
	}
}
