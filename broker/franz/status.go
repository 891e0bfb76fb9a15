package franz

import "github.com/queuekit/queuekit/broker"

// Status implements broker.StatusReporter: Connected is true while the
// Source is a member of its group with partitions assigned (including
// during a rebalance of some of them); Err says why not (not joined yet,
// partitions lost, closed), or, while connected, the last fetch error kgo
// reported (a missing topic, an authorization failure), until the next
// assignment.
func (s *Source) Status() broker.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}
