package kafka

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka/internal/offsets"
	"github.com/queuekit/queuekit/retry"
)

// ErrRebalance is wrapped by the Err of the broker.EventRebalanced event a
// Source emits when a generation of its consumer group ended (a member joined
// or left, or the coordinator moved). The Source drains, commits and rejoins
// by itself. The error text says how many in-flight records finished during
// the drain and how many were fenced.
var ErrRebalance = errors.New("kafka: consumer group rebalance")

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
// consumer.Reason headers (x-queuekit-error, -attempts, -source, …).
const (
	// HeaderTopic holds the topic the record was consumed from.
	HeaderTopic = "x-queuekit-topic"
	// HeaderPartition holds the partition the record was consumed from.
	HeaderPartition = "x-queuekit-partition"
	// HeaderOffset holds the offset of the record in that partition.
	HeaderOffset = "x-queuekit-offset"
)

// A Source consumes one topic as a member of a Kafka consumer group and
// implements consumer.Source (plus StatusReporter, EventSource and
// DelayedRequeuer on its deliveries). See the package documentation for the
// guarantees. A Source is safe for concurrent use. It joins the group on the
// first Receive; after Close it cannot be used again.
type Source struct {
	cfg    Config
	log    *slog.Logger
	dlt    *Publisher
	lagTr  *kafkago.Transport
	lagCli *kafkago.Client
	// The fetchers' transport and client (offsets of a partition), apart
	// from the lag client's: their metadata is refreshed often, so that a
	// fetch follows a moved partition leader quickly.
	fetchTr  *kafkago.Transport
	fetchCli *kafkago.Client
	addr     net.Addr
	seed     maphash.Seed
	hook     atomic.Pointer[func(broker.Event)]

	// The group and the run goroutine are created once by start. They are
	// written before startOnce.Do returns and only read after it.
	startOnce sync.Once
	group     *kafkago.ConsumerGroup
	startErr  error
	cancelRun context.CancelFunc
	runDone   chan struct{}

	// mu guards everything below and every field of generation, partition,
	// lane and record documented as "under s.mu". One lock keeps the
	// settle/dispatch/commit bookkeeping simple to reason about; it is held
	// only for short, non-blocking sections.
	mu        sync.Mutex
	ready     []*record // records whose lane is free, waiting for Receive
	closed    bool
	status    broker.Status
	gen       *generation // the current generation, or nil
	notify    chan struct{}
	closedCh  chan struct{}
	closeDone chan struct{}
	// unwritable holds the records whose last dead-letter write failed
	// with ErrDeadLetterUnwritable, and the error; Status reports them.
	unwritable     map[*record]error
	lastUnwritable error
	// partCount is the topic's partition count the current assignment is
	// based on, as last read (0: the topic was missing; -1: never read).
	// topicErr is set while the topic cannot be read (missing, deleted);
	// Status reports it. Both are written by watchPartitions and run.
	partCount int
	topicErr  error
}

// NewSource returns a Source for cfg. It returns an error wrapping
// consumer.ErrInvalidConfig when cfg is invalid. It does not connect: the
// first Receive joins the group.
func NewSource(cfg Config) (*Source, error) {
	cfg.Brokers = append([]string(nil), cfg.Brokers...)
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dlt, err := NewPublisher(PublisherConfig{
		Brokers: cfg.Brokers,
		Topic:   cfg.DeadLetterTopic,
		Dialer:  cfg.Dialer,
		// One dead letter per request: a broker's MESSAGE_TOO_LARGE then
		// is about that record alone, never about others it was batched
		// with, and so says for sure that retrying cannot fix it.
		BatchSize:    1,
		BatchBytes:   deadLetterBatchBytes(cfg.DeadLetterMaxBytes),
		BatchTimeout: cfg.DeadLetterBatchTimeout,
		WriteTimeout: cfg.Timeout,
	})
	if err != nil {
		return nil, err
	}
	tr := transport(cfg.Dialer)
	ftr := transport(cfg.Dialer)
	ftr.MetadataTTL = fetchMetadataTTL
	ftr.MetadataTopics = []string{cfg.Topic}
	addr := kafkago.TCP(cfg.Brokers...)
	return &Source{
		fetchTr:    ftr,
		fetchCli:   &kafkago.Client{Addr: addr, Timeout: cfg.Timeout, Transport: ftr},
		addr:       addr,
		cfg:        cfg,
		log:        cfg.Logger.With("topic", cfg.Topic, "group", cfg.GroupID),
		dlt:        dlt,
		lagTr:      tr,
		lagCli:     &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: tr},
		seed:       maphash.MakeSeed(),
		notify:     make(chan struct{}, 1),
		closedCh:   make(chan struct{}),
		closeDone:  make(chan struct{}),
		status:     broker.Status{Err: errors.New("kafka: not joined yet")},
		unwritable: make(map[*record]error),
		partCount:  -1,
	}, nil
}

