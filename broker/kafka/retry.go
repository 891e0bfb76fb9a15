package kafka

// Retry topics (Config.RetryTopics): non-blocking delayed redelivery.
//
// Who owns what: the main Source owns the tier writer (s.retry.w) and one
// tier consumer per tier (s.retry.tiers[i].src), each a Source of its own
// over the tier topic, in a consumer group of its own, so that its
// fetches, offsets, drains and commits follow the same gap-safe rules as
// the main topic's. A tier consumer's Receive is never called: the main
// Source's Receive takes its ready records (receiveRetry) under the tier
// consumer's own mutex. They share the main Source's notify channel, so a
// record that becomes ready in a tier wakes a Receive of the main Source.
//
// A tier record is held until its due time (HeaderDue): Receive pops it
// from the tier consumer's ready queue, and when it is not due yet a timer
// (in holds, under the tier consumer's mu) pushes it back when it is. The
// tier consumer runs ByPartition, so a held record is the head of its tier
// partition and nothing behind it is handed out before it: every record of
// a tier partition waits for the one before it, which is due first, or
// at most the tier's length later (see pickTier). A record due later than
// its write time (its Kafka timestamp) plus the tier's length (a delay
// longer than the longest tier) is held only until then, and then written
// to the tail of its tier again (recycle): so a record written at w holds
// its tier partition at most until w + the tier's length, whatever is
// ahead of it, and nothing is kept about a record but the record itself.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	kafkago "github.com/segmentio/kafka-go"
)

// Headers of a record written to a retry topic, next to the record's own
// headers and HeaderTopic, HeaderPartition and HeaderOffset (the original
// topic, partition and offset, kept from the first failure on).
const (
	// HeaderAttempt holds the attempt number of the record's next delivery
	// (2 for the first retry). A Source hands the record out with that
	// Attempt, so the consumer runtime's budget (consumer.WithMaxDeliveries)
	// counts across restarts and group members.
	HeaderAttempt = "x-queuekit-attempt"
	// HeaderDue holds the time, in Unix milliseconds, before which the
	// record is not handed out (the failure's time plus its delay).
	HeaderDue = "x-queuekit-due"
	// HeaderGroup holds the consumer group (Config.GroupID) whose member
	// wrote the record to its retry topic. The retry topics are the
	// group's own (RetryTopicName); a tier consumer commits past a record
	// of another group without handing it out.
	HeaderGroup = "x-queuekit-group"
	// HeaderTime holds the original record's timestamp, in Unix
	// milliseconds: the retry copy is written with the time of the
	// failure (the tier topic's time-based retention counts from then),
	// and a Source hands the retry record out with its original
	// Message.Time.
	HeaderTime = "x-queuekit-time"
)

// RetryTopicName returns the name of the retry topic of topic for the
// consumer group group and tier: the topic, ".retry.", the group, ".", and
// the tier in whole hours ("1h"), minutes ("5m"), seconds ("30s") or
// milliseconds ("1500ms"), the largest unit that divides it. So
// RetryTopicName("orders", "billing", time.Second) is
// "orders.retry.billing.1s". The retry topics belong to a group: two groups
// consuming the same topic (two applications) each retry their own
// failures, and neither sees the other's.
func RetryTopicName(topic, group string, tier time.Duration) string {
	return retryPrefix(topic, group) + tierName(tier)
}

// retryPrefix is what every retry topic of topic and group begins with.
func retryPrefix(topic, group string) string {
	return topic + ".retry." + group + "."
}

func tierName(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
}

// maxRetryTier bounds a tier: a week, far past any delay a retry asks for,
// and well inside what the due header (milliseconds) and timers can hold.
const maxRetryTier = 7 * 24 * time.Hour

