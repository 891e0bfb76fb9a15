package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/queuekit/queuekit/broker"
	kafkago "github.com/segmentio/kafka-go"
)

// delivery is one hand-out of a record by Receive. A record that is
// requeued is handed out again as a new delivery, so a late second
// settlement of the first one cannot touch the second.
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
	_ broker.Pauser          = (*Source)(nil)
	_ broker.StatusReporter  = (*Source)(nil)
	_ broker.EventSource     = (*Source)(nil)
)

// fillDelivery makes d the hand-out of rec with attempt. d is not shared
// yet: Receive took it for this hand-out under s.mu (see record.out).
func (s *Source) fillDelivery(d *delivery, rec *record, attempt int) {
	m := &rec.m
	id := rec.id
	if id == "" {
		id = messageID(m.Topic, m.Partition, m.Offset)
	}
	topic := m.Topic
	if s.tier != nil {
		// A retry record is the original record to the handler: its
		// topic, its ID, and its attempt number from the headers, which
		// in-process requeues count on from.
		o := readOrigin(m.Headers)
		if o.ok {
			topic, id = o.topic, messageID(o.topic, o.partition, o.offset)
		}
		if o.attempt > 0 {
			attempt += o.attempt - 1
		}
	}
	*d = delivery{s: s, rec: rec, msg: broker.Message{
		ID:      id,
		Topic:   topic,
		Key:     m.Key,
		Body:    m.Value,
		Header:  fromHeaders(m.Headers),
		Time:    s.originTime(rec),
		Attempt: attempt,
	}}
}

func (d *delivery) Message() *broker.Message { return &d.msg }

// Lease implements broker.Leased: the context ends when the delivery's
// generation is fenced (its partitions were taken away after the drain
// budget), and the runtime then cancels the handler with cause
// broker.ErrStaleDelivery.
func (d *delivery) Lease() context.Context { return d.rec.g.lease }

// claimLocked marks d settled, or says why it cannot be.
func (d *delivery) claimLocked() error {
	if d.settled {
		return broker.ErrAlreadySettled
	}
	d.settled = true
	if d.rec.g.fenced {
		return fmt.Errorf("%w: %s: consumer group generation %d ended before it was settled; it will be redelivered",
			broker.ErrStaleDelivery, d.msg.ID, d.rec.g.kg.ID)
	}
	if d.rec.epoch != d.rec.p.epoch {
		d.s.releaseLocked(d.rec, true)
		return d.staleEpoch()
	}
	return nil
}

// staleEpoch is the error for settling a record of a partition log that was
// reset while it was out (see resetBeyondEnd).
func (d *delivery) staleEpoch() error {
	return fmt.Errorf("%w: %s: its partition started over (topic recreated or log truncated) while it was out; the offset belongs to the old log and is not committed",
		broker.ErrStaleDelivery, d.msg.ID)
}

// Ack marks the record handled. Its offset is committed with the next batch
// once every earlier record of its partition is handled too.
func (d *delivery) Ack(context.Context) error {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := d.claimLocked(); err != nil {
		return err
	}
	s.handledLocked(d.rec)
	return nil
}

// handledLocked records that rec is done for good and frees its lane.
func (s *Source) handledLocked(rec *record) {
	g := rec.g
	rec.p.trk.Done(rec.m.Offset)
	if !s.releaseLocked(rec, true) {
		return
	}
	g.settled++
	if g.settled == s.cfg.CommitBatch {
		select {
		case g.kick <- struct{}{}:
		default:
		}
	}
}

// releaseLocked ends rec's hold on its partition (held) and, unless the
// generation is draining, frees its lane: the next record of the lane is
// handed out. dispatched says rec was out (counted in g.dispatched). It
// reports false during a drain.
func (s *Source) releaseLocked(rec *record, dispatched bool) bool {
	g, p := rec.g, rec.p
	if len(s.unwritable) > 0 {
		delete(s.unwritable, rec)
	}
	if dispatched {
		g.dispatched--
	}
	p.held--
	// Wake a fetcher stopped at MaxInFlight only once half the room is
	// free, so that it fetches in bursts instead of waking per record.
	if p.held <= s.cfg.MaxInFlight/2 {
		select {
		case p.room <- struct{}{}:
		default:
		}
	}
	if g.draining {
		// Nothing more is dispatched; the lane stays blocked until the
		// generation ends.
		if g.dispatched == 0 {
			g.closeDrainedLocked()
		}
		return false
	}
	s.freeLaneLocked(p, rec) // lanes.go
	return true
}