// deadLetterBatchBytes is the dead-letter writer's BatchBytes for
// Config.DeadLetterMaxBytes: with one dead letter per request it only
// limits the size of a dead letter, so with no limit of the client's own
// (0) it is as large as a Kafka request can be, and the dead-letter topic's
// max.message.bytes decides.
func deadLetterBatchBytes(limit int) int64 {
	if limit == 0 {
		return math.MaxInt32
	}
	return int64(limit)
}

func errorLogger(l *slog.Logger) func(string, ...any) {
	return func(msg string, args ...any) {
		l.Warn("kafka-go: " + fmt.Sprintf(msg, args...))
	}
}

// SetEventHook implements consumer.EventSource. The hook is called from the
// Source's goroutines, never while a lock is held, and never after Close
// returned.
func (s *Source) SetEventHook(f func(broker.Event)) {
	if f == nil {
		s.hook.Store(nil)
		return
	}
	s.hook.Store(&f)
}

func (s *Source) emit(kind broker.EventKind, err error) {
	if f := s.hook.Load(); f != nil {
		(*f)(broker.Event{Kind: kind, Err: err, Time: time.Now()})
	}
}

// Status implements consumer.StatusReporter: Connected is true while the
// Source is a member of the group (including during a rebalance); Err is the
// last error from joining — or, while a member, an error saying that the
// topic does not exist (or its partitions cannot be read), or one wrapping
// ErrDeadLetterUnwritable while records wait for a dead-letter write that
// retrying cannot fix (their partitions do not move meanwhile).
func (s *Source) Status() broker.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	if st.Err == nil && s.topicErr != nil {
		st.Err = s.topicErr
	}
	if n := len(s.unwritable); n > 0 && st.Err == nil {
		st.Err = fmt.Errorf("kafka: %d record(s) hold their partitions; the latest: %w", n, s.lastUnwritable)
	}
	return st
}

func (s *Source) start() {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	cfg := &s.cfg
	g, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                cfg.GroupID,
		Brokers:           cfg.Brokers,
		Dialer:            cfg.Dialer,
		Topics:            []string{cfg.Topic},
		HeartbeatInterval: cfg.HeartbeatInterval,
		SessionTimeout:    cfg.SessionTimeout,
		RebalanceTimeout:  cfg.RebalanceTimeout,
		JoinGroupBackoff:  cfg.JoinGroupBackoff,
		StartOffset:       cfg.StartOffset,
		Timeout:           cfg.Timeout,
		// Not kafka-go's WatchPartitionChanges: its watcher returns when
		// it cannot read the topic's partitions (the topic is missing or
		// deleted), and a generation ends as soon as any of its functions
		// returns — a rejoin per round trip, hundreds a second. Each
		// generation runs watchPartitions instead.
		ErrorLogger: kafkago.LoggerFunc(errorLogger(cfg.Logger)),
	})
	if err != nil {
		s.startErr = broker.Fatal(fmt.Errorf("kafka: consumer group: %w", err))
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.group, s.cancelRun, s.runDone = g, cancel, make(chan struct{})
	go s.run(ctx)
}

// run owns the group membership: it takes each generation from the group
// and starts its goroutines. kafka-go hands out the next generation only
// after every goroutine of the previous one returned, so two generations
// never overlap.
func (s *Source) run(ctx context.Context) {
	defer close(s.runDone)
	for {
		s.mu.Lock()
		unknown := s.partCount < 0
		s.mu.Unlock()
		if unknown {
			// The count the coming assignment is based on, as near the join
			// as can be read, for watchPartitions to compare with: a topic
			// created between this read and the join costs one extra
			// rebalance; read only after the join, it would be missed.
			if n, err := s.partitionCount(ctx); err == nil || errors.Is(err, kafkago.UnknownTopicOrPartition) {
				s.mu.Lock()
				s.partCount = n
				s.mu.Unlock()
			}
		}
		kg, err := s.group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafkago.ErrGroupClosed) {
				return
			}
			s.mu.Lock()
			s.status = broker.Status{Err: err}
			s.mu.Unlock()
			if errors.Is(err, kafkago.RebalanceInProgress) {
				// Another member joined or left while this one was joining:
				// the normal way a group forms, not a failure.
				s.log.Info("kafka: the group is rebalancing; joining again", "error", err)
			} else {
				s.log.Warn("kafka: joining the consumer group failed; retrying", "error", err)
			}
			s.emit(broker.EventReconnecting, err)
			continue // the group backs off by itself
		}
		s.serve(kg)
	}
}