// validateRetry checks Config.RetryTopics (already sorted by NewSource).
func (c *Config) validateRetry() error {
	for i, d := range c.RetryTopics {
		switch {
		case d <= 0 || d > maxRetryTier:
			return invalid("RetryTopics[%d] %v, want a delay above 0 and at most %v", i, d, maxRetryTier)
		case d%time.Millisecond != 0:
			return invalid("RetryTopics[%d] %v, want whole milliseconds", i, d)
		case i > 0 && d == c.RetryTopics[i-1]:
			return invalid("RetryTopics: %v given twice", d)
		}
		if i == 0 {
			// The group is part of the retry topics' names: it must be
			// something Kafka accepts in a topic name.
			if err := validTopicName(c.GroupID); err != nil {
				return invalid("RetryTopics: the retry topics are named Topic + \".retry.\" + GroupID + \".\" + tier, and GroupID %.60q holds characters (or is longer than) Kafka accepts in a topic name (a-z, A-Z, 0-9, '.', '_' and '-'); use such a GroupID with RetryTopics", c.GroupID)
			}
		}
		name := RetryTopicName(c.Topic, c.GroupID, d)
		if err := invalidTopic("RetryTopics (Topic + \".retry.\" + GroupID + \".\" + tier)", name); err != nil {
			return err
		}
		switch {
		case name == c.DeadLetterTopic:
			return invalid("retry topic %s is the DeadLetterTopic", name)
		case topicsCollide(name, c.DeadLetterTopic):
			return invalid("retry topic %s and DeadLetterTopic %s differ only by '.' against '_', which Kafka treats as the same name (their metric names collide): one of them cannot be created", name, c.DeadLetterTopic)
		case topicsCollide(name, c.Topic):
			return invalid("retry topic %s and Topic %s differ only by '.' against '_', which Kafka treats as the same name", name, c.Topic)
		}
	}
	return nil
}

// retryState is the main Source's part of the retry topics.
type retryState struct {
	w     *Publisher // writes to every tier topic, acks from all replicas
	tiers []*retryTier
	next  int // under the main Source's mu: the tier Receive looks at first
	// pauseMu orders the main Source's Pause and Resume calls applying
	// their state to the tiers (pauseTiers).
	pauseMu sync.Mutex
}

// retryTier is one tier: its delay, topic, and the consumer of that topic.
type retryTier struct {
	delay time.Duration
	topic string
	src   *Source
}

// tierOf is the tier consumer's part: the main Source it hands records to,
// and the timers holding records until due (under the tier Source's mu):
// at most one per tier partition (its head), plus those of an ended
// generation until the next hold drops them.
type tierOf struct {
	main  *Source
	index int           // the tier's place in Config.RetryTopics (sorted)
	delay time.Duration // the tier's length
	holds map[*record]*time.Timer
}

// newRetry builds the tier writer and consumers of a main Source whose
// cfg (defaulted and valid) has RetryTopics.
func newRetry(s *Source) (*retryState, error) {
	cfg := &s.cfg
	w, err := NewPublisher(PublisherConfig{
		Brokers: cfg.Brokers,
		Dialer:  cfg.Dialer,
		// One record per request, as for dead letters: a record as large
		// as the main topic allows is never refused by the client, nor
		// for the records it was batched with (a refused write falls
		// back to the in-process retry).
		BatchSize:  1,
		BatchBytes: deadLetterBatchBytes(0),
		// A retry write is waited for by the worker that failed the
		// record: never let it wait for others to batch with.
		BatchTimeout: time.Millisecond,
		WriteTimeout: cfg.Timeout,
		RequiredAcks: kafkago.RequireAll,
	})
	if err != nil {
		return nil, err
	}
	rs := &retryState{w: w}
	for i, d := range cfg.RetryTopics {
		tc := *cfg
		tc.Topic = RetryTopicName(cfg.Topic, cfg.GroupID, d)
		// A group of its own per tier: its members joining and leaving
		// never rebalance (drain) the main topic's partitions, nor the
		// other tiers'.
		tc.GroupID = cfg.GroupID + ".retry." + tierName(d)
		tc.Ordering = ByPartition
		tc.RetryTopics = nil
		// Retry records written before this member first joined are
		// still to be handled, whatever the main topic starts from.
		tc.StartOffset = kafkago.FirstOffset
		tc.Logger = cfg.Logger.With("retry_tier", tierName(d))
		src, err := NewSource(tc)
		if err != nil {
			rs.closeAll(context.Background())
			return nil, fmt.Errorf("kafka: retry tier %v: %w", d, err)
		}
		src.tier = &tierOf{main: s, index: i, delay: d, holds: make(map[*record]*time.Timer)}
		// Records that become ready in the tier wake the main Source's
		// Receive.
		src.notify = s.notify
		rs.tiers = append(rs.tiers, &retryTier{delay: d, topic: tc.Topic, src: src})
	}
	return rs, nil
}

