package kafka

// The group loop: run takes each generation of the consumer group from
// kafka-go, serve starts its goroutines (one committer, one partition
// watcher, one fetcher per assigned partition), and the generation's end —
// kafka-go cancels their context — runs the drain (commit.go).
//
// It is built on kafka-go's ConsumerGroup and Generation API, not on the
// group Reader, because the Reader cannot finish and commit work before its
// partitions are taken away (kafka-go #674, #1398) and lets a stale member
// commit (kafka-go #1308). kafka-go hands out the next generation only after
// every function started with Generation.Start returned, which is what gives
// the drain its chance to commit before the partitions move.
//
// Who owns what: one fetcher goroutine per assigned partition owns that
// partition's fetch position and its fetched-but-not-queued records (a
// goroutine of its own carries each request it sends ahead, and hands the
// response over on a channel); one committer goroutine per generation
// commits and runs the drain; every other piece of state (lanes, the ready
// queue, offset trackers, counters) is guarded by s.mu, held only for short
// non-blocking sections: a fetcher takes it once per chunk of records,
// Receive and each settlement once per record.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/offsets"
	"github.com/queuekit/queuekit/retry"
)

// ErrRebalance is wrapped by the Err of the broker.EventRebalanced event a
// Source emits when a generation of its consumer group ended (a member joined
// or left, or the coordinator moved). The Source drains, commits and rejoins
// by itself. The error text says how many in-flight records finished during
// the drain and how many were fenced.
var ErrRebalance = errors.New("kafka: consumer group rebalance")

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
		Dialer:            s.conns.dialer(cfg.Dialer),
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

	// lease is the context of the generation's deliveries (broker.Leased):
	// endLease cancels it when the generation fences them, so that the
	// runtime cancels handlers still running on records this member no
	// longer owns, instead of letting them overlap the new owner's.
	lease    context.Context
	endLease context.CancelFunc

	// layout drops the fetch transport's cached cluster layout when a
	// fetcher finds it stale (see followLeader).
	layout layoutDropper
}

// A partition is one assigned partition within a generation.
type partition struct {
	id       int
	idPrefix string // topic/partition/, the start of its records' IDs
	start    int64  // assigned offset (committed, or FirstOffset/LastOffset)
	trk      offsets.Tracker
	lanes    map[uint64]*lane // under s.mu; a lane exists while busy
	// spare holds lanes that ended, for reuse with their queue's array
	// (under s.mu): with ByKey, lanes start and end all the time. There
	// are never more lanes than records held, so at most MaxInFlight.
	spare     []*lane
	held      int           // under s.mu: fetched and not settled
	room      chan struct{} // wakes the fetcher when held drops; cap 1
	committed int64         // owned by the committer goroutine
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
	q     []*record
	extra int // under s.mu: records of the lane out beyond one (a batch's: see batch.go)
}

// A record is one fetched Kafka message. It lives until it is settled for
// good (acked, dead-lettered) or its generation ends; Requeue sends the same
// record out again.
type record struct {
	g    *generation
	p    *partition
	lane uint64
	m    kafkago.Message
	// id is the message ID (topic/partition/offset), made by the fetcher
	// before the record is queued, off the workers' path.
	id      string
	attempt int // under s.mu
	epoch   int // the partition's epoch when the record was fetched
	// skip marks a record never handed out — a transaction marker, or a
	// record of an aborted transaction (see read) — which counts as
	// handled for the commit as soon as it is queued.
	skip bool
	// out says that first was handed out (under s.mu): the first hand-out
	// of a record uses the delivery allocated with it (records come in
	// blocks), every later one (after a Requeue or a Release) a new one,
	// so that a late second settlement of an earlier hand-out never
	// touches a later one.
	out   bool
	first delivery
}

func (s *Source) serve(kg *kafkago.Generation) {
	g := &generation{
		s:       s,
		kg:      kg,
		parts:   make(map[int]*partition),
		kick:    make(chan struct{}, 1),
		drained: make(chan struct{}),
		layout:  layoutDropper{t: s.fetchTr},
	}
	g.lease, g.endLease = context.WithCancel(context.Background())
	ids := make([]int, 0, len(kg.Assignments[s.cfg.Topic]))
	for _, a := range kg.Assignments[s.cfg.Topic] {
		g.parts[a.ID] = &partition{
			id: a.ID, idPrefix: s.cfg.Topic + "/" + strconv.Itoa(a.ID) + "/", start: a.Offset, lanes: make(map[uint64]*lane),
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

// backoff is the wait before retry number n (n >= 1): 100 ms doubling up
// to 2 s.
func backoff(n int) time.Duration {
	return 100 * time.Millisecond << min(n-1, 4)
}