// A generation is this member's share of one consumer group generation.
type generation struct {
	s     *Source
	kg    *kafkago.Generation
	parts map[int]*partition // fixed after serve
	kick  chan struct{}      // asks the committer to commit now; cap 1

	draining   bool // under s.mu: no more dispatching; settling still counts
	fenced     bool // under s.mu: settling returns ErrStaleDelivery
	dispatched int  // under s.mu: handed out by Receive and not settled
	settled    int  // under s.mu: settled since the last commit
	drained    chan struct{}
	drainOnce  bool // under s.mu: drained was closed

	// lease is the context of the generation's deliveries (consumer.Leased):
	// endLease cancels it when the generation fences them, so that the
	// runtime cancels handlers still running on records this member no
	// longer owns, instead of letting them overlap the new owner's.
	lease    context.Context
	endLease context.CancelFunc
}

// A partition is one assigned partition within a generation.
type partition struct {
	id        int
	start     int64 // assigned offset (committed, or FirstOffset/LastOffset)
	trk       offsets.Tracker
	lanes     map[uint64]*lane // under s.mu; a lane exists while busy
	held      int              // under s.mu: fetched and not settled
	room      chan struct{}    // wakes the fetcher when held drops; cap 1
	committed int64            // owned by the committer goroutine
	// epoch counts the resets of the partition's log (topic recreated, log
	// truncated: see resetBeyondEnd). Written under s.mu by the partition's
	// fetcher only, so the fetcher may read it without the lock. A record
	// of an earlier epoch is fenced: its offset means nothing in the new
	// log, so settling it never touches trk.
	epoch int
}

// A lane is the unit of ordering: the whole partition (ByPartition) or one
// key hash (ByKey). At most one record of a lane is out at a time; the rest
// wait in q, in offset order.
type lane struct {
	q []*record
}

// A record is one fetched Kafka message. It lives until it is settled for
// good (acked, dead-lettered) or its generation ends; Requeue sends the same
// record out again.
type record struct {
	g       *generation
	p       *partition
	lane    uint64
	m       kafkago.Message
	attempt int // under s.mu
	epoch   int // the partition's epoch when the record was fetched
	// skip marks a record never handed out — a transaction marker, or a
	// record of an aborted transaction (see read) — which counts as
	// handled for the commit as soon as it is queued.
	skip bool
}

func (s *Source) serve(kg *kafkago.Generation) {
	g := &generation{
		s:       s,
		kg:      kg,
		parts:   make(map[int]*partition),
		kick:    make(chan struct{}, 1),
		drained: make(chan struct{}),
	}
	g.lease, g.endLease = context.WithCancel(context.Background())
	ids := make([]int, 0, len(kg.Assignments[s.cfg.Topic]))
	for _, a := range kg.Assignments[s.cfg.Topic] {
		g.parts[a.ID] = &partition{
			id: a.ID, start: a.Offset, lanes: make(map[uint64]*lane),
			room: make(chan struct{}, 1), committed: a.Offset,
		}
		ids = append(ids, a.ID)
	}
	s.mu.Lock()
	s.gen = g
	s.status = broker.Status{Connected: true}
	s.mu.Unlock()
	s.log.Info("kafka: generation started", "generation", kg.ID, "member", kg.MemberID, "partitions", ids)
	s.emit(broker.EventConnected, nil)

	// Every function started here returns when the generation ends;
	// kafka-go waits for all of them before it rejoins or leaves, which is
	// what gives the drain its chance to commit before the partitions move.
	kg.Start(g.commitLoop)
	kg.Start(g.watchPartitions)
	for _, p := range g.parts {
		kg.Start(func(ctx context.Context) { g.fetch(ctx, p) })
	}
}

