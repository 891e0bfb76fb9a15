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
)

// A Source consumes one topic as a member of a Kafka consumer group. It
// implements broker.Source and the capabilities broker.Pauser,
// broker.StatusReporter, broker.EventSource, broker.BacklogReporter,
// broker.TopologyDeclarer and broker.DeadLetterSource (see DeadLetters);
// its deliveries implement broker.DelayedRequeuer,
// broker.Releaser and broker.Leased. See the package documentation for the
// guarantees. A Source is safe for concurrent use. The zero value is not
// usable: make one with NewSource. It joins the group on the first Receive;
// after Close it cannot be used again (Receive returns
// broker.ErrSourceClosed).
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
	// conns dials every connection of the Source but the dead-letter
	// writer's (which has its own): the group's, the fetchers', the lag
	// client's. Close kills them when its ctx ends.
	conns *conns
	// abortCtx ends (and aborted, its Done channel, is closed) when
	// Close's ctx ended before Close was done: the drain stops waiting, the
	// final commit is skipped, and the calls in progress (see enter) are
	// cancelled.
	abortCtx  context.Context
	abortFn   context.CancelFunc
	aborted   <-chan struct{}
	abortOnce sync.Once
	// calls counts the Lag, Backlog and DeclareTopology calls in progress.
	// enter adds to it under mu only while closed is false, and Close waits
	// for it after setting closed, so that no call uses the lag client's
	// transport after Close closed its pools (a call that did would start a
	// kafka-go connPool.discover goroutine that nothing ends).
	calls sync.WaitGroup
	hook  atomic.Pointer[func(broker.Event)]

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
	mu     sync.Mutex
	ready  readyQueue // records whose lane is free, waiting for Receive
	closed bool
	// paused stops the fetchers before their next Fetch request and
	// Receive before its next hand-out (see Pause); resumed is closed by
	// Resume.
	paused    bool
	resumed   chan struct{}
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
	// closeCommitErr is the error of the final commit at Close, written
	// by the drain (under s.mu) before runDone is closed; Close returns it.
	closeCommitErr error

	// retry is set on a Source with Config.RetryTopics: the tier writer
	// and consumers (retry.go). tier is set on a tier consumer: its main
	// Source. Both are written by NewSource only.
	retry *retryState
	tier  *tierOf
	// strandedOnce starts, on the first Receive, the look for retry
	// topics of the group that the config does not have but which still
	// hold records; stranded (under mu) is what it found, for Status.
	strandedOnce sync.Once
	stranded     error
}

// NewSource returns a Source for cfg. It returns an error wrapping
// broker.ErrInvalidConfig when cfg is invalid. It does not connect: the
// first Receive joins the group.
func NewSource(cfg Config) (*Source, error) {
	cfg.Brokers = append([]string(nil), cfg.Brokers...)
	cfg.RetryTopics = sortedTiers(cfg.RetryTopics)
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
		BatchSize:  1,
		BatchBytes: deadLetterBatchBytes(cfg.DeadLetterMaxBytes),
		// With BatchSize 1 a dead letter never waits for others; the
		// timeout only matters if that changes.
		BatchTimeout: time.Millisecond,
		WriteTimeout: cfg.Timeout,
	})
	if err != nil {
		return nil, err
	}
	cs := newConns(cfg.Dialer)
	tr := transport(cfg.Dialer, cs)
	ftr := transport(cfg.Dialer, cs)
	ftr.MetadataTTL = fetchMetadataTTL
	ftr.MetadataTopics = []string{cfg.Topic}
	addr := kafkago.TCP(cfg.Brokers...)
	abortCtx, abortFn := context.WithCancel(context.Background())
	s := &Source{
		conns:      cs,
		abortCtx:   abortCtx,
		abortFn:    abortFn,
		aborted:    abortCtx.Done(),
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
	}
	if len(cfg.RetryTopics) > 0 {
		rs, err := newRetry(s)
		if err != nil {
			abortFn()
			dlt.Close(context.Background())
			return nil, err
		}
		s.retry = rs
	}
	return s, nil
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

