package kafka

import "fmt"

// CheckBatchAccounting is CheckAccounting with batches (batch.go): a lane
// exists while one or more of its records are out or waiting for Receive
// (1 + lane.extra of them), so held == lanes + extra + queued.
func CheckBatchAccounting(s *Source) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gen
	if g == nil || g.draining {
		return nil
	}
	for _, p := range g.parts {
		want := len(p.lanes)
		for _, ln := range p.lanes {
			want += ln.extra + len(ln.q)
			if ln.extra < 0 {
				return fmt.Errorf("partition %d: a lane has extra %d", p.id, ln.extra)
			}
		}
		if p.held != want {
			return fmt.Errorf("partition %d: held = %d; want %d (%d lanes, their extra records out and the records queued on them)", p.id, p.held, want, len(p.lanes))
		}
	}
	return nil
}

// OutCount is how many records of the current generation are handed out
// and not settled.
func OutCount(s *Source) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == nil {
		return 0
	}
	return s.gen.dispatched
}