// closeAll closes the tier consumers and the writer, at once, bounded by
// ctx, and stops the timers holding records (they are not committed: the
// tier's next owner gets them).
func (rs *retryState) closeAll(ctx context.Context) error {
	errs := make(chan error, len(rs.tiers))
	for _, t := range rs.tiers {
		go func() {
			err := t.src.Close(ctx)
			t.src.mu.Lock()
			for rec, tm := range t.src.tier.holds {
				tm.Stop()
				delete(t.src.tier.holds, rec)
			}
			t.src.mu.Unlock()
			if err != nil {
				err = fmt.Errorf("kafka: retry topic %s: %w", t.topic, err)
			}
			errs <- err
		}()
	}
	all := []error{rs.w.Close(ctx)}
	for range rs.tiers {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// pickTier returns the tier a delay goes to: the shortest tier at least as
// long as the delay, or the longest tier for a longer delay. A record never
// comes back before its own delay (it is held until HeaderDue); in a tier
// it may wait behind records written before it, by at most the tier's
// length minus its delay (plus the time of writing again those due later
// than their write time plus the tier's length, a delay longer than the
// longest tier: see receiveRetry).
func (rs *retryState) pickTier(delay time.Duration) *retryTier {
	for _, t := range rs.tiers {
		if t.delay >= delay {
			return t
		}
	}
	return rs.tiers[len(rs.tiers)-1]
}

// retryOwner returns the retry state a delivery of s writes to: the main
// Source's, for the main Source and its tier consumers alike, or nil when
// there are no retry topics.
func (s *Source) retryOwner() *retryState {
	if s.tier != nil {
		return s.tier.main.retry
	}
	return s.retry
}

// startRetry starts the tier consumers (they join their groups); it
// returns the first error.
func (s *Source) startRetry() error {
	if s.retry == nil {
		return nil
	}
	for _, t := range s.retry.tiers {
		t.src.startOnce.Do(t.src.start)
		if t.src.startErr != nil {
			return t.src.startErr
		}
	}
	return nil
}

// nextRetry starts the tier consumers on first use, and hands out a due
// record of a tier, or returns nil. Receive and ReceiveBatch call it before
// they look at the main topic's ready records.
func (s *Source) nextRetry() (*delivery, error) {
	s.strandedOnce.Do(s.startStrandedCheck)
	if s.retry == nil {
		return nil, nil
	}
	if err := s.startRetry(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	skip := s.paused || s.closed
	s.mu.Unlock()
	if skip {
		return nil, nil
	}
	return s.receiveRetry(), nil
}

// receiveRetry hands out a due record of a tier, or returns nil. The tiers
// are looked at before the main topic's ready queue: their records are few
// (failures), and already late; and in turn, so that no tier starves
// another. paused is the main Source's.
func (s *Source) receiveRetry() *delivery {
	rs := s.retry
	s.mu.Lock()
	start := rs.next
	rs.next = (rs.next + 1) % len(rs.tiers)
	s.mu.Unlock()
	now := time.Now()
	for i := range rs.tiers {
		ts := rs.tiers[(start+i)%len(rs.tiers)].src
		ts.mu.Lock()
		for !ts.closed && ts.ready.len() > 0 {
			rec := ts.ready.pop()
			if !ownRecord(rec, s.cfg.GroupID) {
				// Written by a member of another group (never by this
				// package, whose retry topics are a group's own):
				// commit past it.
				ts.handOutLocked(rec)
				ts.handledLocked(rec)
				ts.log.Warn("kafka: skipping a record of another consumer group in a retry topic",
					"retry_topic", rec.m.Topic, "partition", rec.m.Partition, "offset", rec.m.Offset)
				continue
			}
			if wait := dueIn(rec, now); wait > 0 {
				// A record holds its tier partition at most until its
				// write time plus the tier's length (see headLimit);
				// one due later (a delay longer than the longest tier)
				// is then written to the tail of the tier.
				switch limit := ts.headLimit(rec, now); {
				case wait <= limit+dueSlack:
					ts.holdLocked(rec, wait, false)
				case limit <= 0:
					ts.recycleLocked(rec)
				default:
					ts.holdLocked(rec, limit, true)
				}
				continue
			}
			d, attempt := ts.handOutLocked(rec)
			more := ts.ready.len() > 0
			ts.mu.Unlock()
			if more {
				// Pass the wake-up on (the channel is the main Source's).
				select {
				case s.notify <- struct{}{}:
				default:
				}
			}
			ts.fillDelivery(d, rec, attempt)
			return d
		}
		ts.mu.Unlock()
	}
	return nil
}

// dueSlack covers the rounding of a tier record's due time (rounded up to
// the millisecond) and timestamp (truncated): a record written with a
// delay of exactly its tier's length is not written again for it.
const dueSlack = 2 * time.Millisecond

// headLimit is how much longer rec, a tier record at the head of its tier
// partition, may hold it: until its Kafka timestamp (the copy is written
// with the time of its write, see requeueToTier and recycle) plus the
// tier's length, and never more than a tier's length from now. So a
// timestamp in the future of this member's clock (a writer's clock ahead,
// or one set by someone else) counts from now, the time it is first seen
// at the head; a missing or old one gives 0 or less: written again at once
// (the copy then has a timestamp of this member's clock).
func (s *Source) headLimit(rec *record, now time.Time) time.Duration {
	return min(s.tier.delay, rec.m.Time.Add(s.tier.delay).Sub(now))
}

// holdLocked keeps rec, a tier record not due yet, out of the ready queue
// for wait; its lane (the tier partition) stays busy meanwhile. Then it is
// handed out, or, with rewrite and still not due, written to the tail of
// its tier (recycleLocked). A timer that fires after the generation ended
// or the Source closed drops the record: it is not committed, so the
// tier's next owner reads it again.
func (s *Source) holdLocked(rec *record, wait time.Duration, rewrite bool) {
	g := rec.g
	// Timers of ended generations hold nothing any more (their records go
	// to the tier's next owner): stop them rather than keep their records
	// until they fire, a tier's length later.
	for r, tm := range s.tier.holds {
		if r.g.draining {
			tm.Stop()
			delete(s.tier.holds, r)
		}
	}
	s.tier.holds[rec] = time.AfterFunc(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.tier.holds, rec)
		switch {
		case g.draining || s.closed:
		case rec.epoch != rec.p.epoch:
			s.releaseLocked(rec, false)
		case rewrite && dueIn(rec, time.Now()) > 0:
			s.recycleLocked(rec)
		default:
			s.ready.pushFront(rec)
			s.wakeLocked()
		}
	})
}

// recycleLocked writes rec, a tier record at the head of its tier
// partition and not due yet, to the tail of its tier (recycle). It counts
// as handed out meanwhile, so that its lane stays busy and a drain waits
// for the write.
func (s *Source) recycleLocked(rec *record) {
	s.handOutLocked(rec)
	go s.recycle(rec)
}

// recycle writes rec, a tier record handed out (dispatched) to nobody,
// due later than its write time plus the tier's length, to the tail of its
// tier topic as it is (same headers: attempt, due time, origin) with the
// current time, acknowledged by all in-sync replicas, and then marks it
// handled. When the write fails it is held a tier's length again, and then
// written again (or handed out if due by then).
func (s *Source) recycle(rec *record) {
	rs := s.tier.main.retry
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	m := &rec.m
	werr := rs.write(ctx, kafkago.Message{Topic: m.Topic, Key: m.Key, Value: m.Value,
		Headers: slices.Clone(m.Headers), Time: time.Now()})
	s.mu.Lock()
	defer s.mu.Unlock()
	g := rec.g
	switch {
	case werr != nil:
		s.log.Warn("kafka: writing a retry record due later than its tier's length to the tail of its tier failed; holding it at the head a tier's length again",
			"retry_topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "error", werr)
		g.dispatched--
		if g.draining {
			if g.dispatched == 0 {
				g.closeDrainedLocked()
			}
			return
		}
		if s.closed {
			return
		}
		s.holdLocked(rec, s.tier.delay, true)
	case g.fenced:
		// The copy was written; the original, not committed, goes to
		// the partition's next owner too: it comes twice (at least once).
		g.dispatched--
	case rec.epoch != rec.p.epoch:
		s.releaseLocked(rec, true)
	default:
		s.handledLocked(rec)
	}
}

// dueMillis is t in Unix milliseconds, rounded up: truncated, a record
// could come back up to a millisecond before its delay.
func dueMillis(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// ownRecord reports whether rec, a tier record, was written by a member of
// group (or carries no HeaderGroup).
func ownRecord(rec *record, group string) bool {
	for _, h := range rec.m.Headers {
		if h.Key == HeaderGroup {
			return string(h.Value) == group
		}
	}
	return true
}

// dueIn is how long rec, a tier record, is still to be held (<= 0: due).
// A record without a readable HeaderDue is due at once.
func dueIn(rec *record, now time.Time) time.Duration {
	for _, h := range rec.m.Headers {
		if h.Key == HeaderDue {
			ms, err := strconv.ParseInt(string(h.Value), 10, 64)
			if err != nil {
				return 0
			}
			return time.UnixMilli(ms).Sub(now)
		}
	}
	return 0
}

// origin is where a tier record was first consumed from, and the attempt
// its next delivery counts as, read from its headers. ok is false when the
// headers are missing or unreadable (a record someone else wrote to the
// tier topic): it is then handed out as a record of the tier topic.
type origin struct {
	topic     string
	partition int
	offset    int64
	attempt   int
	ok        bool
}

func readOrigin(hs []kafkago.Header) origin {
	var o origin
	var have int
	for _, h := range hs {
		v := string(h.Value)
		switch h.Key {
		case HeaderTopic:
			if validTopicName(v) == nil {
				o.topic = v
				have |= 1
			}
		case HeaderPartition:
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				o.partition = n
				have |= 2
			}
		case HeaderOffset:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				o.offset = n
				have |= 4
			}
		case HeaderAttempt:
			if n, err := strconv.Atoi(v); err == nil && n >= 1 {
				o.attempt = n
			}
		}
	}
	o.ok = have == 7
	return o
}

// originOf returns where rec was first consumed from: the record itself
// for the main topic, its headers for a tier record.
func (s *Source) originOf(rec *record) (topic string, partition int, offset int64) {
	m := &rec.m
	if s.tier != nil {
		if o := readOrigin(m.Headers); o.ok {
			return o.topic, o.partition, o.offset
		}
	}
	return m.Topic, m.Partition, m.Offset
}

// originTime returns the timestamp of the record rec was first consumed
// as: its own for the main topic, HeaderTime's for a tier record (its
// own when the header is missing or unreadable).
func (s *Source) originTime(rec *record) time.Time {
	if s.tier != nil {
		for _, h := range rec.m.Headers {
			if h.Key == HeaderTime {
				if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
					return time.UnixMilli(ms)
				}
				break
			}
		}
	}
	return rec.m.Time
}