// SetEventHook implements broker.EventSource. The hook is called from the
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
	if s.tier != nil {
		// A tier consumer's group failing to join is its main Source's
		// (the tier's retries do not come back meanwhile); its other
		// events (its own rebalances) are not.
		if kind == broker.EventReconnecting {
			s.tier.main.emit(kind, s.tierGroupErr(err))
		}
		return
	}
	if f := s.hook.Load(); f != nil {
		(*f)(broker.Event{Kind: kind, Err: err, Time: time.Now()})
	}
}

// Status implements broker.StatusReporter: Connected is true while the
// Source is a member of the group (including during a rebalance); Err is the
// last error from joining — or, while a member, an error saying that the
// topic — or one of its retry topics (Config.RetryTopics) — does not
// exist (or its partitions cannot be read), or that the consumer group of
// a retry tier cannot join (its retries do not come back meanwhile; the
// failures also emit broker.EventReconnecting naming the tier group), or
// one wrapping
// ErrDeadLetterUnwritable while records wait for a dead-letter write that
// retrying cannot fix (their partitions do not move meanwhile), or, found
// once at the first Receive, retry topics of the group that
// Config.RetryTopics no longer has but which still hold records nobody
// consumes (see "Retry topics" in the package documentation).
func (s *Source) Status() broker.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	if st.Err == nil && s.topicErr != nil {
		st.Err = s.topicErr
	}
	if st.Err == nil {
		st.Err = s.retryTopicErr()
	}
	if n := len(s.unwritable); n > 0 && st.Err == nil {
		st.Err = fmt.Errorf("kafka: %d record(s) hold their partitions; the latest: %w", n, s.lastUnwritable)
	}
	if st.Err == nil {
		st.Err = s.stranded
	}
	return st
}