// watchPartitions ends the generation, by returning, when the topic's
// partition count grew past the one its assignment is based on (partitions
// were added, or the topic appeared), so that the next generation assigns
// them; otherwise they would wait for
// an unrelated rebalance. It reads the count every PartitionWatchInterval.
// A topic that cannot be read — missing, deleted, or an error — never ends
// the generation: the fetchers wait for it, Status reports it, the log says
// so at most once a minute, and a failed read is retried with backoff. A
// topic that appears (again) is compared like any count.
func (g *generation) watchPartitions(ctx context.Context) {
	s := g.s
	interval := s.cfg.PartitionWatchInterval
	var (
		fails   int
		lastLog time.Time
	)
	for {
		n, err := s.partitionCount(ctx)
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		base := s.partCount
		switch {
		case err == nil:
			s.topicErr = nil
			if base < 0 {
				s.partCount, base = n, n
			}
		case errors.Is(err, kafkago.UnknownTopicOrPartition):
			s.topicErr = fmt.Errorf("kafka: topic %s does not exist (deleted, or not created yet); waiting for it: %w", s.cfg.Topic, err)
			if base < 0 {
				s.partCount = 0
			}
		default:
			s.topicErr = fmt.Errorf("kafka: reading the partitions of topic %s: %w", s.cfg.Topic, err)
		}
		// Only a count that grew ends the generation: Kafka never removes
		// partitions, and a smaller count is a stale view (the fetchers'
		// metadata is refreshed every fetchMetadataTTL) right after the
		// rejoin that a growth caused — taking it for a change would
		// rebalance twice more.
		changed := err == nil && n > base
		if changed {
			s.partCount = n // the next generation's assignment is based on n
		}
		topicErr := s.topicErr
		s.mu.Unlock()
		if changed {
			s.log.Info("kafka: the topic's partition count changed; rejoining the group for a new assignment",
				"from", base, "to", n, "generation", g.kg.ID)
			return
		}
		wait := interval
		if err != nil {
			if now := time.Now(); now.Sub(lastLog) >= time.Minute {
				lastLog = now
				s.log.Warn("kafka: cannot read the topic's partitions; its fetchers wait", "error", topicErr)
			}
			if !errors.Is(err, kafkago.UnknownTopicOrPartition) {
				fails++
				wait = min(backoff(fails), interval)
			}
		} else {
			if !lastLog.IsZero() {
				lastLog = time.Time{}
				s.log.Info("kafka: the topic's partitions can be read again", "partitions", n)
			}
			fails = 0
		}
		if !retry.Sleep(ctx, wait) {
			return
		}
	}
}

// noteTopicError shows in Status, at once, a fetcher's error saying that
// the topic does not exist (deleted while the group runs); watchPartitions
// clears it when it reads the topic's partitions again. It reports whether
// err was that error; the fetcher then leaves the logging to
// watchPartitions (once a minute) instead of a warning per retry.
func (s *Source) noteTopicError(err error) bool {
	if !errors.Is(err, kafkago.UnknownTopicOrPartition) {
		return false
	}
	s.mu.Lock()
	s.topicErr = fmt.Errorf("kafka: topic %s does not exist (deleted, or not created yet); waiting for it: %w", s.cfg.Topic, err)
	s.mu.Unlock()
	return true
}

// partitionCount reads the topic's partition count from the fetchers'
// client, whose metadata is refreshed every fetchMetadataTTL. A missing
// topic is an error wrapping kafkago.UnknownTopicOrPartition, with count 0.
func (s *Source) partitionCount(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	md, err := s.fetchCli.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{s.cfg.Topic}})
	if err != nil {
		return 0, err
	}
	for _, t := range md.Topics {
		if t.Name != s.cfg.Topic {
			continue
		}
		if t.Error != nil {
			return 0, t.Error
		}
		if len(t.Partitions) == 0 {
			return 0, fmt.Errorf("kafka: no partitions: %w", kafkago.UnknownTopicOrPartition)
		}
		return len(t.Partitions), nil
	}
	return 0, fmt.Errorf("kafka: no metadata for the topic: %w", kafkago.UnknownTopicOrPartition)
}

