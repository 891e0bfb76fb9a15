package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// Config configures a Source. Zero fields mean the documented defaults; Queue
// is required.
type Config struct {
	// Dialer says how to reach the broker when Conn is nil.
	Dialer Dialer
	// Conn, when set, is a shared connection to open the source's channels
	// on. The source then does not close it.
	Conn *Connection
	// Queue is the queue to consume from. Required.
	Queue string
	// Prefetch is the channel's basic.qos prefetch count (default 32). Set
	// it to at least the consumer's concurrency, or workers sit idle; well
	// above it (4 to 8 times), acks go out in batches (see AckBatch).
	Prefetch int
	// ConsumerTag prefixes the consumer tags of the subscriptions
	// (default "queuekit-<program>-<pid>"); a counter is appended, so every
	// subscription has a tag of its own.
	ConsumerTag string
	// Topology says what to declare on every (re)connect (see Topology).
	Topology Topology
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff
	// between reconnection attempts (defaults 100ms and 10s).
	ReconnectMin, ReconnectMax time.Duration
	// Logger receives connection-state logs (default slog.Default()).
	Logger *slog.Logger
	// AckBatch is the most acks the source coalesces into one basic.ack
	// with multiple=true (default 16, never more than a quarter of
	// Prefetch, since waiting acks hold prefetch slots; with a Prefetch
	// below 8 coalescing is off). 1 turns coalescing off: every Ack sends
	// its own basic.ack, as it is made. See the package doc,
	// Acknowledgement.
	AckBatch int
	// AckDelay is the longest a coalesced ack waits before it is sent
	// (default 2ms, at most 1s: an ack still waiting when its connection
	// drops is lost and its message delivered again); it is unused without
	// coalescing.
	AckDelay time.Duration
}

// The defaults of Config.AckBatch and Config.AckDelay. Coalescing is on by
// default since acks that hold the credit a waiting worker needs go out at
// once (issue 15; it was off after review R2): see the package doc,
// Acknowledgement.
const (
	defaultAckBatch = 16
	defaultAckDelay = 2 * time.Millisecond
	// maxAckDelay bounds Config.AckDelay: on a quiet queue, the acks of
	// finished messages wait that long, and every connection lost meanwhile
	// delivers those messages again (review C of issue 15: with an hour,
	// each was handled once per connection loss, past its delivery budget).
	maxAckDelay = time.Second
)

