package franz

// Retry topics (Config.RetryTopics): non-blocking delayed redelivery, with
// the kafka adapter's design and wire format (broker/kafka/retry.go), so
// that members of both adapters share a group's tier topics and groups.
//
// Who owns what: the main Source owns one tier consumer per tier
// (s.retry.tiers[i].src), each a Source of its own over the tier topic, in
// a consumer group of its own (GroupID + ".retry." + the tier), so that
// its fetches, offsets, drains and commits follow the same gap-safe rules
// as the main topic's. The tier writes go through the main Source's admin
// client (acks from all in-sync replicas, idempotent), counted as its
// calls (enter), so that Close waits for them. A tier consumer's Receive
// is never called: the main Source's Receive and ReceiveBatch take its
// ready records (takeRetry) under the tier consumer's own mutex. Its
// notify channel is the main Source's, and its waiting count stays 1 (its
// main Source is always a waiter), so that a record becoming ready in a
// tier wakes the main Source's Receive. Lock order: a tier consumer's mu
// may be held while the main Source's is taken, never the other way.
//
// A tier record is held until its due time (HeaderDue): Receive pops it
// from the tier consumer's ready queue, and when it is not due yet a timer
// (in the tier consumer's timers, which revokes and Close stop) pushes it
// back when it is. The tier consumer runs ByPartition, so a held record is
// the head of its tier partition and nothing behind it is handed out
// before it. A record due later than its write time (its Kafka timestamp)
// plus the tier's length (a delay longer than the longest tier) is held
// only until then, and then written to the tail of its tier again
// (recycle): a record written at w holds its tier partition at most until
// w + the tier's length, and nothing is kept about a record but the record
// itself.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
)

// Headers of a record written to a retry topic, next to the record's own
// headers and HeaderTopic, HeaderPartition and HeaderOffset (the original
// topic, partition and offset, kept from the first failure on). They are
// the kafka adapter's (kafka.HeaderAttempt, …).
const (
	// HeaderAttempt holds the attempt number of the record's next delivery
	// (2 for the first retry). A Source hands the record out with that
	// Attempt, so the consumer runtime's budget (consumer.WithMaxDeliveries)
	// counts across restarts, group members and adapters.
	HeaderAttempt = "x-queuekit-attempt"
	// HeaderDue holds the time, in Unix milliseconds, before which the
	// record is not handed out (the failure's time plus its delay).
	HeaderDue = "x-queuekit-due"
	// HeaderGroup holds the consumer group (Config.GroupID) whose member
	// wrote the record to its retry topic. A tier consumer commits past a
	// record of another group without handing it out.
	HeaderGroup = "x-queuekit-group"
	// HeaderTime holds the original record's timestamp, in Unix
	// milliseconds: the retry copy is written with the time of the
	// failure, and a Source hands the retry record out with its original
	// Message.Time.
	HeaderTime = "x-queuekit-time"
)