// resetBeyondEnd picks where to fetch a partition whose committed or next
// offset lies beyond its end: the first or last offset, by StartOffset. The
// offset tracker starts over when nothing is pending in it, so that the
// records below the stale offset are tracked (and committed) again.
//
// The partition starts a new epoch with a new offset tracker: the new log's
// offsets are at or below the old ones, which the old tracker would refuse
// as duplicates (and commit past). Records of the old log waiting for
// Receive are dropped (they no longer exist in the log); those still out
// (being handled, or waiting for a delayed requeue) are fenced: settling
// them returns consumer.ErrStaleDelivery and only frees their lane, which
// new records of the same lane wait for, so a lane still has one record out
// at a time.
func (g *generation) resetBeyondEnd(p *partition, offset, first, last int64) int64 {
	s := g.s
	to := first
	if s.cfg.StartOffset == kafkago.LastOffset {
		to = last
	}
	s.mu.Lock()
	p.epoch++
	p.trk = offsets.Tracker{}
	// Every record of the old log that is not out is forgotten
	// (forgetLocked): first the heads waiting for Receive, whose lanes end
	// with the records queued behind them, then the records queued behind
	// heads that are out.
	dropped := 0
	kept := s.ready[:0]
	for _, r := range s.ready {
		if r.p == p {
			dropped += s.forgetLocked(r, true)
			continue
		}
		kept = append(kept, r)
	}
	clear(s.ready[len(kept):])
	s.ready = kept
	for _, ln := range p.lanes {
		for _, r := range ln.q {
			dropped += s.forgetLocked(r, false)
		}
		clear(ln.q)
		ln.q = nil
	}
	// What is left is one lane per record still out (being handled, or
	// waiting for a delayed requeue): fenced, each freeing its lane when
	// settled.
	fenced := len(p.lanes)
	s.mu.Unlock()
	s.log.Error("kafka: offset beyond the end of the partition (log truncated or topic recreated); starting over",
		"partition", p.id, "offset", offset, "first", first, "last", last, "restart_at", to,
		"dropped_unstarted", dropped, "fenced_in_flight", fenced)
	return to
}

// queue puts as many of recs on their lanes as the partition has room for
// (MaxInFlight) and returns the rest. When there is no room it waits for
// some. It reports false when the generation is ending.
func (g *generation) queue(ctx context.Context, p *partition, recs []*record) ([]*record, bool) {
	rest, ok := g.queueLocked(p, recs)
	if !ok || len(rest) < len(recs) {
		return rest, ok
	}
	select {
	case <-p.room:
		return rest, true
	case <-ctx.Done():
		return nil, false
	}
}

// queueLocked puts as many of recs on their lanes as there is room for,
// taking s.mu once, and returns the rest; false if the generation is ending.
// When all were queued it returns recs[:0], for reuse.
// uncommittedWindow bounds, in multiples of MaxInFlight, how far past its
// oldest unfinished record a partition is fetched (see Config.MaxInFlight).
const uncommittedWindow = 4

func (g *generation) queueLocked(p *partition, recs []*record) ([]*record, bool) {
	s := g.s
	s.mu.Lock()
	if g.draining {
		s.mu.Unlock()
		return nil, false
	}
	// Room is bounded twice: records held (queued or being handled), and
	// the uncommitted window behind the oldest unfinished record (records
	// handled out of order behind it count until it finishes).
	room := min(s.cfg.MaxInFlight-p.held, uncommittedWindow*s.cfg.MaxInFlight-p.trk.Pending())
	n := min(max(room, 0), len(recs))
	woke := false
	for _, rec := range recs[:n] {
		if rec.epoch != p.epoch {
			continue // fetched from the log before a reset (resetBeyondEnd)
		}
		if rec.skip {
			if p.trk.Add(rec.m.Offset) {
				p.trk.Done(rec.m.Offset)
			}
			continue
		}
		if !p.trk.Add(rec.m.Offset) {
			// An offset fetched twice (never expected): keep the tracker
			// consistent by not handing it out twice.
			continue
		}
		p.held++
		if ln, busy := p.lanes[rec.lane]; busy {
			ln.q = append(ln.q, rec)
		} else {
			p.lanes[rec.lane] = &lane{}
			s.ready = append(s.ready, rec)
			woke = true
		}
	}
	if woke {
		s.wakeLocked()
	}
	s.mu.Unlock()
	if n == len(recs) {
		clear(recs)
		return recs[:0], true
	}
	clear(recs[:n])
	return recs[n:], true
}

// forgetLocked takes rec, a record that is not out, off the partition's
// bookkeeping without handling it, and returns how many records it forgot.
// If rec is its lane's head (waiting for Receive; the caller takes it off
// s.ready) the lane ends, and the records queued behind it are forgotten
// with it; otherwise rec is one of those queued records (the caller clears
// the lane's q). It is the one place that undoes queueLocked's accounting
// for records never handed out, so that held stays equal to the partition's
// lanes plus the records queued on them: the fetcher's room and its wake-up
// (held <= MaxInFlight/2) depend on it.
func (s *Source) forgetLocked(rec *record, head bool) int {
	p := rec.p
	delete(s.unwritable, rec)
	p.held--
	n := 1
	if head {
		if ln := p.lanes[rec.lane]; ln != nil {
			n += len(ln.q)
			p.held -= len(ln.q)
			clear(ln.q)
			delete(p.lanes, rec.lane)
		}
	}
	return n
}