func (c *Config) resolve() error {
	if c.Queue == "" {
		return fmt.Errorf("%w: rabbitmq: empty queue name", broker.ErrInvalidConfig)
	}
	if c.Conn == nil {
		if err := c.Dialer.validate(); err != nil {
			return err
		}
	}
	if c.Prefetch < 0 || c.Prefetch > 65535 {
		return fmt.Errorf("%w: rabbitmq: prefetch %d, want 0..65535", broker.ErrInvalidConfig, c.Prefetch)
	}
	if c.Prefetch == 0 {
		c.Prefetch = 32
	}
	if c.ReconnectMin < 0 || c.ReconnectMax < 0 {
		return fmt.Errorf("%w: rabbitmq: negative reconnect backoff", broker.ErrInvalidConfig)
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 100 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 10 * time.Second
	}
	if c.ReconnectMax < c.ReconnectMin {
		return fmt.Errorf("%w: rabbitmq: ReconnectMax %v < ReconnectMin %v", broker.ErrInvalidConfig, c.ReconnectMax, c.ReconnectMin)
	}
	if c.AckBatch < 0 {
		return fmt.Errorf("%w: rabbitmq: negative AckBatch %d", broker.ErrInvalidConfig, c.AckBatch)
	}
	if c.AckDelay < 0 {
		return fmt.Errorf("%w: rabbitmq: negative AckDelay %v", broker.ErrInvalidConfig, c.AckDelay)
	}
	if c.AckDelay > maxAckDelay {
		return fmt.Errorf("%w: rabbitmq: AckDelay %v above %v: the acks of finished messages would wait that long, and their messages be delivered again if the connection dropped meanwhile", broker.ErrInvalidConfig, c.AckDelay, maxAckDelay)
	}
	if c.AckBatch == 0 {
		c.AckBatch = defaultAckBatch
	}
	c.AckBatch = min(c.AckBatch, max(c.Prefetch/4, 1))
	if c.AckDelay == 0 {
		c.AckDelay = defaultAckDelay
	}
	if c.ConsumerTag == "" {
		c.ConsumerTag = fmt.Sprintf("queuekit-%s-%d", progName(), os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Topology.Exchanges = slices.Clone(c.Topology.Exchanges) // resolve fills defaults in: not in the caller's slice
	return c.Topology.resolve(c.Queue)
}

// A Source consumes a RabbitMQ queue with manual acknowledgements. It
// implements broker.Source, broker.Pauser, broker.StatusReporter,
// broker.EventSource, broker.BacklogReporter, broker.TopologyDeclarer and
// broker.DeadLetterSource; its deliveries implement broker.DelayedRequeuer and broker.Releaser.
//
// A Source is safe for concurrent use: the runtime calls Receive from all its
// workers at once. It connects on the first Receive, and from then on one
// goroutine of its own (the session loop) keeps it subscribed: it reconnects
// with backoff and jitter when the channel or connection closes or the broker
// cancels the subscription, makes sure of the topology again and
// resubscribes. Close stops it, bounded by its context; after Close, Receive
// returns broker.ErrSourceClosed.
type Source struct {
	cfg     Config
	conn    *Connection
	ownConn bool
	pub     *Publisher  // delayed retries and classic requeues
	dlPub   *Publisher  // dead letters, without seqHeader (see Publisher.serial)
	memo    attemptMemo // attempts of the messages this source gave back unhandled

	hook atomic.Pointer[func(broker.Event)]

	// st is the state Receive and Status read without locking. It is
	// immutable; writers hold mu and replace it (see setState), closing
	// the old state's changed channel to wake the Receives waiting on it.
	st atomic.Pointer[state]

	mu       sync.Mutex
	started  bool
	closed   bool
	paused   bool
	dl       *DeadLetters  // made by the first DeadLetters call; closed by Close
	wake     chan struct{} // capacity 1: pokes the session loop after Pause/Resume
	stop     chan struct{} // closed by Close
	loopDone chan struct{} // closed when the session loop exits

	closeDone chan struct{}  // closed when shutdown is done; closeErr is written before
	closeErr  error          // what shutdown returned
	ops       sync.WaitGroup // Backlog and DeclareTopology calls' goroutines; Add only under mu while !closed

	gen atomic.Uint64 // subscription counter: consumer tags and fencing

	events        chan broker.Event // sent to by the session loop only; closed when it exits
	dispatchDone  chan struct{}     // closed when dispatch has delivered the last event
	droppedEvents atomic.Int64

	ackStats ackStats // what the coalescing ackers wrote
}

// state is a snapshot of the source for Receive and Status.
type state struct {
	sess    *session      // the live subscription, or nil
	changed chan struct{} // closed when this state is replaced
	fatal   error         // set when the source gave up for good
	closed  bool
	down    error // why the source is not subscribed
}

// A session is one subscription on one channel. Deliveries hold their
// session; acks go only to that session's channel, so a delivery from a
// channel that died can never be acknowledged on its successor (delivery
// tags are per channel): it is fenced with broker.ErrStaleDelivery instead.
//
// Intake on a session stops in two steps. Pause (or the session loop) sets
// stopping: from then on Receive hands out none of its deliveries and
// releases any it takes. Then the session loop, and only it, cancels the
// subscription and releases what the client still buffered, and closes
// released; Pause waits for that, or for its context.
type session struct {
	gen        uint64
	ch         *amqp.Channel
	link       link // of the connection ch is on: settlements drop it when their write blocks past their ctx
	tag        string
	deliveries <-chan amqp.Delivery
	acks       *acker        // of ch, shared by its subscriptions; nil when acks are not coalesced
	gate       *settleGate   // of ch, shared by its subscriptions: on a quorum queue, holds its settlements while a pause cancels; else nil
	w          ackWriter     // where the session's own acks and nacks go: gate, or ch
	stopping   atomic.Bool   // intake stopped: give back whatever comes
	released   chan struct{} // closed once nothing of the subscription is left in the client
	finishOnce sync.Once
}

func newSession(gen uint64, ch *amqp.Channel, l link, tag string, deliveries <-chan amqp.Delivery, acks *acker, gate *settleGate) *session {
	sess := &session{gen: gen, ch: ch, link: l, tag: tag, deliveries: deliveries, acks: acks, gate: gate, w: ch, released: make(chan struct{})}
	if gate != nil {
		sess.w = gate
	}
	return sess
}

// stop stops intake on sess: Receive hands out none of its deliveries and
// releases any it takes; on a quorum queue its channel's settlements are
// held until the subscription is cancelled (see settleGate).
func (sess *session) stop() {
	sess.stopping.Store(true)
	if sess.gate != nil {
		sess.gate.hold()
	}
}

// finish marks the give-back of sess done: its subscription was cancelled
// and drained, or its channel closed (the broker requeued the rest).
func (sess *session) finish() { sess.finishOnce.Do(func() { close(sess.released) }) }

// giveBackTimeout bounds how long the session loop spends giving back a
// subscription's buffered deliveries (basic.cancel, then a basic.nack for
// each). Past it the loop closes the channel, which makes the broker requeue
// every unacknowledged delivery on it at once; the deliveries handlers still
// hold become stale.
const giveBackTimeout = 10 * time.Second

// NewSource returns a Source for cfg. It does not connect yet: the first
// Receive does. It returns an error wrapping broker.ErrInvalidConfig when
// cfg is invalid.
func NewSource(cfg Config) (*Source, error) {
	if err := cfg.resolve(); err != nil {
		return nil, err
	}
	s := &Source{
		cfg:      cfg,
		conn:     cfg.Conn,
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),

		closeDone: make(chan struct{}),

		events:       make(chan broker.Event, 64),
		dispatchDone: make(chan struct{}),
	}
	if s.conn == nil {
		s.conn = newConnection(cfg.Dialer)
		s.conn.log = s.cfg.Logger
		s.ownConn = true
	}
	pub, err := NewPublisher(PublisherConfig{
		Conn:         s.conn,
		ReconnectMin: cfg.ReconnectMin,
		ReconnectMax: cfg.ReconnectMax,
		Logger:       cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	pub.dropBlocked = true
	s.pub = pub
	// Dead letters go on a channel of their own, without seqHeader (up to
	// dlInFlight at a time, each confirmed before its original is acked),
	// so that they carry none of the adapter's headers but the original
	// routing key (see delivery.DeadLetter).
	dl, err := NewPublisher(PublisherConfig{
		Conn:         s.conn,
		ReconnectMin: cfg.ReconnectMin,
		ReconnectMax: cfg.ReconnectMax,
		Logger:       cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	dl.dropBlocked, dl.serial, dl.serialSlot = true, true, make(chan struct{}, dlInFlight)
	s.dlPub = dl
	s.memo.init(cfg.Prefetch)
	s.st.Store(&state{changed: make(chan struct{}), down: errors.New("rabbitmq: not connected yet")})
	return s, nil
}

// SetEventHook implements broker.EventSource. The hook is called from a
// goroutine of the source, one event at a time and in order, never while a
// lock is held and never after Close returned. A slow hook does not delay
// reconnection; one more than 64 events behind misses events.
func (s *Source) SetEventHook(f func(broker.Event)) {
	if f == nil {
		s.hook.Store(nil)
		return
	}
	s.hook.Store(&f)
}

// emit queues an event for the hook. Only the session loop calls it, and it
// never blocks: a hook that falls 64 events behind loses the newest ones
// (counted in droppedEvents) rather than stalling reconnection.
func (s *Source) emit(kind broker.EventKind, err error) {
	select {
	case s.events <- broker.Event{Kind: kind, Err: err, Time: time.Now()}:
	default:
		s.droppedEvents.Add(1)
	}
}

// dispatch runs on its own goroutine and calls the hook with each event, in
// order, until the session loop closes s.events on exit.
func (s *Source) dispatch() {
	defer close(s.dispatchDone)
	for e := range s.events {
		if f := s.hook.Load(); f != nil {
			(*f)(e)
		}
	}
}

// Status implements broker.StatusReporter: Connected is true while the
// source is subscribed (or paused on a live channel).
func (s *Source) Status() broker.Status {
	st := s.st.Load()
	switch {
	case st.fatal != nil:
		return broker.Status{Err: st.fatal}
	case st.closed:
		return broker.Status{Err: broker.ErrSourceClosed}
	case st.down != nil:
		return broker.Status{Err: st.down}
	}
	return broker.Status{Connected: true}
}

// setState replaces the state with f applied to a copy of it. The caller holds s.mu.
func (s *Source) setState(f func(*state)) {
	old := s.st.Load()
	next := *old
	next.changed = make(chan struct{})
	f(&next)
	s.st.Store(&next)
	close(old.changed)
}

func (s *Source) update(f func(*state)) {
	s.mu.Lock()
	s.setState(f)
	s.mu.Unlock()
}

// Receive implements broker.Source. It blocks while the source reconnects.
// It returns ctx's error when ctx is done, broker.ErrSourceClosed after
// Close, and a broker.Fatal error when the source gave up (access refused,
// a declaration that does not match, a passive queue that does not exist).
func (s *Source) Receive(ctx context.Context) (broker.Delivery, error) {
	st := s.st.Load()
	if st.sess == nil && !st.closed && st.fatal == nil {
		s.start()
	}
	for {
		st = s.st.Load()
		switch {
		case st.closed:
			return nil, broker.ErrSourceClosed
		case st.fatal != nil:
			return nil, st.fatal
		case st.sess == nil:
			select {
			case <-st.changed:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		d, ok, got := s.next(ctx, st)
		if got {
			if ok {
				// select picks at random among ready cases: a delivery
				// may be taken after ctx ended or the subscription began
				// to stop. Nobody will handle it, so it goes back to its
				// place in the queue, not counted as an attempt.
				if err := ctx.Err(); err != nil {
					s.release(st.sess, &d)
					return nil, err
				}
				if st.sess.stopping.Load() {
					s.release(st.sess, &d)
					continue
				}
				return s.newDelivery(st.sess, d), nil
			}
			// The subscription ended (channel closed, cancelled or
			// paused): wait for the session loop to replace it.
			select {
			case <-st.changed:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// next takes the next delivery of st's subscription: got is false when
// st changed or ctx ended first. With coalescing, a Receive that finds
// nothing buffered tells the acker before it waits (acker.wait): the acks
// waiting may hold the prefetch credit the broker needs to send it one.
func (s *Source) next(ctx context.Context, st *state) (d amqp.Delivery, ok, got bool) {
	sess := st.sess
	if a := sess.acks; a != nil {
		select {
		case d, ok = <-sess.deliveries:
			return d, ok, true
		default:
		}
		a.wait()
		defer a.unidle()
	}
	select {
	case d, ok = <-sess.deliveries:
		return d, ok, true
	case <-st.changed:
	case <-ctx.Done():
	}
	return d, false, false
}

func (s *Source) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started = true
	go s.dispatch()
	go s.loop()
}

// Pause implements broker.Pauser: Receive hands out nothing more, and the
// session loop cancels the subscription (basic.cancel) and gives back the
// deliveries the client buffered but nobody received (basic.nack with
// requeue), so they go back to their places in the queue, their attempt not
// counted. Deliveries already received stay valid and are settled as usual.
//
// On a quorum queue the channel's acks and nacks are held (queued, and
// written in order) from the moment Pause stops intake until the broker has
// applied the cancel, and the cancel waits until no delivery came for 50 ms
// (at most 1 s): RabbitMQ returns, and counts as a delivery, whatever
// reaches the channel after basic.cancel, which the source never sees (see
// the package doc, Attempts).
//
// Pause returns when the give-back is done, or with an error wrapping ctx's
// error when ctx ends first. The give-back then goes on in the background,
// bounded: after 10 s the source closes its channel, and the broker requeues
// every delivery left on it. Either way nothing stays stranded in the client,
// and the next Resume sees every message.
func (s *Source) Pause(ctx context.Context) error {
	s.mu.Lock()
	if s.paused || s.closed {
		s.mu.Unlock()
		return nil
	}
	s.paused = true
	sess := s.st.Load().sess
	if sess != nil {
		sess.stop()
		s.setState(func(st *state) { st.sess = nil })
	}
	s.mu.Unlock()
	s.poke()
	if sess == nil {
		return nil
	}
	select {
	case <-sess.released:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rabbitmq: pause: deliveries are still being given back (in the background): %w", ctx.Err())
	}
}

// errStopped is returned by unsubscribe when Close interrupted it.
var errStopped = errors.New("rabbitmq: source closed")

// unsubscribe cancels sess's subscription and releases what the client had
// buffered for it. Only the session loop calls it. It returns an error when
// the give-back could not finish (channel closed, giveBackTimeout passed,
// source closed): the caller then closes the channel, which gives back the
// rest, and finishes sess.
func (s *Source) unsubscribe(sess *session) error {
	sess.stop()
	timer := time.NewTimer(giveBackTimeout)
	defer timer.Stop()
	var early []amqp.Delivery
	if g := sess.gate; g != nil {
		defer g.open() // on every path: what was held goes out (or fails on a closed channel)
		var err error
		early, err = s.quiesce(sess, timer.C)
		defer func() {
			// Given back after the cancel, so that the broker does not
			// refill the prefetch they free before it.
			for i := range early {
				s.release(sess, &early[i])
			}
		}()
		if err != nil {
			return err
		}
	}
	if err := sess.ch.Cancel(sess.tag, false); err != nil {
		return fmt.Errorf("rabbitmq: cancel subscription %s: %w", sess.tag, err)
	}
	if g := sess.gate; g != nil {
		// The broker has applied the cancel: freed prefetch slots no
		// longer bring deliveries for the tag.
		g.open()
		for i := range early {
			s.release(sess, &early[i])
		}
		early = nil
	}
	// After basic.cancel-ok the broker sends nothing more for the tag and
	// amqp091 closes sess.deliveries once its buffer is empty; until then
	// its buffer goroutine blocks on us.
	for {
		select {
		case d, ok := <-sess.deliveries:
			if !ok {
				if sess.acks != nil {
					// Acks waiting to be coalesced go now: a paused
					// consumer may sit idle for long.
					_ = sess.acks.flushAll(false)
				}
				sess.finish()
				return nil
			}
			s.release(sess, &d)
		case <-timer.C:
			return fmt.Errorf("rabbitmq: giving back the deliveries of subscription %s took longer than %v; closing the channel", sess.tag, giveBackTimeout)
		case <-s.stop:
			return errStopped
		}
	}
}

// release gives a delivery no handler saw back to the broker, at its place
// in the queue (basic.nack with requeue), and remembers its attempt, so that
// its redeliveries, which the broker marks redelivered (and a quorum queue
// counts), are not counted as attempts (see attemptMemo). A failed nack
// means the channel is gone: the broker requeues the message with
// everything else unacknowledged on it.
func (s *Source) release(sess *session, d *amqp.Delivery) {
	s.memo.put(d, s.attemptOf(d))
	if a := sess.acks; a != nil {
		a.register(d.DeliveryTag)
		_ = a.nack(d.DeliveryTag)
		return
	}
	_ = sess.w.Nack(d.DeliveryTag, false, true)
}

// The quiet period of quiesce, and its bound.
const (
	quietPeriod = 50 * time.Millisecond
	maxQuiesce  = time.Second
)

// quiesce waits, before a quorum-queue subscription is cancelled, for the
// deliveries the broker is still sending to it, and returns those it took.
//
// RabbitMQ sends a quorum queue's deliveries from the queue's leader, which
// refills a consumer's prefetch as acks and nacks free it. basic.cancel
// forgets the consumer tag at once on the channel, and deliveries that
// reach the channel after that are returned to the queue by the broker
// itself, counted in x-delivery-count: the source never sees them, so it
// cannot remember them, and they would come back with an attempt spent.
// So a pause holds the channel's settlements (settleGate) from the moment
// it stops intake, and quiesce waits until no delivery has come for
// quietPeriod (at most maxQuiesce, or until giveUp): the deliveries that
// settlements written before brought have then arrived, and with nothing
// settled, the broker sends nothing more. Only a message published to a
// queue that could not fill the prefetch can still cross the cancel.
func (s *Source) quiesce(sess *session, giveUp <-chan time.Time) ([]amqp.Delivery, error) {
	var early []amqp.Delivery
	quiet := time.NewTimer(quietPeriod)
	defer quiet.Stop()
	limit := time.NewTimer(maxQuiesce)
	defer limit.Stop()
	for {
		select {
		case d, ok := <-sess.deliveries:
			if !ok {
				return early, nil // the channel closed: Cancel says so
			}
			early = append(early, d)
			quiet.Reset(quietPeriod)
		case <-quiet.C:
			return early, nil
		case <-limit.C:
			return early, nil
		case <-giveUp:
			return early, fmt.Errorf("rabbitmq: giving back the deliveries of subscription %s took longer than %v; closing the channel", sess.tag, giveBackTimeout)
		case <-s.stop:
			return early, errStopped
		}
	}
}

// A settleGate is where the acks and nacks of a quorum queue's channel go
// (the acker's writes, and the deliveries' own). It passes them through,
// except while a pause cancels a subscription (hold to open): then it
// queues them, in order, and returns nil at once, and open writes them (see
// quiesce for why). Like a coalesced ack, a settlement that returned nil
// is then queued, not yet written: if the channel closes first, the broker
// redelivers the message.
type settleGate struct {
	ch       *amqp.Channel
	link     link
	mu       sync.Mutex
	held     bool
	flushing bool // open is writing q
	q        []gatedWrite
}

// gatedWrite is one held basic.ack (nack false) or basic.nack.
type gatedWrite struct {
	tag                     uint64
	nack, multiple, requeue bool
}

func (w gatedWrite) do(ch ackWriter) error {
	if w.nack {
		return ch.Nack(w.tag, w.multiple, w.requeue)
	}
	return ch.Ack(w.tag, w.multiple)
}

func newSettleGate(ch *amqp.Channel, l link) *settleGate { return &settleGate{ch: ch, link: l} }

// Ack implements ackWriter.
func (g *settleGate) Ack(tag uint64, multiple bool) error {
	return g.write(gatedWrite{tag: tag, multiple: multiple})
}

// Nack implements ackWriter.
func (g *settleGate) Nack(tag uint64, multiple, requeue bool) error {
	return g.write(gatedWrite{tag: tag, nack: true, multiple: multiple, requeue: requeue})
}

func (g *settleGate) write(w gatedWrite) error {
	g.mu.Lock()
	if g.held || g.flushing {
		g.q = append(g.q, w)
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()
	return w.do(g.ch)
}

// hold starts queueing the channel's settlements.
func (g *settleGate) hold() {
	g.mu.Lock()
	g.held = true
	g.mu.Unlock()
}

// open writes what was queued, in order, and lets settlements through
// again. A write that fails means the channel is gone (the broker
// redelivers what was not settled): the rest are dropped. The writes are
// bounded like the acker's (ackWriteTimeout).
func (g *settleGate) open() {
	g.mu.Lock()
	g.held = false
	if g.flushing {
		g.mu.Unlock()
		return // the flushing open writes what comes meanwhile too
	}
	g.flushing = true
	for len(g.q) > 0 {
		q := g.q
		g.q = nil
		g.mu.Unlock()
		_ = boundedWrite(g.link, ackWriteTimeout, func() error {
			for _, w := range q {
				if err := w.do(g.ch); err != nil {
					return err
				}
			}
			return nil
		})
		g.mu.Lock()
	}
	g.flushing = false
	g.mu.Unlock()
}

// Resume implements broker.Pauser: the session loop subscribes again.
func (s *Source) Resume(ctx context.Context) error {
	s.mu.Lock()
	s.paused = false
	s.mu.Unlock()
	s.poke()
	return nil
}

func (s *Source) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close implements broker.Source. It stops the session loop, closes the
// channel (the broker requeues what was prefetched and not settled) and the
// connection if the source owns it. Close is idempotent; a second call
// returns once the first is done or its own ctx ends.
//
// Close is bounded by ctx, like net/http's Server.Shutdown. When ctx ends
// before the broker answered (a hung connection: a broker that stopped
// answering, a network that drops everything), Close gives up: it closes the
// source's network connection without the AMQP close handshake, which ends
// every wait on the broker and every goroutine of the source within
// milliseconds, and returns an error wrapping ctx's error. Nothing is lost:
// the broker requeues every unacknowledged delivery when it sees the
// connection go (with coalescing on, that includes deliveries whose Ack
// returned nil but whose ack was still queued: fewer than twice AckBatch
// duplicates per channel), at once or, when the network is what hangs, after its
// heartbeat timeout. A source on a shared Connection cannot close it: it
// returns at ctx's end and leaves its channel to close in the background,
// which on a hung connection takes until Connection.Close gives up on the
// broker too, or the heartbeat timeout (about three Dialer.Heartbeat
// intervals); the event hook may then be called once more.
func (s *Source) Close(ctx context.Context) error {
	s.mu.Lock()
	dl := s.dl
	s.mu.Unlock()
	var dlErr error
	if dl != nil {
		dlErr = dl.Close(ctx)
	}
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		started := s.started
		close(s.stop)
		s.setState(func(st *state) { st.closed = true; st.sess = nil })
		go s.shutdown(started)
	}
	s.mu.Unlock()
	select {
	case <-s.closeDone:
		return errors.Join(dlErr, s.closeErr)
	case <-ctx.Done():
	}
	if s.ownConn {
		s.conn.abort()
		waitAborted(s.closeDone)
	}
	return fmt.Errorf("rabbitmq: close source of queue %q: gave up waiting for the broker; "+
		"its unacknowledged deliveries (with coalescing, also those whose Ack returned nil but whose ack was not sent yet) "+
		"go back to the queue when the broker sees the connection go: %w", s.cfg.Queue, ctx.Err())
}

// shutdown is the work of Close, on a goroutine of its own so that Close can
// stop waiting for it (and abort the connection under it, which makes every
// step below end at once). It closes s.closeDone when done; s.closeErr is
// written before.
func (s *Source) shutdown(started bool) {
	defer close(s.closeDone)
	if s.ownConn {
		s.conn.stopDial() // the loop may be dialling: end it now
	}
	if started {
		<-s.loopDone
		<-s.dispatchDone // so that the hook is never called after Close returned
	}
	err := errors.Join(s.pub.Close(context.Background()), s.dlPub.Close(context.Background())) // bounded by abort, which Close does on its ctx's end
	s.ops.Wait()
	if s.ownConn {
		err = errors.Join(err, s.conn.close())
	}
	s.closeErr = err
}

// loop is the session loop: the one goroutine that opens channels, declares
// the topology, subscribes and reconnects. It owns the channel's NotifyClose
// and NotifyCancel listeners and reads them until the channel is replaced.
func (s *Source) loop() {
	defer close(s.loopDone)
	defer close(s.events)
	bo := backoff{min: s.cfg.ReconnectMin, max: s.cfg.ReconnectMax}
	log := s.cfg.Logger.With("queue", s.cfg.Queue)
	connected := false
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		// The topology is ensured on channels of its own, so that a failed
		// passive check (which closes its channel) never costs the
		// subscription's channel.
		var (
			ch *amqp.Channel
			l  link
		)
		err := s.cfg.Topology.ensure(s.conn.channel, s.cfg.Queue)
		if err == nil {
			ch, l, err = s.conn.channelOn()
		}
		if err == nil {
			if err = ch.Qos(s.cfg.Prefetch, 0, false); err != nil {
				_ = ch.Close()
			}
		}
		if err != nil && s.stopping() {
			return // Close aborted the connection under us: not a failure
		}
		if err != nil {
			if unfixable(err, false) && !broker.IsFatal(err) {
				err = broker.Fatal(err) // e.g. ACCESS_REFUSED: bad credentials or no access to the vhost
			}
			if broker.IsFatal(err) || errors.Is(err, ErrConnectionClosed) {
				log.Error("rabbitmq: source gave up", "error", err)
				s.update(func(st *state) { st.fatal = broker.Fatal(err); st.down = err })
				s.emit(broker.EventReconnecting, err)
				return
			}
			s.update(func(st *state) { st.down = err })
			if connected || bo.n == 0 {
				s.emit(broker.EventReconnecting, err)
			}
			connected = false
			d := bo.next()
			log.Warn("rabbitmq: cannot subscribe; retrying", "error", err, "retry_in", d)
			if !sleepCtx(context.Background(), s.stop, d) {
				return
			}
			continue
		}
		// Capacity 1 each: the library sends one close reason per channel
		// and one cancel per consumer tag, and we read both below.
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))
		cancels := ch.NotifyCancel(make(chan string, 1))
		reason, stopped := s.serve(ch, l, closes, cancels, &bo, &connected, log)
		if stopped || s.stopping() {
			return
		}
		s.update(func(st *state) { st.sess = nil; st.down = reason })
		if connected {
			s.emit(broker.EventReconnecting, reason)
		}
		connected = false
		d := bo.next()
		log.Warn("rabbitmq: subscription lost; reconnecting", "error", reason, "retry_in", d)
		if !sleepCtx(context.Background(), s.stop, d) {
			return
		}
	}
}

// stopping reports whether Close has begun.
func (s *Source) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// serve subscribes on ch and follows Pause/Resume until ch closes, the broker
// cancels the subscription, or the source is closed. It reports why the
// channel is no longer usable, or stopped=true after Close (ch closed).
func (s *Source) serve(ch *amqp.Channel, l link, closes <-chan *amqp.Error, cancels <-chan string, bo *backoff, connected *bool, log *slog.Logger) (reason error, stopped bool) {
	var sess *session    // the subscription this loop made on ch, if any
	var acks *acker      // coalesces the acks of every subscription on ch
	var gate *settleGate // holds the settlements on ch while a pause cancels (quorum queues)
	var w ackWriter = ch // where the acker writes
	if s.cfg.Topology.QueueType == Quorum {
		gate = newSettleGate(ch, l)
		w = gate
	}
	if s.cfg.AckBatch > 1 {
		acks = newAcker(w, l, s.cfg.AckBatch, s.cfg.AckDelay, s.cfg.Prefetch, &s.ackStats)
	}
	defer func() {
		if gate != nil {
			gate.open() // what a pause held goes out first
		}
		if acks != nil {
			// The acks still waiting go out while the channel may be
			// open (on a closed one this fails at once), and acks
			// made from now on are refused as stale.
			_ = acks.flushAll(true)
		}
		// Closing the channel gives every unacknowledged delivery on it back
		// to the queue; deliveries still held by handlers are now stale.
		_ = ch.Close()
		if sess != nil {
			sess.finish() // what it had buffered went back with the channel
		}
	}()
	for {
		s.mu.Lock()
		paused := s.paused
		s.mu.Unlock()
		if sess != nil && (paused || sess.stopping.Load()) {
			// Pause stopped sess (and Resume may have come since: the
			// buffered deliveries still go back first, so that the next
			// subscription gets them in queue order), or a Pause came
			// while Consume ran below.
			s.mu.Lock()
			if s.st.Load().sess == sess {
				s.setState(func(st *state) { st.sess = nil })
			}
			s.mu.Unlock()
			if err := s.unsubscribe(sess); err != nil {
				if errors.Is(err, errStopped) {
					return nil, true
				}
				log.Warn("rabbitmq: give-back of buffered deliveries did not finish; closing the channel", "error", err)
				return err, false
			}
			sess = nil
		}
		if !paused && sess == nil {
			// Consume is a round trip: no lock is held during it, so
			// Pause may run meanwhile; it is checked again below.
			gen := s.gen.Add(1)
			tag := fmt.Sprintf("%s-%d", s.cfg.ConsumerTag, gen)
			deliveries, err := ch.Consume(s.cfg.Queue, tag, false, false, false, false, nil)
			if err != nil {
				err = fmt.Errorf("rabbitmq: consume %q: %w", s.cfg.Queue, err)
				if unfixable(err, s.cfg.Topology.Passive) {
					err = broker.Fatal(err)
				}
				if broker.IsFatal(err) {
					log.Error("rabbitmq: source gave up", "error", err)
					s.update(func(st *state) { st.fatal = err; st.down = err })
					s.emit(broker.EventReconnecting, err)
					return err, true
				}
				return err, false
			}
			sess = newSession(gen, ch, l, tag, deliveries, acks, gate)
			s.mu.Lock()
			paused = s.paused
			if !paused {
				s.setState(func(st *state) { st.sess = sess; st.down = nil })
			}
			s.mu.Unlock()
			bo.reset()
			*connected = true
			if paused {
				// Pause came while Consume ran and did not see sess:
				// the top of the loop gives it back (even if Resume
				// came meanwhile: sess was never published).
				sess.stop()
				continue
			}
			log.Info("rabbitmq: subscribed", "consumer_tag", tag, "prefetch", s.cfg.Prefetch)
			s.emit(broker.EventConnected, nil)
		}
		if paused {
			s.mu.Lock()
			if s.st.Load().down != nil && !*connected {
				s.setState(func(st *state) { st.down = nil }) // paused on a live channel counts as connected
			}
			s.mu.Unlock()
			*connected = true
		}
		select {
		case e := <-closes:
			if e == nil {
				return errors.New("rabbitmq: channel closed"), false
			}
			return fmt.Errorf("rabbitmq: channel closed: %w", e), false
		case tag := <-cancels:
			err := fmt.Errorf("rabbitmq: the broker cancelled subscription %s to queue %q (was the queue deleted?)", tag, s.cfg.Queue)
			log.Warn("rabbitmq: subscription cancelled by the broker", "consumer_tag", tag)
			s.update(func(st *state) { st.sess = nil; st.down = err })
			*connected = false
			s.emit(broker.EventCancelled, err)
			return err, false
		case <-s.wake:
		case <-s.stop:
			return nil, true
		}
	}
}

// dlInFlight is how many dead letters a Source has in flight at once (see
// Publisher.serial).
const dlInFlight = 32

// DeadLetters implements broker.DeadLetterSource: the dead letters of the
// source's queue, in its Topology.DeadLetterQueue, to browse, redrive and
// purge (see DeadLetters). It returns the same DeadLetters on every call. It
// uses the source's Config.Conn when set, else a connection of its own
// dialled with Config.Dialer (so that browsing never holds up the
// source's own connection), and Close closes it. After Close its methods
// return an error wrapping ErrDeadLettersClosed.
func (s *Source) DeadLetters() broker.DeadLetters {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dl == nil {
		// The source's configuration was validated by NewSource, so this
		// cannot fail; a Source not made by NewSource gets its error.
		dl, err := NewDeadLetters(DeadLetterConfig{
			Dialer:          s.cfg.Dialer,
			Conn:            s.cfg.Conn,
			Queue:           s.cfg.Queue,
			DeadLetterQueue: s.cfg.Topology.DeadLetterQueue,
			QueueType:       s.cfg.Topology.QueueType, // the type Topology declares the dead-letter queue with
			Logger:          s.cfg.Logger,
		})
		if err != nil {
			return failedDeadLetters{err}
		}
		s.dl = dl
		if s.closed {
			_ = dl.Close(context.Background()) // nothing to wait for: it never connected
		}
	}
	return s.dl
}

// failedDeadLetters is the DeadLetters of a Source whose configuration
// cannot make one: every method returns its error.
type failedDeadLetters struct{ err error }

func (f failedDeadLetters) List(context.Context, broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	return broker.DeadLetterPage{Items: []broker.DeadLetter{}}, f.err
}
func (f failedDeadLetters) Count(context.Context, broker.DeadLetterFilter) (int, error) {
	return 0, f.err
}
func (f failedDeadLetters) Redrive(context.Context, broker.DeadLetterSelection, broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{Done: []string{}}, f.err
}
func (f failedDeadLetters) Purge(context.Context, broker.DeadLetterSelection, bool) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{Done: []string{}}, f.err
}