// retryState is the main Source's part of the retry topics.
type retryState struct {
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

// tierOf is a tier consumer's part: the main Source it hands records to,
// its place among the tiers and its length, and the last error of its
// group management (kgo's HookGroupManageError), under the tier Source's
// mu.
type tierOf struct {
	main     *Source
	index    int
	delay    time.Duration
	groupErr error
}

// tierHook passes a tier client's group-management errors to its main
// Source: its retries do not come back while its group cannot be joined.
type tierHook struct{ s *Source }

var _ kgo.HookGroupManageError = (*tierHook)(nil)

func (h *tierHook) OnGroupManageError(err error) {
	s := h.s
	if s == nil || errors.Is(err, kgo.ErrClientClosed) || errors.Is(err, context.Canceled) {
		return
	}
	s.mu.Lock()
	s.tier.groupErr = err
	s.mu.Unlock()
	s.tier.main.emit(broker.EventReconnecting, s.tierGroupErr(err))
}

// newRetry makes the tier consumers of s, whose cfg (defaulted and valid)
// has RetryTopics.
func newRetry(s *Source) (*retryState, error) {
	cfg := &s.cfg
	rs := &retryState{}
	for i, d := range cfg.RetryTopics {
		tc := *cfg
		tc.Topic = RetryTopicName(cfg.Topic, cfg.GroupID, d)
		// A group of its own per tier: its members joining and leaving
		// never rebalance (drain) the main topic's partitions, nor the
		// other tiers'. Same names as the kafka adapter's tier groups.
		tc.GroupID = cfg.GroupID + ".retry." + tierName(d)
		tc.Ordering = ByPartition
		tc.RetryTopics = nil
		// Retry records written before this member first joined are
		// still to be handled, whatever the main topic starts from.
		tc.StartOffset = FirstOffset
		tc.Logger = cfg.Logger.With("retry_tier", tierName(d))
		hook := &tierHook{}
		tc.ClientOptions = append(slices.Clone(cfg.ClientOptions), kgo.WithHooks(hook))
		src, err := NewSource(tc)
		if err != nil {
			rs.closeAll(context.Background())
			return nil, fmt.Errorf("franz: retry tier %v: %w", d, err)
		}
		src.tier = &tierOf{main: s, index: i, delay: d}
		hook.s = src
		// Records that become ready in the tier wake the main Source's
		// Receive: the tier's wake-ups go to the main Source's channel,
		// and the tier always has a waiter (see the top of this file).
		src.notify = s.notify
		src.waiting = 1
		rs.tiers = append(rs.tiers, &retryTier{delay: d, topic: tc.Topic, src: src})
	}
	return rs, nil
}

// closeTiers closes the tier consumers of s, at once, bounded by ctx, and
// returns a func that waits for them and returns their errors.
func (s *Source) closeTiers(ctx context.Context) func() error {
	if s.retry == nil {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() { done <- s.retry.closeAll(ctx) }()
	return func() error { return <-done }
}

// closeAll closes the tier consumers, at once, bounded by ctx. The records
// they hold are not committed: the tier's next owner gets them.
func (rs *retryState) closeAll(ctx context.Context) error {
	errs := make(chan error, len(rs.tiers))
	for _, t := range rs.tiers {
		go func() {
			err := t.src.Close(ctx)
			if err != nil {
				err = fmt.Errorf("franz: retry topic %s: %w", t.topic, err)
			}
			errs <- err
		}()
	}
	var all []error
	for range rs.tiers {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// pickTier returns the tier a delay goes to: the shortest tier at least as
// long as the delay, or the longest tier for a longer delay.
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

// takeRetry is Receive's and ReceiveBatch's look at the tiers (s.retry is
// set), before the main topic's ready records: it starts the tier
// consumers on first use and returns a due record of a tier, or nil.
// waited says the caller counted itself in s.waiting: when something is
// returned, it is counted out.
func (s *Source) takeRetry(waited bool) (broker.Delivery, error) {
	var d broker.Delivery
	var err error
	for _, t := range s.retry.tiers {
		if err = t.src.begin(); err != nil {
			break
		}
	}
	if err == nil {
		if td := s.receiveRetry(); td != nil {
			d = td
		}
	}
	if (d != nil || err != nil) && waited {
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
	}
	return d, err
}

// receiveRetry hands out a due record of a tier, or returns nil. The tiers
// are looked at in turn, so that no tier starves another; nothing while
// the main Source is paused or closed.
func (s *Source) receiveRetry() *delivery {
	rs := s.retry
	s.mu.Lock()
	if s.paused || s.closed {
		s.mu.Unlock()
		return nil
	}
	start := rs.next
	rs.next = (rs.next + 1) % len(rs.tiers)
	s.mu.Unlock()
	now := time.Now()
	for i := range rs.tiers {
		ts := rs.tiers[(start+i)%len(rs.tiers)].src
		ts.mu.Lock()
		for !ts.closed {
			rec := ts.ready.pop()
			if rec == nil {
				break
			}
			if !ownRecord(rec, s.cfg.GroupID) {
				// Written by a member of another group (never by a
				// queuekit adapter, whose retry topics are a group's
				// own): commit past it.
				ts.handOutLocked(rec)
				if ts.handledLocked(rec) {
					ts.kickCommit()
				}
				ts.log.Warn("franz: skipping a record of another consumer group in a retry topic",
					"retry_topic", rec.r.Topic, "partition", rec.r.Partition, "offset", rec.r.Offset)
				continue
			}
			if wait := dueIn(rec, now); wait > 0 {
				// A record holds its tier partition at most until its
				// write time plus the tier's length (see headLimit); one
				// due later (a delay longer than the longest tier) is
				// then written to the tail of the tier.
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
			ts.mu.Unlock()
			// Pass the wake-up on: the tier or the main topic may have
			// more (one wake-up may stand for several records).
			s.signal()
			ts.fillTier(d, rec, attempt)
			return d
		}
		ts.mu.Unlock()
	}
	return nil
}

// kickCommit wakes the committer (CommitBatch settled).
func (s *Source) kickCommit() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// dueSlack covers the rounding of a tier record's due time (rounded up to
// the millisecond) and timestamp (truncated): a record written with a
// delay of exactly its tier's length is not written again for it.
const dueSlack = 2 * time.Millisecond

// headLimit is how much longer rec, a tier record at the head of its tier
// partition, may hold it: until its Kafka timestamp (the copy is written
// with the time of its write) plus the tier's length, and never more than
// a tier's length from now. A timestamp in the future of this member's
// clock counts from now; a missing or old one gives 0 or less: written
// again at once.
func (s *Source) headLimit(rec *record, now time.Time) time.Duration {
	return min(s.tier.delay, rec.r.Timestamp.Add(s.tier.delay).Sub(now))
}

// holdLocked keeps rec, a tier record not due yet, out of the ready queue
// for wait; its lane (the tier partition) stays busy meanwhile. Then it is
// handed out, or, with rewrite and still not due, written to the tail of
// its tier (recycleLocked). The timer is one of s.timers: a revoke of its
// partition or Close stops it, and the record, not committed, goes to the
// tier's next owner.
func (s *Source) holdLocked(rec *record, wait time.Duration, rewrite bool) {
	s.timers[rec] = time.AfterFunc(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.timers[rec]; !ok {
			return
		}
		delete(s.timers, rec)
		switch {
		case rec.p.revoking || s.closed:
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
	ctx, leave, err := s.tier.main.enter(context.Background())
	if err != nil {
		// The main Source is closing (and so is this one): the record
		// stays uncommitted, for the tier's next owner.
		s.settleOutLocked(rec.p)
		return
	}
	go func() {
		defer leave()
		s.recycle(ctx, rec)
	}()
}

// retryWriteTimeout bounds a recycle write.
const retryWriteTimeout = 30 * time.Second

// recycle (entered in the main Source: see recycleLocked) writes rec, a
// tier record handed out to nobody, due later than its write time plus
// the tier's length, to the tail of its tier topic as
// it is (same headers: attempt, due time, origin) with the current time,
// acknowledged by all in-sync replicas, and then marks it handled. When
// the write fails it is held a tier's length again, and then written again
// (or handed out if due by then).
func (s *Source) recycle(ctx context.Context, rec *record) {
	ctx, cancel := context.WithTimeout(ctx, retryWriteTimeout)
	defer cancel()
	r := rec.r
	werr := s.tier.main.produceTier(ctx, &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value,
		Headers: slices.Clone(r.Headers), Timestamp: time.Now()})
	s.mu.Lock()
	defer s.mu.Unlock()
	p := rec.p
	switch {
	case werr != nil:
		s.log.Warn("franz: writing a retry record due later than its tier's length to the tail of its tier failed; holding it at the head a tier's length again",
			"retry_topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "error", werr)
		if !s.settleOutLocked(p) || s.closed {
			return
		}
		s.holdLocked(rec, s.tier.delay, true)
	case p.fenced:
		// The copy was written; the original, not committed, goes to
		// the partition's next owner too: it comes twice (at least once).
	default:
		if s.handledLocked(rec) {
			s.kickCommit()
		}
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
	for _, h := range rec.r.Headers {
		if h.Key == HeaderGroup {
			return string(h.Value) == group
		}
	}
	return true
}

// dueIn is how long rec, a tier record, is still to be held (<= 0: due).
// A record without a readable HeaderDue is due at once.
func dueIn(rec *record, now time.Time) time.Duration {
	for _, h := range rec.r.Headers {
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
	partition int32
	offset    int64
	attempt   int
	ok        bool
}

func readOrigin(hs []kgo.RecordHeader) origin {
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
			if n, err := strconv.ParseInt(v, 10, 32); err == nil && n >= 0 {
				o.partition = int32(n)
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

// originOf returns where rec was first consumed from and its timestamp
// there: the record itself for the main topic, its headers for a tier
// record (its own coordinates or time where they are missing or
// unreadable).
func (s *Source) originOf(rec *record) (topic string, partition int32, offset int64, ts time.Time) {
	r := rec.r
	if s.tier == nil {
		return r.Topic, r.Partition, r.Offset, r.Timestamp
	}
	topic, partition, offset = r.Topic, r.Partition, r.Offset
	if o := readOrigin(r.Headers); o.ok {
		topic, partition, offset = o.topic, o.partition, o.offset
	}
	return topic, partition, offset, originTime(r)
}

// originTime is HeaderTime's time of r, a tier record, or its own
// timestamp when the header is missing or unreadable.
func originTime(r *kgo.Record) time.Time {
	for _, h := range r.Headers {
		if h.Key == HeaderTime {
			if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
				return time.UnixMilli(ms)
			}
			break
		}
	}
	return r.Timestamp
}

// fillTier makes d the hand-out of rec, a tier record, with attempt: the
// original record to the handler, with its topic, ID and time, and its
// attempt number from the headers, which in-process requeues count on
// from.
func (s *Source) fillTier(d *delivery, rec *record, attempt int) {
	r := rec.r
	o := readOrigin(r.Headers)
	topic, id := r.Topic, rec.id
	if o.ok {
		topic = o.topic
		id = o.topic + "/" + strconv.FormatInt(int64(o.partition), 10) + "/" + strconv.FormatInt(o.offset, 10)
	}
	if o.attempt > 0 {
		attempt += o.attempt - 1
	}
	*d = delivery{s: s, rec: rec, msg: broker.Message{
		ID:      id,
		Topic:   topic,
		Key:     r.Key,
		Body:    r.Value,
		Header:  messageHeader(r.Headers),
		Time:    originTime(r),
		Attempt: attempt,
	}}
}

// requeueToTier settles d, a delivery of s (the main Source or a tier
// consumer), by writing its record to the retry tier for delay, and marks
// it handled once the write was acknowledged by all in-sync replicas, so
// that its partition moves on. When the write fails, the record is retried
// in process instead, as without retry topics (it holds its lane for the
// delay): nothing is lost, and the failure is logged.
func (s *Source) requeueToTier(ctx context.Context, rs *retryState, d *delivery, delay time.Duration) error {
	s.mu.Lock()
	err := d.claimLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// The record still counts as out while it is written, so a drain
	// waits for the write.
	rec := d.rec
	r := rec.r
	t := rs.pickTier(delay)
	topic, part, off, ot := s.originOf(rec)
	set := []kgo.RecordHeader{
		{Key: HeaderTopic, Value: []byte(topic)},
		{Key: HeaderPartition, Value: []byte(strconv.FormatInt(int64(part), 10))},
		{Key: HeaderOffset, Value: []byte(strconv.FormatInt(off, 10))},
		{Key: HeaderAttempt, Value: []byte(strconv.Itoa(d.msg.Attempt + 1))},
		{Key: HeaderDue, Value: []byte(strconv.FormatInt(dueMillis(time.Now().Add(delay)), 10))},
		{Key: HeaderGroup, Value: []byte(s.retryGroup())},
	}
	if !ot.IsZero() {
		set = append(set, kgo.RecordHeader{Key: HeaderTime, Value: []byte(strconv.FormatInt(ot.UnixMilli(), 10))})
	}
	// Written with the time of the failure: with the original's, the
	// tier topic's retention.ms (or message.timestamp.*) could delete or
	// refuse it before it is due.
	werr := s.mainSource().writeTier(ctx, &kgo.Record{Topic: t.topic, Key: r.Key, Value: r.Value,
		Headers: tierHeaders(r.Headers, set), Timestamp: time.Now()})

	s.mu.Lock()
	defer s.mu.Unlock()
	if werr != nil {
		s.log.Warn("franz: writing a record to its retry topic failed; retrying it in process instead, holding its lane for the delay",
			"message_id", d.msg.ID, "retry_topic", t.topic, "delay", delay, "error", werr)
		s.retryInProcessLocked(rec, delay)
		return nil
	}
	if rec.p.fenced {
		d.settled = false // not committed: a later settlement is stale too
		return fmt.Errorf("%w: %s was written to %s but its partition was taken from this member first; it will be redelivered too",
			broker.ErrStaleDelivery, d.msg.ID, t.topic)
	}
	if s.handledLocked(rec) {
		s.kickCommit()
	}
	return nil
}

// mainSource is s, or its main Source for a tier consumer.
func (s *Source) mainSource() *Source {
	if s.tier != nil {
		return s.tier.main
	}
	return s
}

// retryGroup is the group whose retry topics s writes to: its own, or its
// main Source's for a tier consumer.
func (s *Source) retryGroup() string {
	return s.mainSource().cfg.GroupID
}

// tierHeaders returns the headers of a retry copy: the record's own
// headers hs, in order and with repeated keys kept, less those of the keys
// set, followed by set.
func tierHeaders(hs, set []kgo.RecordHeader) []kgo.RecordHeader {
	out := make([]kgo.RecordHeader, 0, len(hs)+len(set))
	for _, h := range hs {
		if !slices.ContainsFunc(set, func(x kgo.RecordHeader) bool { return x.Key == h.Key }) {
			out = append(out, h)
		}
	}
	return append(out, set...)
}

// writeTier writes rec, a record of a tier topic, with s's admin client
// (s is a main Source), acknowledged by all in-sync replicas. Close waits
// for it (enter).
func (s *Source) writeTier(ctx context.Context, rec *kgo.Record) error {
	ctx, leave, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("franz: write to %s: nothing was written: %w", rec.Topic, err)
	}
	defer leave()
	return s.produceTier(ctx, rec)
}

// produceTier produces rec on s's admin client; the caller entered.
func (s *Source) produceTier(ctx context.Context, rec *kgo.Record) error {
	err := s.produceAcked(ctx, rec)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("franz: write: topic %s does not exist (see Source.DeclareTopology): %w", rec.Topic, err)
	}
	return fmt.Errorf("franz: write to %s: %w", rec.Topic, err)
}

// produceAcked produces rec on s's admin client and waits for its
// acknowledgement, no longer than ctx. kgo's idempotent producer keeps a
// record it has taken until it is acknowledged or the client closes,
// whatever the record's ctx does (ProduceSync would wait for it), so the
// wait is on ctx here: when ctx ends first, produceAcked returns an error
// wrapping ctx's, and the record may still be written (at-least-once). The
// record carries a ctx cancelled with ctx only while it is handed over (a
// full buffer makes Produce wait), as Publish's records do.
func (s *Source) produceAcked(ctx context.Context, rec *kgo.Record) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("nothing was written: %w", err)
	}
	done := make(chan error, 1)
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	s.admin.Produce(rctx, rec, func(_ *kgo.Record, err error) { done <- err })
	stop()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // finished meanwhile: its outcome is known
			return err
		default:
			return fmt.Errorf("not yet acknowledged, it may still be written: %w", ctx.Err())
		}
	}
}

// strandedTimeout bounds the look for stranded retry topics.
const strandedTimeout = 30 * time.Second

// startStrandedCheck looks, once, in the background, for retry topics of
// the group that the config does not have (see strandedTiers). Start calls
// it; Close cancels it and waits for it (enter).
func (s *Source) startStrandedCheck() {
	if s.tier != nil {
		return
	}
	ctx, leave, err := s.enter(context.Background())
	if err != nil {
		return
	}
	go func() {
		defer leave()
		ctx, cancel := context.WithTimeout(ctx, strandedTimeout)
		defer cancel()
		go func() {
			select {
			case <-s.closedCh:
				cancel()
			case <-ctx.Done():
			}
		}()
		msg, err := s.strandedTiers(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Info("franz: could not look for retry topics left over from an earlier config", "error", err)
			}
			return
		}
		if msg == "" {
			return
		}
		err = fmt.Errorf("franz: retry records stranded: %s; nothing consumes them (Config.RetryTopics does not have their tiers): add their tiers back to Config.RetryTopics until their lag is 0, then remove them", msg)
		s.log.Warn("franz: retry topics of this group that the config does not have still hold records", "error", err)
		s.stranded.Store(&err)
	}()
}

// strandedTiers lists the cluster's topics and returns, for each retry
// topic of s's topic and group (RetryTopicName) whose tier Config.RetryTopics
// does not have and which still holds records past its tier group's
// committed offsets, "<topic> (<n> records)"; "" when there is none.
func (s *Source) strandedTiers(ctx context.Context) (string, error) {
	tds, err := s.adm.ListTopics(ctx)
	if err != nil {
		return "", fmt.Errorf("list topics: %w", err)
	}
	prefix := s.cfg.Topic + ".retry." + s.cfg.GroupID + "."
	configured := s.retryTopicNames()
	var out []string
	for _, name := range tds.Names() {
		tier, ok := strings.CutPrefix(name, prefix)
		if !ok || tds[name].Err != nil || strings.Contains(tier, ".") || slices.Contains(configured, name) {
			continue
		}
		starts, err := s.adm.ListStartOffsets(ctx, name)
		if err != nil {
			return "", fmt.Errorf("list offsets of %s: %w", name, err)
		}
		ends, err := s.adm.ListEndOffsets(ctx, name)
		if err != nil {
			return "", fmt.Errorf("list offsets of %s: %w", name, err)
		}
		done, err := s.adm.FetchOffsetsForTopics(ctx, s.cfg.GroupID+".retry."+tier, name)
		if errors.Is(err, kerr.GroupIDNotFound) {
			done, err = nil, nil // the tier group never committed
		}
		if err != nil {
			return "", fmt.Errorf("offset fetch of %s: %w", name, err)
		}
		var lag int64
		ends.Each(func(e kadm.ListedOffset) {
			if e.Err != nil {
				return
			}
			if c, ok := done.Lookup(name, e.Partition); ok && c.Err == nil && c.At >= 0 {
				lag += max(e.Offset-c.At, 0)
			} else if st, ok := starts.Lookup(name, e.Partition); ok && st.Err == nil {
				lag += max(e.Offset-st.Offset, 0)
			}
		})
		if lag > 0 {
			out = append(out, fmt.Sprintf("%s (%d records)", name, lag))
		}
	}
	return strings.Join(out, ", "), nil
}

// pauseTiers makes the tier consumers paused exactly when their main
// Source is, so that they stop fetching too. Pause and Resume call it
// after setting s.paused: it applies the state of the last of them to
// have set it, under rs.pauseMu, so that a Pause and a Resume called at
// once never leave the tiers in the state of the first.
func (s *Source) pauseTiers() {
	if s.retry == nil {
		return
	}
	s.retry.pauseMu.Lock()
	defer s.retry.pauseMu.Unlock()
	s.mu.Lock()
	pause := s.paused
	s.mu.Unlock()
	for _, t := range s.retry.tiers {
		t.src.setPaused(pause)
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

// retryStatusErr reports, for Status, a tier consumer that cannot join its
// group (its retries do not come back meanwhile: its topic is missing, or
// the coordinator refuses the group) or whose topic cannot be read, and
// the retry topics found stranded.
func (s *Source) retryStatusErr() error {
	if s.retry != nil {
		for _, t := range s.retry.tiers {
			ts := t.src
			ts.mu.Lock()
			st, gerr := ts.statusLocked(time.Now()), ts.tier.groupErr
			ts.mu.Unlock()
			switch {
			case !st.Connected && gerr != nil:
				return ts.tierGroupErr(gerr)
			case !st.Connected && st.Err != nil:
				return ts.tierGroupErr(st.Err)
			case st.Err != nil:
				return fmt.Errorf("franz: retry topic %s: %w", t.topic, st.Err)
			}
		}
	}
	if p := s.stranded.Load(); p != nil {
		return *p
	}
	return nil
}

// tierGroupErr is err, an error of s (a tier consumer) joining its group,
// as its main Source reports it.
func (s *Source) tierGroupErr(err error) error {
	return fmt.Errorf("franz: retry tier group %s (topic %s), whose retries do not come back until it joins: %w",
		s.cfg.GroupID, s.cfg.Topic, err)
}