// requeueToTier writes d's record (claimed) to the retry tier for delay,
// and marks it handled once the write was acknowledged by all in-sync
// replicas, so that its partition moves on. When the write fails, the
// record is retried in process instead, as without retry topics (it holds
// its lane for the delay): nothing is lost, and the failure is logged.
func (d *delivery) requeueToTier(ctx context.Context, rs *retryState, delay time.Duration) error {
	s := d.s
	rec := d.rec
	m := &rec.m
	t := rs.pickTier(delay)
	topic, part, off := s.originOf(rec)
	hs := retryHeaders(m.Headers,
		kafkago.Header{Key: HeaderTopic, Value: []byte(topic)},
		kafkago.Header{Key: HeaderPartition, Value: []byte(strconv.Itoa(part))},
		kafkago.Header{Key: HeaderOffset, Value: []byte(strconv.FormatInt(off, 10))},
		kafkago.Header{Key: HeaderAttempt, Value: []byte(strconv.Itoa(d.msg.Attempt + 1))},
		kafkago.Header{Key: HeaderDue, Value: []byte(strconv.FormatInt(dueMillis(time.Now().Add(delay)), 10))},
		kafkago.Header{Key: HeaderGroup, Value: []byte(s.retryGroup())})
	if ot := s.originTime(rec); !ot.IsZero() {
		hs = retryHeaders(hs, kafkago.Header{Key: HeaderTime, Value: []byte(strconv.FormatInt(ot.UnixMilli(), 10))})
	}
	// The record still counts as dispatched while it is written, so a
	// drain waits for the write. It is written with the time of the
	// failure: with the original's, the tier topic's retention.ms (or
	// message.timestamp.*) could delete or refuse it before it is due.
	werr := rs.write(ctx, kafkago.Message{Topic: t.topic, Key: m.Key, Value: m.Value, Headers: hs, Time: time.Now()})

	s.mu.Lock()
	defer s.mu.Unlock()
	if werr != nil {
		s.log.Warn("kafka: writing a record to its retry topic failed; retrying it in process instead, holding its lane for the delay",
			"message_id", d.msg.ID, "retry_topic", t.topic, "delay", delay, "error", werr)
		s.retryLocked(rec, delay)
		return nil
	}
	if rec.g.fenced {
		rec.g.dispatched--
		return fmt.Errorf("%w: %s was written to %s but its generation ended first; it will be redelivered too",
			broker.ErrStaleDelivery, d.msg.ID, t.topic)
	}
	if rec.epoch != rec.p.epoch {
		s.releaseLocked(rec, true)
		return fmt.Errorf("%w (it was written to %s)", d.staleEpoch(), t.topic)
	}
	s.handledLocked(rec)
	return nil
}

