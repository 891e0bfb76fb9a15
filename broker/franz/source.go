package franz

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
)

// A Source consumes one topic as a member of a Kafka consumer group, on a
// franz-go kgo.Client. It implements broker.Source and the capabilities
// broker.Pauser, broker.StatusReporter, broker.EventSource,
// broker.BacklogReporter, broker.TopologyDeclarer and
// broker.BatchReceiver; its deliveries implement broker.DelayedRequeuer,
// broker.Releaser, broker.Leased and broker.Sequenced. See the package
// documentation for the guarantees.
//
// A Source is safe for concurrent use. The zero value is not usable: make
// one with NewSource. It joins the group on the first Receive (or
// ReceiveBatch); after Close it cannot be used again (Receive returns
// broker.ErrSourceClosed).
type Source struct {
	cfg  Config
	log  *slog.Logger
	seed maphash.Seed
	// admin is a client outside the group, for the admin requests (Lag,
	// Backlog, DeclareTopology) and the dead-letter writes. NewSource makes
	// it; it connects on first use.
	admin *kgo.Client
	adm   *kadm.Client
	// dl is the dead-letter operations' state (deadletters.go).
	dl   deadLetterState
	hook atomic.Pointer[func(broker.Event)]

	// The group client and the goroutines serving it (poll, commit, flow)
	// are made once by start, before startOnce.Do returns, and only read
	// after it.
	startOnce sync.Once
	cl        *kgo.Client
	// clReady is closed once cl is set: the rebalance callbacks, which kgo
	// may call before NewClient returned, wait for it.
	clReady   chan struct{}
	startErr  error
	runCancel context.CancelFunc
	run       sync.WaitGroup
	// bg counts the kgo Client.Close calls that Close, cut short by its
	// ctx, left running (kgo's Close takes no ctx).
	bg sync.WaitGroup

	// abortCtx ends when Close's ctx ended before Close was done: drains
	// stop waiting, commits are cancelled, and so are the Lag, Backlog and
	// DeclareTopology calls in progress (see enter).
	abortCtx  context.Context
	abortFn   context.CancelFunc
	abortOnce sync.Once
	// calls counts the Lag, Backlog, DeclareTopology and dead-letter
	// calls in progress; Close waits for them before closing the admin
	// client.
	calls sync.WaitGroup

	// commitMu orders the commits: the committer's rounds and the final
	// commit of revoked partitions, so that an older snapshot of offsets
	// is never sent after a newer one.
	commitMu sync.Mutex
	kick     chan struct{} // wakes the committer: CommitBatch settled
	// flowMu orders the backpressure pauses and resumes of partitions
	// (pause.go), flowKick wakes the goroutine that applies them.
	flowMu   sync.Mutex
	flowKick chan struct{}
	// pauseMu orders Pause and Resume calls applying their state to kgo.
	pauseMu sync.Mutex

	// mu guards everything below and every field of partState, lane,
	// record and delivery documented as "under s.mu". It is held for short
	// non-blocking sections only: the poll goroutine takes it once per
	// chunk of records, Receive and each settlement once.
	mu      sync.Mutex
	ready   readyList // heads of free lanes, waiting for Receive
	waiting int       // Receive and ReceiveBatch calls waiting on notify
	// pollWaiting: the poll goroutine waits on gate for a hungry
	// partition (lanes.go).
	pollWaiting bool
	gate        chan struct{}
	notify      chan struct{}
	closed      bool
	// closedCh is closed when Close begins, closeDone when it is done.
	closedCh  chan struct{}
	closeDone chan struct{}
	paused    bool // Pause: nothing is handed out, the topic is not fetched
	parts     map[int32]*partState
	settled   int // settlements since the last commit
	status    broker.Status
	joined    bool // EventConnected was emitted for the current membership
	// closeCommitErr is the error of the final commit at Close.
	closeCommitErr error
	// timers hold records requeued with a delay (RequeueAfter).
	timers  map[*record]*time.Timer
	pollErr errThrottle
	// notJoined is the Status error until the first assignment.
	notJoined error

	// errMu guards lastErr and lastErrAt: the latest failure kgo
	// reported (a fetch error, a group error, a failed dial), for Status
	// (status.go). kgo's hooks take it, never s.mu.
	errMu     sync.Mutex
	lastErr   error
	lastErrAt time.Time

	// Retry topics (retry.go): retry is set on a Source with
	// Config.RetryTopics (its tier consumers), tier on a tier consumer;
	// stranded is what the look for retry topics left over from an
	// earlier config found, for Status.
	retry    *retryState
	tier     *tierOf
	stranded atomic.Pointer[error]
}