// backoff is the wait before retry number n (n >= 1): 100 ms doubling up
// to 2 s.
func backoff(n int) time.Duration {
	return 100 * time.Millisecond << min(n-1, 4)
}

func (s *Source) pushReadyLocked(rec *record) {
	s.ready = append(s.ready, rec)
	s.wakeLocked()
}

// wakeLocked wakes one Receive waiting for a record, if any.
func (s *Source) wakeLocked() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// commitLoop commits the generation's progress by count and interval, and
// drains and commits a last time when the generation ends.
func (g *generation) commitLoop(ctx context.Context) {
	t := time.NewTicker(g.s.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-g.kick:
		case <-ctx.Done():
			g.drain()
			return
		}
		g.commit()
	}
}

// drain runs when the generation ends: stop dispatching, wait up to
// DrainTimeout for records already handed out, fence the rest, commit.
func (g *generation) drain() {
	s := g.s
	start := time.Now()
	s.mu.Lock()
	g.draining = true
	// Records waiting for Receive were never started: leave them to the
	// partition's next owner (they are not committed).
	kept := s.ready[:0]
	for _, r := range s.ready {
		if r.g != g {
			kept = append(kept, r)
		}
	}
	clear(s.ready[len(kept):])
	s.ready = kept
	waiting := g.dispatched
	if waiting == 0 {
		g.closeDrainedLocked()
	}
	s.mu.Unlock()

	timer := time.NewTimer(s.cfg.DrainTimeout)
	select {
	case <-g.drained:
	case <-timer.C:
	}
	timer.Stop()

	s.mu.Lock()
	g.fenced = true
	g.endLease()
	for r := range s.unwritable {
		if r.g == g {
			delete(s.unwritable, r) // the partition's next owner has it now
		}
	}
	fenced := g.dispatched
	if s.gen == g {
		s.gen = nil
	}
	closing := s.closed
	s.mu.Unlock()

	err := g.finalCommit(start.Add(s.cfg.DrainTimeout))
	s.log.Info("kafka: generation ended", "generation", g.kg.ID, "in_flight_at_end", waiting,
		"fenced", fenced, "drain", time.Since(start), "commit_error", err)
	if !closing {
		// EventRebalanced, not EventReconnecting: the connection is fine,
		// the group moved partitions (metrics count the two apart).
		s.emit(broker.EventRebalanced, fmt.Errorf("%w: generation %d ended (%d in flight finished, %d fenced)",
			ErrRebalance, g.kg.ID, waiting-fenced, fenced))
	}
}

func (g *generation) closeDrainedLocked() {
	if !g.drainOnce {
		g.drainOnce = true
		close(g.drained)
	}
}

