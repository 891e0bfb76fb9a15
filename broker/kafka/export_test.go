package kafka

import "fmt"

// CheckAccounting checks, for the tests, the bookkeeping of every partition
// of the current generation: a lane exists while one record of it is out
// (being handled, or waiting for a delayed requeue) or waiting for Receive,
// and the records queued behind it wait in its q; held counts exactly those,
// so held == lanes + queued. A partition whose held count is too high is
// given too little room and its fetcher is never woken: it stalls.
func CheckAccounting(s *Source) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gen
	if g == nil || g.draining {
		return nil // a draining generation keeps its lanes blocked on purpose
	}
	readyLanes := make(map[*partition]map[uint64]int)
	for _, r := range s.ready.items() {
		if r.g != g {
			return fmt.Errorf("a record of partition %d offset %d of an earlier generation waits for Receive", r.p.id, r.m.Offset)
		}
		if _, ok := r.p.lanes[r.lane]; !ok {
			return fmt.Errorf("partition %d: the record at offset %d waits for Receive on a lane that does not exist", r.p.id, r.m.Offset)
		}
		if readyLanes[r.p] == nil {
			readyLanes[r.p] = make(map[uint64]int)
		}
		if readyLanes[r.p][r.lane]++; readyLanes[r.p][r.lane] > 1 {
			return fmt.Errorf("partition %d: two records of one lane wait for Receive", r.p.id)
		}
	}
	for _, p := range g.parts {
		want := len(p.lanes)
		for _, ln := range p.lanes {
			want += len(ln.q)
		}
		if p.held != want {
			return fmt.Errorf("partition %d: held = %d; want %d (%d lanes and the records queued on them)", p.id, p.held, want, len(p.lanes))
		}
	}
	return nil
}

// PublishChunk is how many messages Publish converts between two checks of
// its ctx.
const PublishChunk = publishChunk
