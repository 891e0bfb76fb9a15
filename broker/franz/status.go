package franz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
)

// Status implements broker.StatusReporter. Connected is true while the
// Source is a member of its group with partitions assigned (including
// during a rebalance of some of them) and nothing fails; whenever Err is
// set, Connected is false (broker.Status: Err is why the source is not
// connected), except for the notice of stranded retry topics below, which
// does not stop the Source.
//
// Err says why: before the first assignment, the last failure kgo reported
// (a failed dial to a broker, a group error: unknown group coordinator,
// authorization…) or, when nothing failed yet, that the member has not
// joined yet; partitions lost; closed; and, while a member, the last fetch,
// group or dial error kgo reported in the last 10 s (a missing or
// recreated topic, an authorization failure, a broker unreachable), until
// the next assignment. With Config.RetryTopics, Err also says when a retry
// tier's consumer group is not joined (its topic is missing, or the
// coordinator refuses the group: its retries do not come back meanwhile;
// the refusals also emit broker.EventReconnecting naming the tier group)
// or cannot read its topic. And, found once at the first Receive, Err
// names the retry topics of the group that Config.RetryTopics no longer
// has but which still hold records nobody consumes (see "Retry topics" in
// the package documentation); Connected stays true with that notice.
func (s *Source) Status() broker.Status {
	s.mu.Lock()
	st := s.statusLocked(time.Now())
	s.mu.Unlock()
	if st.Err == nil {
		st.Err = s.retryStatusErr() // retry.go
		if p := s.stranded.Load(); p != nil && st.Err == *p {
			return st // a notice: the Source works
		}
	}
	if st.Err != nil {
		st.Connected = false
	}
	return st
}

// errWindow is how long a failure kgo reported counts as current for
// Status while the member is in its group: kgo retries, and reports a
// failure that lasts again and again.
const errWindow = 10 * time.Second

// statusLocked is s.status with the last failure kgo reported (under
// s.mu): it replaces the "not joined yet" text, and is the Err of a member
// while it is current. Connected is left as the group made it (the tier
// consumers' reports in retry.go tell a topic not read from a group not
// joined with it).
func (s *Source) statusLocked(now time.Time) broker.Status {
	st := s.status
	s.errMu.Lock()
	err, at := s.lastErr, s.lastErrAt
	s.errMu.Unlock()
	switch {
	case err == nil:
	case st.Err == s.notJoined:
		st.Err = fmt.Errorf("franz: not joined yet to group %s (topic %s): %w", s.cfg.GroupID, s.cfg.Topic, err)
	case st.Err == nil && now.Sub(at) < errWindow:
		st.Err = err
	}
	return st
}

// noteErr records err, a failure kgo reported, for Status.
func (s *Source) noteErr(err error) {
	s.errMu.Lock()
	s.lastErr, s.lastErrAt = err, time.Now()
	s.errMu.Unlock()
}

// clearErr forgets the failures noted: the member was assigned
// partitions.
func (s *Source) clearErr() {
	s.errMu.Lock()
	s.lastErr = nil
	s.errMu.Unlock()
}

// statusHook passes the group client's group errors and failed dials to
// Status.
type statusHook struct{ s *Source }

var (
	_ kgo.HookGroupManageError = statusHook{}
	_ kgo.HookBrokerConnect    = statusHook{}
)

// OnGroupManageError implements kgo.HookGroupManageError.
func (h statusHook) OnGroupManageError(err error) {
	if errors.Is(err, kgo.ErrClientClosed) || errors.Is(err, context.Canceled) {
		return
	}
	if errors.Is(err, kerr.InconsistentGroupProtocol) {
		h.s.noteErr(fmt.Errorf("franz: group %s: the group's other members use another balancer: see Config.Balancers (a group shared with kafka-go members needs kgo.RangeBalancer() among them): %w", h.s.cfg.GroupID, err))
		return
	}
	h.s.noteErr(fmt.Errorf("franz: group %s: %w", h.s.cfg.GroupID, err))
}

// OnBrokerConnect implements kgo.HookBrokerConnect: a failed dial.
func (h statusHook) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, kgo.ErrClientClosed) {
		return
	}
	h.s.noteErr(fmt.Errorf("franz: connecting to a broker: %w", err))
}