// retryLocked takes back an unsettled hand-out of rec. The record keeps its
// lane (nothing after it on that lane is dispatched first) and is handed
// out again with the next attempt number, after delay if delay > 0. During
// a drain it is not handed out again: the partition's next owner gets it,
// since it is not committed.
func (s *Source) retryLocked(rec *record, delay time.Duration) {
	g := rec.g
	g.dispatched--
	if g.draining {
		if g.dispatched == 0 {
			g.closeDrainedLocked()
		}
		return
	}
	rec.attempt++
	if delay <= 0 {
		s.pushReadyLocked(rec)
		return
	}
	// The timer holds the lane, not a consumer slot. A timer that fires
	// after the generation ended or the Source closed drops the record.
	time.AfterFunc(delay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case g.draining || s.closed:
		case rec.epoch != rec.p.epoch:
			// The partition's log was reset meanwhile: the record is gone
			// from it. Free the lane for the new log's records.
			s.releaseLocked(rec, false)
		default:
			s.pushReadyLocked(rec)
		}
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
	rec := d.rec
	g := rec.g
	g.dispatched--
	if g.draining {
		// Not handed out again: the partition's next owner gets it, since
		// it is not committed.
		if g.dispatched == 0 {
			g.closeDrainedLocked()
		}
		return nil
	}
	// Back in its place in its lane: it was the next to be handled (or
	// one of a batch's, see lanes.go).
	s.releaseToLaneLocked(rec)
	return nil
}

// Requeue hands the record out again in process (Kafka has no per-message
// nack), before anything after it in its lane.
func (d *delivery) Requeue(context.Context) error {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := d.claimLocked(); err != nil {
		return err
	}
	s.retryLocked(d.rec, 0)
	return nil
}

// RequeueAfter hands the record out again after delay (a delay <= 0 is a
// Requeue).
//
// With Config.RetryTopics it writes the record to the retry topic of the
// tier chosen for delay, with its next attempt number, due time and origin
// in headers (HeaderAttempt, HeaderDue, HeaderTopic, …), waits for the
// write to be acknowledged by all in-sync replicas, and then marks the
// record handled: its partition moves on, and the record comes back from
// the retry topic, to this member or another, once it is due. When the
// write fails, the record is retried in process as below (the failure is
// logged): nothing is lost.
//
// Without retry topics the record's lane stays blocked for the delay (the
// whole partition, with ByPartition), so per-key order holds, and the
// Attempt count lives in this process only.
func (d *delivery) RequeueAfter(ctx context.Context, delay time.Duration) error {
	s := d.s
	rs := s.retryOwner()
	s.mu.Lock()
	if err := d.claimLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	if rs == nil || delay <= 0 {
		s.retryLocked(d.rec, delay)
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	return d.requeueToTier(ctx, rs, delay)
}

// unwritable reports whether a dead-letter write failed for a reason that
// trying again cannot fix (see ErrDeadLetterUnwritable).
func unwritable(err error) bool {
	var we kafkago.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && unwritable(e) {
				return true
			}
		}
		return false
	}
	for _, code := range []kafkago.Error{kafkago.MessageSizeTooLarge, kafkago.RecordListTooLarge,
		kafkago.InvalidRecord, kafkago.InvalidTopic, kafkago.TopicAuthorizationFailed} {
		if errors.Is(err, code) {
			return true
		}
	}
	return false
}

// ErrDeadLetterTooLarge is wrapped (with ErrDeadLetterUnwritable) by the
// error of a dead letter larger than Config.DeadLetterMaxBytes, which the
// dead-letter writer refuses without sending it.
var ErrDeadLetterTooLarge = errors.New("kafka: dead letter larger than Config.DeadLetterMaxBytes")

// unwritableFix says, for a dead-letter write that failed for good, which
// limit or setting refused it and what lets the partition go on.
func (s *Source) unwritableFix(werr error) string {
	const waits = "its partition waits until the dead letter is written: "
	var we kafkago.WriteErrors
	if errors.As(werr, &we) {
		// One dead letter per request: its error is the one that counts.
		for _, e := range we {
			if e != nil {
				werr = e
				break
			}
		}
	}
	switch {
	case errors.Is(werr, ErrDeadLetterTooLarge):
		// Refused by the writer itself, before any request: only the
		// client's own limit can do that.
		return fmt.Sprintf(waits+"it is larger than Config.DeadLetterMaxBytes (%d); raise it, or set 0 to leave the limit to the dead-letter topic",
			s.cfg.DeadLetterMaxBytes)
	case errors.Is(werr, kafkago.MessageSizeTooLarge), errors.Is(werr, kafkago.RecordListTooLarge):
		return waits + "the broker refused its size; raise the dead-letter topic's max.message.bytes"
	case errors.Is(werr, kafkago.TopicAuthorizationFailed):
		return waits + "grant the client write access to the dead-letter topic"
	}
	return waits + "the broker refused the record for the dead-letter topic"
}