// Receive implements broker.Source. It returns the next record whose lane
// is free: never a record while an earlier record of its lane is unsettled.
func (s *Source) Receive(ctx context.Context) (broker.Delivery, error) {
	s.startOnce.Do(s.start)
	if s.startErr != nil {
		return nil, s.startErr
	}
	for {
		if d, err := s.nextRetry(); d != nil || err != nil {
			if err != nil {
				return nil, err
			}
			return d, nil
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, broker.ErrSourceClosed
		}
		if s.ready.len() > 0 && !s.paused {
			rec := s.ready.pop()
			d, attempt := s.handOutLocked(rec)
			more := s.ready.len() > 0
			s.mu.Unlock()
			if more {
				// Pass the wake-up on: one token may stand for many records.
				select {
				case s.notify <- struct{}{}:
				default:
				}
			}
			s.fillDelivery(d, rec, attempt)
			return d, nil
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

// handOutLocked counts rec as dispatched and returns the delivery for its
// hand-out (see record.out) and its attempt.
func (s *Source) handOutLocked(rec *record) (*delivery, int) {
	rec.g.dispatched++
	d := &rec.first
	if rec.out {
		d = new(delivery)
	}
	rec.out = true
	return d, rec.attempt
}

// Close implements broker.Source. It stops intake, ends the current
// generation — fencing the records still handed out at once: the runtime
// calls Close only after every delivery it received was settled or
// abandoned, so none is waited for — commits what was handled (retrying a
// failed commit within RebalanceDrainTimeout), leaves the group, and waits
// for every goroutine of the Source. Records not handled are not committed
// and go to the partitions' next owner. When the final commit fails for
// good (a non-retriable error, or retriable ones until the budget is
// spent), Close still leaves the group and releases everything, and
// returns an error that says so and wraps the commit's error: what was
// handled since the last commit will be handled again. Close waits for the
// Lag, Backlog and DeclareTopology calls in progress; those called after
// Close began return an error wrapping broker.ErrSourceClosed.
//
// Close is bounded by ctx, like net/http's Server.Shutdown: when ctx ends
// first, Close skips (or stops retrying) the final commit, skips the group
// leave, closes every connection of the Source (which makes the
// requests kafka-go is blocked on fail at once), waits for its goroutines,
// which then return promptly (the Lag, Backlog and DeclareTopology calls in
// progress are cancelled), and returns an error wrapping ctx's. Nothing
// is lost: what was handled since the last commit is handled again by the
// partitions' next owner, which gets them once the coordinator's session
// timeout (SessionTimeout) declared this member gone. Close is idempotent;
// a second call waits for the first, or for its own ctx.
func (s *Source) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		select {
		case <-s.closeDone:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("kafka: close: %w", ctx.Err())
		}
	}
	s.closed = true
	close(s.closedCh)
	s.mu.Unlock()
	s.startOnce.Do(func() {}) // no group after Close
	var tierErr chan error
	if s.retry != nil {
		// The tier consumers close alongside, bounded by the same ctx.
		tierErr = make(chan error, 1)
		go func() { tierErr <- s.retry.closeAll(ctx) }()
	}

	// abort runs at most once, when ctx ends before Close is done; after
	// stop, it never starts, and a call to s.abort waits for one running.
	stop := context.AfterFunc(ctx, s.abort)
	var commitErr error
	if s.group != nil {
		s.cancelRun()
		s.group.Close() // ends the generation: drain and final commit, then LeaveGroup
		<-s.runDone
		s.mu.Lock()
		commitErr = s.closeCommitErr
		s.mu.Unlock()
	}
	// The Lag, Backlog and DeclareTopology calls that began before Close
	// end before the transports are closed below. When ctx ends, abort
	// cancels them and kills their connections, so this wait is bounded
	// by ctx too.
	s.calls.Wait()
	err := s.dlt.Close(ctx)
	aborted := !stop()
	if aborted {
		s.abort()
	}
	s.conns.kill() // what kafka-go's transports keep open, idle or not
	s.lagTr.CloseIdleConnections()
	s.fetchTr.CloseIdleConnections()
	s.mu.Lock()
	s.status = broker.Status{Err: broker.ErrSourceClosed}
	s.ready = readyQueue{}
	s.mu.Unlock()
	if tierErr != nil {
		if terr := <-tierErr; terr != nil {
			err = errors.Join(err, terr)
		}
	}
	close(s.closeDone)
	if aborted {
		s.log.Warn("kafka: close cut short by its context: the final commit and the group leave were skipped; the partitions' next owner gets the unhandled records after the session timeout",
			"error", ctx.Err())
		return fmt.Errorf("kafka: close: final commit and group leave skipped: %w", ctx.Err())
	}
	if commitErr != nil {
		cerr := fmt.Errorf("kafka: close: the final commit failed; the partitions' next owner will handle again what was handled since the last commit: %w", commitErr)
		if err != nil {
			return errors.Join(cerr, err)
		}
		return cerr
	}
	return err
}

// enter begins a Lag, Backlog or DeclareTopology call: it refuses the call
// once Close began (the error wraps broker.ErrSourceClosed), and otherwise
// returns a ctx that Close's abort cancels and a func that ends the call.
func (s *Source) enter(ctx context.Context) (context.Context, func(), error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, broker.ErrSourceClosed
	}
	s.calls.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.abortCtx, cancel)
	return ctx, func() {
		stop()
		cancel()
		s.calls.Done()
	}, nil
}

// abort is what Close does when its ctx ends first: the drain stops
// waiting, the final commit is skipped, and every connection is closed,
// so that the requests kafka-go blocks on (a join, a commit, the leave)
// fail at once and its goroutines return. It is idempotent.
func (s *Source) abort() {
	s.abortOnce.Do(func() {
		s.abortFn()
		s.conns.kill()
	})
}

func (s *Source) isAborted() bool {
	select {
	case <-s.aborted:
		return true
	default:
		return false
	}
}

func messageID(topic string, partition int, offset int64) string {
	return topic + "/" + strconv.Itoa(partition) + "/" + strconv.FormatInt(offset, 10)
}

// recordID is messageID(topic, partition, offset) for prefix
// "topic/partition/", in one allocation.
func recordID(prefix string, offset int64) string {
	var buf [128]byte
	b := append(buf[:0], prefix...)
	return string(strconv.AppendInt(b, offset, 10))
}