// finalCommit is the commit at the end of the generation: the last chance to
// record what was handled before the next owner reads the offsets. A
// failure that retrying can fix (the coordinator loading or moving, a
// rebalance in progress, a broken connection) is retried with backoff until
// deadline — the drain budget — and for at least half a DrainTimeout after
// the first failure, so that a drain that spent its budget waiting for
// handlers still gets a few tries. Retries go through a client that finds
// the group's coordinator afresh: the generation's own connection may be the
// broken one, or lead to a broker that is no longer the coordinator.
func (g *generation) finalCommit(deadline time.Time) error {
	s := g.s
	err := g.commit()
	if err == nil || !retriableCommit(err) {
		return err
	}
	deadline = later(deadline, time.Now().Add(s.cfg.DrainTimeout/2))
	wait := 50 * time.Millisecond
	for tries := 1; ; tries++ {
		if !time.Now().Add(wait).Before(deadline) {
			s.log.Error("kafka: the final commit failed within the drain budget; the partitions' next owner will handle again what was handled since the last commit",
				"generation", g.kg.ID, "tries", tries, "error", err)
			return err
		}
		time.Sleep(wait) // the generation has ended: nothing to cancel this wait but the budget
		wait = min(2*wait, time.Second)
		err = g.commitWith(func(offs map[int]int64) error {
			ctx, cancel := context.WithDeadline(context.Background(), later(deadline, time.Now().Add(100*time.Millisecond)))
			defer cancel()
			return g.commitViaClient(ctx, offs)
		})
		if err == nil {
			s.log.Info("kafka: the final commit succeeded after retries", "generation", g.kg.ID, "tries", tries+1)
			return nil
		}
		if !retriableCommit(err) {
			s.log.Error("kafka: the final commit failed; the partitions' next owner will handle again what was handled since the last commit",
				"generation", g.kg.ID, "tries", tries+1, "error", err)
			return err
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// commitViaClient commits offs for the generation through the Source's
// client, which routes the request to the group's current coordinator.
func (g *generation) commitViaClient(ctx context.Context, offs map[int]int64) error {
	s := g.s
	req := &kafkago.OffsetCommitRequest{
		GroupID:      s.cfg.GroupID,
		GenerationID: int(g.kg.ID),
		MemberID:     g.kg.MemberID,
		Topics:       map[string][]kafkago.OffsetCommit{s.cfg.Topic: make([]kafkago.OffsetCommit, 0, len(offs))},
	}
	for id, off := range offs {
		req.Topics[s.cfg.Topic] = append(req.Topics[s.cfg.Topic], kafkago.OffsetCommit{Partition: id, Offset: off})
	}
	resp, err := s.lagCli.OffsetCommit(ctx, req)
	if err != nil {
		return err
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return p.Error
			}
		}
	}
	return nil
}

// retriableCommit reports whether a failed commit may succeed if sent again
// within the same generation: the coordinator is loading, moving or
// rebalancing, or the request or connection failed. Not when the member was
// fenced (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID: a new owner may already be
// reading the offsets) or the topic is gone (UNKNOWN_TOPIC_OR_PARTITION:
// committing to a recreated topic would skip its records).
func retriableCommit(err error) bool {
	var ke kafkago.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafkago.GroupLoadInProgress, kafkago.GroupCoordinatorNotAvailable, kafkago.NotCoordinatorForGroup,
			kafkago.RebalanceInProgress, kafkago.RequestTimedOut, kafkago.NetworkException:
			return true
		}
		return false
	}
	return true // not a Kafka error code: a network error or a timeout
}

// commit commits, per partition, the offset after the longest handled
// prefix, if it moved, over the generation's connection. Only the committer
// goroutine calls it.
func (g *generation) commit() error {
	return g.commitWith(func(offs map[int]int64) error {
		return g.kg.CommitOffsets(map[string]map[int]int64{g.s.cfg.Topic: offs})
	})
}

func (g *generation) commitWith(send func(offs map[int]int64) error) error {
	s := g.s
	offs := make(map[int]int64)
	s.mu.Lock()
	g.settled = 0
	for id, p := range g.parts {
		// != rather than >: after a reset beyond the end (resetBeyondEnd)
		// the new offsets are below the stale committed one. Within a
		// generation the tracker's committable offset only grows.
		if off, ok := p.trk.Committable(); ok && off != p.committed {
			offs[id] = off
		}
	}
	s.mu.Unlock()
	if len(offs) == 0 {
		return nil
	}
	if err := send(offs); err != nil {
		s.log.Warn("kafka: commit failed; the records will be redelivered if it is not retried",
			"generation", g.kg.ID, "error", err)
		return err
	}
	for id, off := range offs {
		g.parts[id].committed = off
	}
	return nil
}

// Receive implements consumer.Source. It returns the next record whose lane
// is free: never a record while an earlier record of its lane is unsettled.
func (s *Source) Receive(ctx context.Context) (broker.Delivery, error) {
	s.startOnce.Do(s.start)
	if s.startErr != nil {
		return nil, s.startErr
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, broker.ErrSourceClosed
		}
		if len(s.ready) > 0 {
			rec := s.ready[0]
			s.ready[0] = nil
			s.ready = s.ready[1:]
			rec.g.dispatched++
			attempt := rec.attempt
			more := len(s.ready) > 0
			s.mu.Unlock()
			if more {
				// Pass the wake-up on: one token may stand for many records.
				select {
				case s.notify <- struct{}{}:
				default:
				}
			}
			return s.newDelivery(rec, attempt), nil
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.closedCh:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close implements consumer.Source: it leaves the group after the current
// generation drained (up to DrainTimeout) and committed what was handled.
// Records not handled are not committed and go to the partitions' next
// owner. Close waits for every goroutine of the Source; it takes at most
// about DrainTimeout plus a few Timeouts (the final commit, the leave) —
// except while the member is joining the group: kafka-go finishes a pending
// JoinGroup before it notices the close, so Close can then take up to
// Timeout + RebalanceTimeout (35 s with the defaults; lower RebalanceTimeout
// to bound it). It is idempotent.
func (s *Source) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.closeDone
		return nil
	}
	s.closed = true
	close(s.closedCh)
	s.mu.Unlock()
	s.startOnce.Do(func() {}) // no group after Close
	if s.group != nil {
		s.cancelRun()
		s.group.Close() // ends the generation: drain and final commit, then LeaveGroup
		<-s.runDone
	}
	err := s.dlt.Close(ctx)
	s.lagTr.CloseIdleConnections()
	s.fetchTr.CloseIdleConnections()
	s.mu.Lock()
	s.status = broker.Status{Err: broker.ErrSourceClosed}
	s.ready = nil
	s.mu.Unlock()
	close(s.closeDone)
	return err
}

