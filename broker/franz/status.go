package franz

import "github.com/queuekit/queuekit/broker"

// Status implements broker.StatusReporter: Connected is true while the
// Source is a member of its group with partitions assigned (including
// during a rebalance of some of them); Err says why not (not joined yet,
// partitions lost, closed), or, while connected, the last fetch error kgo
// reported (a missing topic, an authorization failure), until the next
// assignment. With Config.RetryTopics, Err also says when a retry tier's
// consumer group is not joined (its topic is missing, or the coordinator
// refuses the group: its retries do not come back meanwhile; the refusals
// also emit broker.EventReconnecting naming the tier group) or cannot read
// its topic. And, found once at the first Receive, Err names the retry
// topics of the group that Config.RetryTopics no longer has but which
// still hold records nobody consumes (see "Retry topics" in the package
// documentation).
func (s *Source) Status() broker.Status {
	s.mu.Lock()
	st := s.status
	s.mu.Unlock()
	if st.Err == nil {
		st.Err = s.retryStatusErr() // retry.go
	}
	return st
}