// NewSource returns a Source for cfg. It returns an error wrapping
// broker.ErrInvalidConfig when cfg is invalid. It does not connect: the
// first Receive joins the group.
func NewSource(cfg Config) (*Source, error) {
	cfg.normalize()
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("topic", cfg.Topic, "group", cfg.GroupID)
	admin, err := newClient(append(slices.Clone(cfg.ClientOptions),
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.WithLogger(kgoLogger{log}),
		// Dead letters: acks from all in-sync replicas, idempotent, sent
		// at once.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		// A deleted retry or dead-letter topic fails a write after a few
		// metadata answers, as a Publish does (publisher.go), not after
		// kgo's default ~15 s: a RequeueAfter then falls back to the
		// in-process retry soon. The metadata answers are asked for at
		// most every adminMetadataMinAge (kgo's default, 5 s, made the
		// retries of a topic deleted after a write last ~10 s).
		kgo.UnknownTopicRetries(unknownTopicRetries),
		kgo.MetadataMinAge(adminMetadataMinAge),
	))
	if err != nil {
		return nil, fmt.Errorf("%w: franz: ClientOptions: %w", broker.ErrInvalidConfig, err)
	}
	abortCtx, abortFn := context.WithCancel(context.Background())
	notJoined := fmt.Errorf("franz: not joined yet: the member joins group %s at the first Receive, once topic %s exists (DeclareTopology creates it)",
		cfg.GroupID, cfg.Topic)
	s := &Source{
		cfg:       cfg,
		log:       log,
		seed:      maphash.MakeSeed(),
		admin:     admin,
		adm:       kadm.NewClient(admin),
		abortCtx:  abortCtx,
		abortFn:   abortFn,
		kick:      make(chan struct{}, 1),
		clReady:   make(chan struct{}),
		flowKick:  make(chan struct{}, 1),
		notify:    make(chan struct{}, 1),
		gate:      make(chan struct{}, 1),
		closedCh:  make(chan struct{}),
		closeDone: make(chan struct{}),
		parts:     make(map[int32]*partState),
		status:    broker.Status{Err: notJoined},
		notJoined: notJoined,
		timers:    make(map[*record]*time.Timer),
	}
	if len(cfg.RetryTopics) > 0 {
		rs, err := newRetry(s) // retry.go
		if err != nil {
			admin.Close()
			abortFn()
			return nil, err
		}
		s.retry = rs
	}
	return s, nil
}

// start makes the group client and starts its goroutines, once.
func (s *Source) start() {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		s.startErr = broker.ErrSourceClosed
		return
	}
	cfg := &s.cfg
	iso := kgo.ReadCommitted()
	if cfg.Isolation == ReadUncommitted {
		iso = kgo.ReadUncommitted()
	}
	reset := kgo.NewOffset().AtStart()
	if cfg.StartOffset == LastOffset {
		reset = kgo.NewOffset().AtEnd()
	}
	opts := append(slices.Clone(cfg.ClientOptions),
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.WithLogger(kgoLogger{s.log}),
		kgo.ConsumerGroup(cfg.GroupID),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.Balancers(cfg.Balancers...),
		kgo.FetchIsolationLevel(iso),
		// Control records (transaction markers) come to the poll loop,
		// which commits past them without handing them out.
		kgo.KeepControlRecords(),
		// No rebalance callback runs between a poll's return and the
		// queueing of its records (see pollLoop): a record of an earlier
		// assignment can never be taken for one of the current one.
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
		// Group and dial failures, for Status (status.go).
		kgo.WithHooks(statusHook{s}),
		kgo.ConsumeResetOffset(reset),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.HeartbeatInterval(cfg.HeartbeatInterval),
		kgo.RebalanceTimeout(cfg.RebalanceTimeout),
		kgo.FetchMaxWait(cfg.MaxWait),
		kgo.FetchMaxPartitionBytes(int32(cfg.MaxBytes)),
	)
	opts = append(opts, metadataAges(cfg.PartitionWatchInterval)...)
	if cfg.MaxBytes > 50<<20 {
		opts = append(opts, kgo.FetchMaxBytes(int32(cfg.MaxBytes)))
	}
	cl, err := newClient(opts)
	if err != nil {
		s.startErr = broker.Fatal(fmt.Errorf("%w: franz: consumer group client: %w", broker.ErrInvalidConfig, err))
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.pauseMu.Lock()
	s.cl, s.runCancel = cl, cancel
	close(s.clReady)
	s.mu.Lock()
	paused := s.paused
	s.mu.Unlock()
	if paused {
		cl.PauseFetchTopics(cfg.Topic)
	}
	s.pauseMu.Unlock()
	s.run.Add(3)
	go s.pollLoop(ctx)   // lanes.go
	go s.commitLoop(ctx) // commit.go
	go s.flowLoop(ctx)   // pause.go

	// Retry topics of the group left over from an earlier config.
	s.startStrandedCheck() // retry.go
}