// PartitionLag is the consumer lag of one partition.
type PartitionLag struct {
	Partition int
	// Committed is the group's committed offset, or -1 if none.
	Committed int64
	// HighWatermark is the offset the next produced record will get.
	HighWatermark int64
	// Lag is HighWatermark - Committed; with no commit yet, the records the
	// group would still read from StartOffset.
	Lag int64
}

// Lag returns the group's lag on every partition of the topic, read from the
// brokers (committed offsets and high-water marks), so it covers partitions
// owned by other members too. It is meant for metrics and health checks.
func (s *Source) Lag(ctx context.Context) ([]PartitionLag, error) {
	topic := s.cfg.Topic
	md, err := s.lagCli.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: metadata: %w", err)
	}
	var ids []int
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("kafka: lag: metadata: %w", t.Error)
		}
		for _, p := range t.Partitions {
			ids = append(ids, p.ID)
		}
	}
	reqs := make([]kafkago.OffsetRequest, 0, 2*len(ids))
	for _, id := range ids {
		reqs = append(reqs, kafkago.FirstOffsetOf(id), kafkago.LastOffsetOf(id))
	}
	lo, err := s.lagCli.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: list offsets: %w", err)
	}
	of, err := s.lagCli.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: s.cfg.GroupID, Topics: map[string][]int{topic: ids}})
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: offset fetch: %w", err)
	}
	// A group that never committed may not exist yet: that is "no commits".
	if of.Error != nil && !errors.Is(of.Error, kafkago.GroupIdNotFound) {
		return nil, fmt.Errorf("kafka: lag: offset fetch: %w", of.Error)
	}
	committed := make(map[int]int64, len(ids))
	for _, p := range of.Topics[topic] {
		if p.Error != nil && !errors.Is(p.Error, kafkago.GroupIdNotFound) {
			return nil, fmt.Errorf("kafka: lag: offset fetch partition %d: %w", p.Partition, p.Error)
		}
		committed[p.Partition] = p.CommittedOffset
	}
	out := make([]PartitionLag, 0, len(ids))
	for _, p := range lo.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("kafka: lag: list offsets partition %d: %w", p.Partition, p.Error)
		}
		c, ok := committed[p.Partition]
		if !ok || c < 0 {
			c = -1
		}
		pl := PartitionLag{Partition: p.Partition, Committed: c, HighWatermark: p.LastOffset}
		switch {
		case c >= 0:
			pl.Lag = p.LastOffset - c
		case s.cfg.StartOffset == kafkago.FirstOffset:
			pl.Lag = p.LastOffset - p.FirstOffset
		}
		out = append(out, pl)
	}
	sortLag(out)
	return out, nil
}

// LagByPartition returns the group's lag per partition of the topic
// (partition → high-water mark minus committed offset), as Lag does. It
// makes a Source a LagSource of middleware/prometheus, without this package
// importing it.
func (s *Source) LagByPartition(ctx context.Context) (map[int]int64, error) {
	l, err := s.Lag(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[int]int64, len(l))
	for _, p := range l {
		out[p.Partition] = p.Lag
	}
	return out, nil
}

func sortLag(l []PartitionLag) {
	for i := 1; i < len(l); i++ {
		for j := i; j > 0 && l[j].Partition < l[j-1].Partition; j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
}

func messageID(topic string, partition int, offset int64) string {
	return topic + "/" + strconv.Itoa(partition) + "/" + strconv.FormatInt(offset, 10)
}
