package franz

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
)

// delivery is one hand-out of a record. A record requeued is handed out
// again as a new delivery, so that a late second settlement of the first
// cannot touch the second.
type delivery struct {
	s       *Source
	rec     *record
	msg     broker.Message
	settled bool // under s.mu
}

var (
	_ broker.Delivery        = (*delivery)(nil)
	_ broker.DelayedRequeuer = (*delivery)(nil)
	_ broker.Leased          = (*delivery)(nil)
	_ broker.Releaser        = (*delivery)(nil)
	_ broker.Source          = (*Source)(nil)
	_ broker.Pauser          = (*Source)(nil)
	_ broker.StatusReporter  = (*Source)(nil)
	_ broker.EventSource     = (*Source)(nil)
)

// Headers a Source adds to a dead-lettered record, next to the
// broker.Reason headers (x-queuekit-error, -attempts, -source, …): where it
// was consumed from. They are those of the kafka adapter.
const (
	// HeaderTopic holds the topic the record was consumed from.
	HeaderTopic = "x-queuekit-topic"
	// HeaderPartition holds the partition the record was consumed from.
	HeaderPartition = "x-queuekit-partition"
	// HeaderOffset holds the offset of the record in that partition.
	HeaderOffset = "x-queuekit-offset"
)

// retryHeaders are the retry-topic headers (x-queuekit-attempt, -due,
// -group, -time) that a dead letter does not carry on.
var retryHeaders = []string{"x-queuekit-attempt", "x-queuekit-due", "x-queuekit-group", "x-queuekit-time"}

func (d *delivery) Message() *broker.Message { return &d.msg }

// Lease implements broker.Leased: the context is cancelled when the
// record's partition is taken from this member before the delivery was
// settled (after the drain at a rebalance, or when the partitions are
// lost); the runtime then cancels the handler with cause
// broker.ErrStaleDelivery.
func (d *delivery) Lease() context.Context { return d.rec.p.lease }

// claimLocked marks d settled, or says why it cannot be. A fenced delivery
// never settled stays unsettled: every settlement of it returns an error
// wrapping broker.ErrStaleDelivery, so that a caller retrying one is not
// told it was settled (it was not committed).
func (d *delivery) claimLocked() error {
	if d.settled {
		return broker.ErrAlreadySettled
	}
	if d.rec.p.fenced {
		return d.stale()
	}
	d.settled = true
	return nil
}

func (d *delivery) stale() error {
	return fmt.Errorf("%w: %s: its partition was taken from this member before it was settled; it is not committed and will be redelivered to the partition's owner",
		broker.ErrStaleDelivery, d.msg.ID)
}