// DeadLetter writes the record to the dead-letter topic with the reason and
// its origin in the headers, and only then marks it handled. If the write
// fails, the error is returned and the delivery stays unsettled (its lane
// held, nothing committed): the runtime tries again with backoff, without
// running the handler again.
func (d *delivery) DeadLetter(ctx context.Context, reason broker.Reason) error {
	s := d.s
	s.mu.Lock()
	err := d.claimLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// The record still counts as dispatched while it is written, so a
	// drain waits for the write.
	m := &d.rec.m
	if reason.Source == "" {
		reason.Source = d.msg.Topic
	}
	h := reason.Header(fromHeaders(m.Headers))
	// Where the record was first consumed from: for a retry record, its
	// original topic, partition and offset, from its headers.
	topic, part, off := s.originOf(d.rec)
	h[HeaderTopic] = topic
	h[HeaderPartition] = strconv.Itoa(part)
	h[HeaderOffset] = strconv.FormatInt(off, 10)
	delete(h, HeaderAttempt)
	delete(h, HeaderDue)
	delete(h, HeaderGroup)
	delete(h, HeaderTime)
	werr := s.dlt.Publish(ctx, s.cfg.DeadLetterTopic, &broker.Message{
		Key: m.Key, Body: m.Value, Header: h, Time: s.originTime(d.rec),
	})

	s.mu.Lock()
	defer s.mu.Unlock()
	if werr != nil {
		// Leave the delivery unsettled and its lane held: the runtime tries
		// the dead letter again with backoff (until the drain deadline),
		// without running the handler again. Nothing is committed meanwhile.
		d.settled = false
		if !unwritable(werr) {
			return fmt.Errorf("kafka: dead-letter %s to %s: %w", d.msg.ID, s.cfg.DeadLetterTopic, werr)
		}
		// Retrying alone will not help: say so loudly (an error log here,
		// Status, and the runtime's EventSettleFailed carries this error),
		// and keep the record — skipping it would lose it.
		size := len(m.Key) + len(m.Value)
		for k, v := range h {
			size += len(k) + len(v)
		}
		var tooLarge kafkago.MessageTooLargeError
		if errors.As(werr, &tooLarge) {
			// kafka-go's text for its own refusal blames the server's
			// limit; this one never reached a server.
			werr = fmt.Errorf("refused by the dead-letter writer before sending (Config.DeadLetterMaxBytes %d): %w",
				s.cfg.DeadLetterMaxBytes, ErrDeadLetterTooLarge)
		}
		err := fmt.Errorf("%w: %s to %s (%d bytes with headers): %w; %s",
			ErrDeadLetterUnwritable, d.msg.ID, s.cfg.DeadLetterTopic, size, werr, s.unwritableFix(werr))
		s.unwritable[d.rec] = err
		s.lastUnwritable = err
		s.log.Error("kafka: dead letter cannot be written, and retrying cannot fix it; the partition is held",
			"message_id", d.msg.ID, "dead_letter_topic", s.cfg.DeadLetterTopic, "bytes", size, "error", werr)
		return err
	}
	if d.rec.g.fenced {
		d.rec.g.dispatched--
		return fmt.Errorf("%w: %s was written to %s but its generation ended first; it will be redelivered",
			broker.ErrStaleDelivery, d.msg.ID, s.cfg.DeadLetterTopic)
	}
	if d.rec.epoch != d.rec.p.epoch {
		s.releaseLocked(d.rec, true)
		return fmt.Errorf("%w (it was written to %s)", d.staleEpoch(), s.cfg.DeadLetterTopic)
	}
	s.handledLocked(d.rec)
	return nil
}

// ErrDeadLetterUnwritable is wrapped by the error of a dead-letter write
// that failed for a reason retrying cannot fix: the dead letter is larger
// than the dead-letter topic's max.message.bytes (or than
// Config.DeadLetterMaxBytes, when set), the record is invalid for that
// topic, or the client is not authorized to write to it. The error text
// names the limit that refused it. The record stays unsettled (its partition
// does not move past it, nothing is lost); the runtime keeps trying with
// backoff, so that the write succeeds once an operator fixed the cause. The
// Source logs each failure as an error and reports it in Status().Err until
// the record is settled.
var ErrDeadLetterUnwritable = errors.New("kafka: dead letter cannot be written; retrying cannot fix it")

// Headers a Source adds to a dead-lettered record, next to the
// broker.Reason headers (x-queuekit-error, -attempts, -source, …).
const (
	// HeaderTopic holds the topic the record was consumed from.
	HeaderTopic = "x-queuekit-topic"
	// HeaderPartition holds the partition the record was consumed from.
	HeaderPartition = "x-queuekit-partition"
	// HeaderOffset holds the offset of the record in that partition.
	HeaderOffset = "x-queuekit-offset"
)