// metadataAges returns kgo's metadata refresh options for
// Config.PartitionWatchInterval: the max age is the interval, and the min
// age (kgo's default 5 s) at most the interval, both within what kgo
// accepts (10 ms…1 h).
func metadataAges(interval time.Duration) []kgo.Opt {
	maxAge := min(max(interval, 10*time.Millisecond), time.Hour)
	minAge := min(maxAge, 5*time.Second)
	return []kgo.Opt{kgo.MetadataMaxAge(maxAge), kgo.MetadataMinAge(minAge)}
}

// begin starts the Source on first use and returns why it cannot be used.
func (s *Source) begin() error {
	s.startOnce.Do(s.start)
	return s.startErr
}

// SetEventHook implements broker.EventSource. The hook is called from the
// Source's goroutines and kgo's group goroutine, never while a lock of the
// Source is held, and never after Close returned.
func (s *Source) SetEventHook(f func(broker.Event)) {
	if f == nil {
		s.hook.Store(nil)
		return
	}
	s.hook.Store(&f)
}

func (s *Source) emit(kind broker.EventKind, err error) {
	if s.tier != nil {
		// A tier consumer's group failing is its main Source's (the
		// tier's retries do not come back meanwhile); its other events
		// (its own rebalances) are not.
		if kind == broker.EventReconnecting {
			s.tier.main.emit(kind, s.tierGroupErr(err))
		}
		return
	}
	if f := s.hook.Load(); f != nil {
		(*f)(broker.Event{Kind: kind, Err: err, Time: time.Now()})
	}
}