// Ack marks the record handled. Its offset is committed with the next
// commit once every earlier record of its partition is handled too.
func (d *delivery) Ack(context.Context) error {
	s := d.s
	s.mu.Lock()
	if err := d.claimLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	kick := s.handledLocked(d.rec)
	s.mu.Unlock()
	if kick {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// handledLocked records that rec, out, is done for good, frees its lane,
// and reports whether the committer should run (CommitBatch reached).
func (s *Source) handledLocked(rec *record) bool {
	p := rec.p
	p.trk.Done(rec.r.Offset)
	p.held--
	if !s.settleOutLocked(p) {
		return false
	}
	s.freeLaneLocked(rec)
	if p.bhead != nil {
		s.admitLocked(p, true)
	}
	if s.pollWaiting && p.hungry(s.cfg.MaxInFlight) {
		s.openGateLocked()
	}
	s.settled++
	return s.settled == s.cfg.CommitBatch
}

// settleOutLocked counts a delivery of p settled. It reports false when
// p is being revoked: nothing of it is handed out again, and the drain is
// told when the last delivery settled.
func (s *Source) settleOutLocked(p *partState) bool {
	p.out--
	if !p.revoking {
		return true
	}
	if p.out == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
	return false
}

// Requeue hands the record out again in process (Kafka has no per-message
// nack), before anything after it in its lane, with the next Attempt.
func (d *delivery) Requeue(context.Context) error {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := d.claimLocked(); err != nil {
		return err
	}
	s.retryInProcessLocked(d.rec, 0)
	return nil
}

// RequeueAfter hands the record out again after delay (a delay <= 0 is a
// Requeue; a delay above a week, the longest retry tier Config.RetryTopics
// allows, is a week, so that an absurd delay cannot hold a lane for ever).
// The record's lane stays blocked for the delay (the whole
// partition, with ByPartition), so per-key order holds, and the Attempt
// count lives in this process only.
//
// With Config.RetryTopics it writes the record instead to the retry topic
// of the tier chosen for delay, with its next attempt number, due time and
// origin in headers (HeaderAttempt, HeaderDue, HeaderTopic, …), waits for
// the write to be acknowledged by all in-sync replicas, and then marks the
// record handled: its partition moves on, and the record comes back from
// the retry topic, to this member or another, once it is due. When the
// write fails, the record is retried in process as above (the failure is
// logged): nothing is lost. See "Retry topics" in the package
// documentation.
func (d *delivery) RequeueAfter(ctx context.Context, delay time.Duration) error {
	return d.s.requeueAfter(ctx, d, delay)
}

// maxRequeueDelay caps a RequeueAfter delay: a week, the longest retry
// tier (maxRetryTier). A var for the tests.
var maxRequeueDelay = maxRetryTier

// requeueAfter settles d with a delayed requeue. It is the seam of the
// retry topics: with them (retry.go) a delayed record is written to a tier
// topic instead of being held in process.
func (s *Source) requeueAfter(ctx context.Context, d *delivery, delay time.Duration) error {
	delay = min(delay, maxRequeueDelay)
	if rs := s.retryOwner(); rs != nil && delay > 0 {
		return s.requeueToTier(ctx, rs, d, delay) // retry.go
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := d.claimLocked(); err != nil {
		return err
	}
	s.retryInProcessLocked(d.rec, delay)
	return nil
}

// retryInProcessLocked takes back an unsettled hand-out of rec. The record
// keeps its lane (nothing after it on that lane is handed out first) and
// is handed out again with the next attempt number, after delay if delay >
// 0 (the "blocking" mode of delayed retries). During a revoke it is not
// handed out again: the partition's next owner gets it, since it is not
// committed.
func (s *Source) retryInProcessLocked(rec *record, delay time.Duration) {
	p := rec.p
	if !s.settleOutLocked(p) {
		return
	}
	rec.attempt++
	if delay <= 0 {
		s.ready.push(rec)
		s.wakeLocked()
		return
	}
	// The timer holds the lane, not a consumer slot. Revoke and Close stop
	// it (dropQueuedLocked).
	s.timers[rec] = time.AfterFunc(delay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.timers[rec]; !ok {
			return
		}
		delete(s.timers, rec)
		if p.revoking || s.closed {
			return
		}
		s.ready.push(rec)
		s.wakeLocked()
	})
}

// Release gives back a record no handler saw (it was received as intake
// stopped, at a Pause or a drain): it is handed out again first, with the
// same Attempt, and keeps its place in its lane.
func (d *delivery) Release(context.Context) error {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := d.claimLocked(); err != nil {
		return err
	}
	if !s.settleOutLocked(d.rec.p) {
		return nil
	}
	s.releaseToLaneLocked(d.rec)
	return nil
}

// DeadLetter writes the record to the dead-letter topic with the reason
// (broker.Reason.Header) and its origin (HeaderTopic, HeaderPartition,
// HeaderOffset) in its headers, acknowledged by all in-sync replicas, and
// only then marks it handled. If the write fails, the error is returned
// and the delivery stays unsettled (its lane held, nothing committed): the
// runtime tries again, without running the handler again. The write is
// bounded by ctx: when ctx ends before the acknowledgement, the error wraps
// ctx's and says that the dead letter may still be written (kgo keeps a
// record it has taken), and the delivery stays unsettled likewise, so a
// record may be dead-lettered twice, never lost. If the
// partition was taken away meanwhile, the write happened but the record is
// not committed: the error wraps broker.ErrStaleDelivery, and the
// partition's next owner handles the record again.
func (d *delivery) DeadLetter(ctx context.Context, reason broker.Reason) error {
	s := d.s
	s.mu.Lock()
	err := d.claimLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// The delivery still counts as out while it is written, so a drain
	// waits for the write.
	r := d.rec.r
	if reason.Source == "" {
		reason.Source = d.msg.Topic
	}
	h := reason.Header(messageHeader(r.Headers))
	// Where the record was first consumed from: for a retry record, its
	// original topic, partition, offset and time, from its headers
	// (retry.go).
	topic, part, off, ts := s.originOf(d.rec)
	h[HeaderTopic] = topic
	h[HeaderPartition] = strconv.Itoa(int(part))
	h[HeaderOffset] = strconv.FormatInt(off, 10)
	for _, k := range retryHeaders {
		delete(h, k)
	}
	werr := s.writeDeadLetter(ctx, &kgo.Record{
		Topic: s.cfg.DeadLetterTopic, Key: r.Key, Value: r.Value, Headers: kgoHeaders(h), Timestamp: ts,
	})

	s.mu.Lock()
	defer s.mu.Unlock()
	if werr != nil {
		// Unsettled, lane held: the runtime tries again with backoff.
		d.settled = false
		return fmt.Errorf("franz: dead-letter %s to %s: %w", d.msg.ID, s.cfg.DeadLetterTopic, werr)
	}
	if d.rec.p.fenced {
		// Not committed: a later settlement is told it is stale too.
		d.settled = false
		return fmt.Errorf("%w (it was written to %s)", d.stale(), s.cfg.DeadLetterTopic)
	}
	kick := s.handledLocked(d.rec)
	if kick {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// writeDeadLetter produces rec and waits for its acknowledgement, no
// longer than ctx (the record may then still be written).
func (s *Source) writeDeadLetter(ctx context.Context, rec *kgo.Record) error {
	ctx, leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	return s.produceAcked(ctx, rec) // retry.go
}

// kgoHeaders returns h as record headers.
func kgoHeaders(h map[string]string) []kgo.RecordHeader {
	if len(h) == 0 {
		return nil
	}
	out := make([]kgo.RecordHeader, 0, len(h))
	for k, v := range h {
		out = append(out, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	return out
}