// retryGroup is the group whose retry topics s writes to: its own, or its
// main Source's for a tier consumer.
func (s *Source) retryGroup() string {
	if s.tier != nil {
		return s.tier.main.cfg.GroupID
	}
	return s.cfg.GroupID
}

// retryHeaders returns the headers of a retry copy: the record's own
// headers hs, in order and with repeated keys kept, less those of the keys
// set, followed by set.
func retryHeaders(hs []kafkago.Header, set ...kafkago.Header) []kafkago.Header {
	out := make([]kafkago.Header, 0, len(hs)+len(set))
	for _, h := range hs {
		if !slices.ContainsFunc(set, func(x kafkago.Header) bool { return x.Key == h.Key }) {
			out = append(out, h)
		}
	}
	return append(out, set...)
}

// write writes m, a record of a tier topic, acknowledged by all in-sync
// replicas. It writes the record's headers as they are (Publish takes a
// map, which would keep one value of a repeated key).
func (rs *retryState) write(ctx context.Context, m kafkago.Message) error {
	p := rs.w
	if p.closed.Load() {
		return fmt.Errorf("kafka: write to %s: %w", m.Topic, broker.ErrPublisherClosed)
	}
	if err := ctxEnded(ctx); err != nil {
		return fmt.Errorf("kafka: write to %s: nothing was written: %w", m.Topic, err)
	}
	err := p.w.WriteMessages(ctx, m)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kafkago.UnknownTopicOrPartition):
		return fmt.Errorf("kafka: write: topic %s does not exist (see Source.DeclareTopology): %w", m.Topic, err)
	}
	return fmt.Errorf("kafka: write to %s: %w", m.Topic, err)
}