// Receive implements broker.Source. It returns the next record whose lane
// is free: never a record while an earlier record of its lane is unsettled.
func (s *Source) Receive(ctx context.Context) (broker.Delivery, error) {
	if err := s.begin(); err != nil {
		return nil, err
	}
	waited := false
	for {
		// A done ctx wins over a ready record, which stays for another
		// call (broker.Source: Receive returns ctx's error).
		if err := ctx.Err(); err != nil {
			if waited {
				// The wake-up this call may have taken is passed on.
				s.mu.Lock()
				s.waiting--
				pass := s.ready.head != nil && s.waiting > 0
				s.mu.Unlock()
				if pass {
					s.signal()
				}
			}
			return nil, err
		}
		if s.retry != nil {
			// A due record of a retry tier comes first (retry.go).
			if d, err := s.takeRetry(waited); d != nil || err != nil {
				return d, err
			}
		}
		s.mu.Lock()
		if waited {
			s.waiting--
		}
		if s.closed {
			s.mu.Unlock()
			return nil, broker.ErrSourceClosed
		}
		if !s.paused {
			if rec := s.ready.pop(); rec != nil {
				d, attempt := s.handOutLocked(rec)
				pass := s.ready.head != nil && s.waiting > 0
				s.mu.Unlock()
				if pass {
					// One wake-up may stand for several records.
					s.signal()
				}
				s.fill(d, rec, attempt)
				return d, nil
			}
		}
		s.waiting++
		waited = true
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.closedCh:
		case <-ctx.Done():
			s.mu.Lock()
			s.waiting--
			s.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

// signal wakes one Receive waiting on notify.
func (s *Source) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// wakeLocked wakes a waiting Receive, if any, after records were made
// ready.
func (s *Source) wakeLocked() {
	if s.waiting > 0 {
		s.signal()
	}
}

// Close implements broker.Source. It stops intake, fences the records still
// handed out at once (the runtime calls Close only after every delivery it
// received was settled or abandoned, so none is waited for), commits what
// was handled, leaves the group, and waits for every goroutine of the
// Source. Records not handled are not committed and go to the partitions'
// next owner. When the final commit fails, Close still leaves the group and
// releases everything, and returns an error that wraps the commit's error:
// what was handled since the last commit will be handled again. Close waits
// for the Lag, Backlog, DeclareTopology and dead-letter calls in progress;
// those called after Close began return an error wrapping
// broker.ErrSourceClosed.
//
// Close is bounded by ctx: when ctx ends first, Close stops the final
// commit and the group leave where they are, closes the clients, and
// returns an error wrapping ctx's. (kgo's Client.Close takes no ctx: with a
// broker that stopped answering, the clients' close goes on in the
// background for up to about 2 s after Close returned, then ends, and
// with it every goroutine of the Source. The Lag, Backlog, DeclareTopology,
// dead-letter and retry-topic calls in progress are cancelled then: each
// returns at once with an error wrapping its ctx's, its write possibly still
// landing; the wait for them ends in the background with them.) Nothing is lost: the partitions' next
// owner handles again what was not committed, once the coordinator's
// session timeout declared this member gone (at worst). Close is
// idempotent; a second call waits for the first, or for its own ctx.
func (s *Source) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		select {
		case <-s.closeDone:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("franz: close: %w", ctx.Err())
		}
	}
	s.closed = true
	close(s.closedCh)
	s.mu.Unlock()
	s.startOnce.Do(func() {}) // no group after Close

	stop := context.AfterFunc(ctx, s.abort)
	tiersDone := s.closeTiers(ctx) // retry.go: the tier consumers close alongside
	var leaveErr error
	if s.cl != nil {
		// The poll, commit and flow goroutines end; the poll goroutine
		// allows rebalances as it returns, so that the leave below is not
		// held by it.
		s.runCancel()
		s.run.Wait()
		// Leaving revokes every partition: onRevoked fences what is
		// still out and commits what was handled (bounded by ctx), then
		// kgo sends LeaveGroup.
		leaveErr = s.cl.LeaveGroupContext(ctx)
		s.closeClient(ctx, s.cl)
	}
	tierErr := tiersDone()
	// Every call honours its ctx, which abort cancels: once Close's ctx
	// ended, the calls end at once. The waiter is counted in s.bg (it ends
	// with the last call).
	calls := make(chan struct{})
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.calls.Wait()
		close(calls)
	}()
	select {
	case <-calls:
	case <-ctx.Done():
		s.abort()
	}
	dlErr := errors.Join(s.dl.close(ctx), tierErr) // deadletters.go
	s.closeClient(ctx, s.admin)
	aborted := !stop()
	if aborted {
		s.abort()
	}
	s.mu.Lock()
	s.status = broker.Status{Err: broker.ErrSourceClosed}
	s.ready = readyList{}
	for rec, t := range s.timers {
		t.Stop()
		delete(s.timers, rec)
	}
	commitErr := s.closeCommitErr
	s.mu.Unlock()
	close(s.closeDone)
	switch {
	case aborted || ctx.Err() != nil:
		s.log.Warn("franz: close cut short by its context: the final commit and the group leave may have been skipped; the partitions' next owner gets the unhandled records after the session timeout at worst",
			"error", ctx.Err())
		return fmt.Errorf("franz: close: final commit and group leave cut short: %w", ctx.Err())
	case commitErr != nil:
		return errors.Join(fmt.Errorf("franz: close: the final commit failed; the partitions' next owner will handle again what was handled since the last commit: %w", commitErr), dlErr)
	case leaveErr != nil:
		return errors.Join(fmt.Errorf("franz: close: leave group: %w", leaveErr), dlErr)
	}
	return dlErr
}

// adminMetadataMinAge is the least time between two metadata requests of a
// Source's admin client (which writes the dead letters and retry copies):
// short, so that a write to a deleted topic fails after its few
// unknown-topic retries (unknownTopicRetries) in about a second. Metadata
// is asked for only when a write or an admin call needs it.
const adminMetadataMinAge = 250 * time.Millisecond

// closeClient closes cl, waiting no longer than ctx: kgo's Client.Close
// takes no ctx, and with a broker that stopped answering it waits about
// 2 s (fetch sessions, metrics push). When ctx ends first, the close goes
// on in the background (counted by s.bg) and ends by itself; nothing of
// the Source waits for it.
func (s *Source) closeClient(ctx context.Context, cl *kgo.Client) {
	done := make(chan struct{})
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		defer close(done)
		cl.Close()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.abort()
	}
}

// abort is what Close does when its ctx ends first: drains stop waiting,
// commits and admin calls in progress are cancelled. It is idempotent.
func (s *Source) abort() {
	s.abortOnce.Do(s.abortFn)
}

func (s *Source) isAborted() bool { return s.abortCtx.Err() != nil }

// enter begins a Lag, Backlog, DeclareTopology or dead-letter call: it
// refuses the call once Close began (the error wraps
// broker.ErrSourceClosed), and otherwise returns a ctx that Close's abort
// cancels and a func that ends the call.
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
