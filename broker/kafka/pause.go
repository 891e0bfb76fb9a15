package kafka

import (
	"context"
)

// Pause implements broker.Pauser: the Source stops fetching and stops
// handing out records, and stays a member of its consumer group. Like the
// Java consumer's pause (and Spring Kafka's), it is not a leave: heartbeats
// go on, the partitions stay assigned, no rebalance happens. A fetch already
// on its way when Pause is called is finished (it waits at most MaxWait) and
// its records are kept; after that no Fetch request is sent until Resume.
// Records fetched and not handed out are kept, in order, and handed out
// after Resume; Receive blocks meanwhile. Records already handed out are
// settled as usual, and their offsets committed.
//
// Pause takes effect at once and does not call the broker; it returns nil
// (ctx is not used). Pausing a paused or closed Source does nothing. A
// rebalance while paused drains and commits as usual; the next generation
// starts paused.
func (s *Source) Pause(ctx context.Context) error {
	defer s.pauseTiers(ctx) // retry.go
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused {
		s.paused = true
		s.resumed = make(chan struct{})
	}
	return nil
}

// Resume implements broker.Pauser: fetching and handing out start again
// where they stopped. Resuming a Source that is not paused does nothing. It
// returns nil.
func (s *Source) Resume(ctx context.Context) error {
	defer s.pauseTiers(ctx) // retry.go
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused {
		s.paused = false
		close(s.resumed)
		if s.ready.len() > 0 {
			s.wakeLocked()
		}
	}
	return nil
}

// awaitResumed returns when the Source is not paused, or false when ctx
// ended first. A fetcher calls it before every Fetch request, so that a
// paused Source sends none.
func (s *Source) awaitResumed(ctx context.Context) bool {
	for {
		s.mu.Lock()
		if !s.paused {
			s.mu.Unlock()
			return true
		}
		ch := s.resumed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}