// startStrandedCheck looks, once, in the background (a call Close waits
// for, see enter), for retry topics of the group that the config does not
// have (see strandedTiers).
func (s *Source) startStrandedCheck() {
	ctx, leave, err := s.enter(context.Background())
	if err != nil {
		return
	}
	go func() {
		defer leave()
		ctx, cancel := context.WithTimeout(ctx, 2*s.cfg.Timeout)
		defer cancel()
		msg, err := s.strandedTiers(ctx)
		if err != nil {
			s.log.Info("kafka: could not look for retry topics left over from an earlier config", "error", err)
			return
		}
		if msg == "" {
			return
		}
		err = fmt.Errorf("kafka: retry records stranded: %s; nothing consumes them (Config.RetryTopics does not have their tiers): add their tiers back to Config.RetryTopics until their lag is 0, then remove them", msg)
		s.log.Warn("kafka: retry topics of this group that the config does not have still hold records", "error", err)
		s.mu.Lock()
		s.stranded = err
		s.mu.Unlock()
	}()
}

// strandedTiers lists the cluster's topics and returns, for each retry
// topic of s's topic and group (RetryTopicName) whose tier Config.RetryTopics
// does not have and which still holds records past its tier group's
// committed offsets, "<topic> (<n> records)"; "" when there is none.
func (s *Source) strandedTiers(ctx context.Context) (string, error) {
	md, err := s.lagCli.Metadata(ctx, &kafkago.MetadataRequest{})
	if err != nil {
		return "", fmt.Errorf("metadata: %w", err)
	}
	prefix := retryPrefix(s.cfg.Topic, s.cfg.GroupID)
	var out []string
	for _, t := range md.Topics {
		tier, ok := strings.CutPrefix(t.Name, prefix)
		if !ok || t.Error != nil || strings.Contains(tier, ".") || slices.Contains(s.retryTopicNames(), t.Name) {
			continue
		}
		var ids []int
		reqs := make([]kafkago.OffsetRequest, 0, 2*len(t.Partitions))
		for _, p := range t.Partitions {
			ids = append(ids, p.ID)
			reqs = append(reqs, kafkago.FirstOffsetOf(p.ID), kafkago.LastOffsetOf(p.ID))
		}
		lo, err := s.lagCli.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{t.Name: reqs}})
		if err != nil {
			return "", fmt.Errorf("list offsets of %s: %w", t.Name, err)
		}
		of, err := s.lagCli.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: s.cfg.GroupID + ".retry." + tier, Topics: map[string][]int{t.Name: ids}})
		if err != nil {
			return "", fmt.Errorf("offset fetch of %s: %w", t.Name, err)
		}
		committed := map[int]int64{}
		for _, p := range of.Topics[t.Name] {
			if p.Error == nil {
				committed[p.Partition] = p.CommittedOffset
			}
		}
		var lag int64
		for _, p := range lo.Topics[t.Name] {
			if p.Error != nil {
				continue
			}
			if c, ok := committed[p.Partition]; ok && c >= 0 {
				lag += max(p.LastOffset-c, 0)
			} else {
				lag += p.LastOffset - p.FirstOffset
			}
		}
		if lag > 0 {
			out = append(out, fmt.Sprintf("%s (%d records)", t.Name, lag))
		}
	}
	return strings.Join(out, ", "), nil
}

// pauseTiers makes the tier consumers paused exactly when their main
// Source is, so that they stop fetching too. Pause and Resume call it
// after setting s.paused: it applies the state of the last of them to
// have set it, under rs.pauseMu, so that a Pause and a Resume called at
// once never leave the tiers in the state of the first (each applied its
// own after releasing s.mu: the tiers could stay paused while the main
// Source ran).
func (s *Source) pauseTiers(ctx context.Context) {
	if s.retry == nil {
		return
	}
	s.retry.pauseMu.Lock()
	defer s.retry.pauseMu.Unlock()
	s.mu.Lock()
	pause := s.paused
	s.mu.Unlock()
	for _, t := range s.retry.tiers {
		if pause {
			t.src.Pause(ctx)
		} else {
			t.src.Resume(ctx)
		}
	}
}

// retryTopicNames returns the tier topics, shortest tier first.
func (s *Source) retryTopicNames() []string {
	var names []string
	for _, d := range s.cfg.RetryTopics {
		names = append(names, RetryTopicName(s.cfg.Topic, s.cfg.GroupID, d))
	}
	return names
}

// sortedTiers returns a sorted copy of tiers (the caller's slice is not
// changed).
func sortedTiers(tiers []time.Duration) []time.Duration {
	if len(tiers) == 0 {
		return nil
	}
	return slices.Sorted(slices.Values(tiers))
}

// retryTopicErr reports, for Status, a tier consumer that cannot join its
// group (its retries do not come back meanwhile) or whose topic cannot be
// read (missing).
func (s *Source) retryTopicErr() error {
	if s.retry == nil {
		return nil
	}
	for _, t := range s.retry.tiers {
		t.src.mu.Lock()
		st, err := t.src.status, t.src.topicErr
		t.src.mu.Unlock()
		if st.Err != nil && !st.Connected {
			return t.src.tierGroupErr(st.Err)
		}
		if err != nil {
			return fmt.Errorf("kafka: retry topic: %w", err)
		}
	}
	return nil
}

// tierGroupErr is err, an error of s (a tier consumer) joining its group,
// as its main Source reports it.
func (s *Source) tierGroupErr(err error) error {
	return fmt.Errorf("kafka: retry tier group %s (topic %s), whose retries do not come back until it joins: %w",
		s.cfg.GroupID, s.cfg.Topic, err)
}
