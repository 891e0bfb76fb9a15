package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// HeaderDeadLetterID holds the id a Source gives each message it
// dead-letters (random, 32 hex digits): DeadLetter.ID on the dead-letter
// queue, for Redrive and Purge. A redriven copy does not carry it; the
// copy's next dead letter gets a new one.
const HeaderDeadLetterID = "x-queuekit-dead-letter-id"

// ErrDeadLettersClosed is returned by the methods of a DeadLetters after
// Close.
var ErrDeadLettersClosed = errors.New("rabbitmq: dead letters closed")

// DeadLetterConfig configures a DeadLetters. Zero fields mean the documented
// defaults; Queue is required.
type DeadLetterConfig struct {
	// Dialer says how to reach the broker when Conn is nil.
	Dialer Dialer
	// Conn, when set, gives its Dialer: the DeadLetters dials a connection
	// of its own with it all the same, so that an operation that ends
	// early (its socket dropped) or holds the lock never touches the
	// connection others share.
	Conn *Connection
	// Queue is the work queue whose dead letters these are. Required.
	Queue string
	// DeadLetterQueue is the queue holding them (default Queue+".dlq", the
	// default of Topology.DeadLetterQueue).
	DeadLetterQueue string
	// QueueType is the type of the dead-letter queue, when known: Quorum,
	// Classic, or empty (not known). It chooses how a browse leaves the
	// dead letters it read (see the package doc, Dead letters): on a quorum
	// queue, and on any queue not proven classic, it rotates them. Classic
	// and empty are checked on the broker at each operation.
	QueueType string
	// Logger receives warnings (default slog.Default()).
	Logger *slog.Logger
}

func (c *DeadLetterConfig) resolve() error {
	if c.Queue == "" {
		return fmt.Errorf("%w: rabbitmq: dead letters: empty queue name", broker.ErrInvalidConfig)
	}
	if c.DeadLetterQueue == "" {
		c.DeadLetterQueue = c.Queue + ".dlq"
	}
	if err := checkName("queue name", c.Queue); err != nil {
		return err
	}
	if err := checkName("dead-letter queue name", c.DeadLetterQueue); err != nil {
		return err
	}
	if err := checkName("dead-letter lock queue name (the dead-letter queue name and "+lockSuffix+")", c.DeadLetterQueue+lockSuffix); err != nil {
		return err
	}
	if c.DeadLetterQueue == c.Queue {
		return fmt.Errorf("%w: rabbitmq: dead letters: the dead-letter queue must differ from the queue %q", broker.ErrInvalidConfig, c.Queue)
	}
	if c.Conn == nil {
		if err := c.Dialer.validate(); err != nil {
			return err
		}
	}
	switch c.QueueType {
	case "", Classic, Quorum:
	default:
		return fmt.Errorf("%w: rabbitmq: dead letters: queue type %q, want %q or %q", broker.ErrInvalidConfig, c.QueueType, Classic, Quorum)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// DeadLetters browses, redrives and purges the dead-letter queue of a work
// queue. It implements broker.DeadLetters; see the package doc, Dead letters,
// for how it reads a queue without consuming it.
//
// A DeadLetters is safe for concurrent use; its operations run one at a
// time, in this process and across processes (two browses at once would
// each see only the dead letters the other does not hold): each takes the
// dead-letter queue's lock (see the package doc), waiting for another
// process's operation until its ctx ends, then returns an error wrapping
// ErrDeadLettersBusy; a dead-letter queue with consumers is refused with
// that error too. It connects on its first operation, on a connection of
// its own (with the Dialer of DeadLetterConfig.Conn when that is set: an
// operation cut short drops its own connection, never a shared one). Close
// ends it; its methods then return an error wrapping ErrDeadLettersClosed.
type DeadLetters struct {
	cfg     DeadLetterConfig
	conn    *Connection
	ownConn bool

	sem chan struct{} // one operation at a time

	// Of the operation in progress (under sem): bg is cancelled only by
	// Close; handedOff is set when its pass goes on in the background
	// (see scan.close), which then releases it.
	bg        context.Context
	handedOff bool
	release   func()

	mu        sync.Mutex
	closed    bool
	done      chan struct{}  // closed by Close: operations in progress stop
	ops       sync.WaitGroup // operations and their goroutines; Add under mu while !closed, or inside an operation
	closeDone chan struct{}
	closeErr  error
}

var _ broker.DeadLetters = (*DeadLetters)(nil)

// NewDeadLetters returns a DeadLetters for cfg. It validates cfg and
// connects nothing yet. It returns an error wrapping broker.ErrInvalidConfig
// when cfg is invalid.
func NewDeadLetters(cfg DeadLetterConfig) (*DeadLetters, error) {
	if err := cfg.resolve(); err != nil {
		return nil, err
	}
	dialer := cfg.Dialer
	if cfg.Conn != nil {
		dialer = cfg.Conn.d
	}
	d := &DeadLetters{cfg: cfg, conn: newConnection(dialer), ownConn: true, sem: make(chan struct{}, 1), done: make(chan struct{}), closeDone: make(chan struct{})}
	return d, nil
}

// Close stops the operations in progress (their dead letters go back to
// the queue, as when their context ends; on a queue that rotates, a pass
// stopped by Close leaves it rotated, see the package doc) and closes its
// connection. It is bounded by ctx: when ctx ends
// first, it closes the network connection without the AMQP close handshake
// (the broker then gives every dead letter held back to the queue) and
// returns an error wrapping ctx's error. It is idempotent.
func (d *DeadLetters) Close(ctx context.Context) error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.done)
		go d.shutdown()
	}
	d.mu.Unlock()
	select {
	case <-d.closeDone:
		return d.closeErr
	case <-ctx.Done():
	}
	if d.ownConn {
		d.conn.abort()
		waitAborted(d.closeDone)
	}
	return fmt.Errorf("rabbitmq: close dead letters of %q: gave up waiting for the broker: %w", d.cfg.Queue, ctx.Err())
}

func (d *DeadLetters) shutdown() {
	defer close(d.closeDone)
	d.ops.Wait()
	if d.ownConn {
		d.closeErr = d.conn.close()
	}
}

// rotateWindow is how many rotated copies (see scan.keep), or redriven
// copies on a queue that rotates, are in flight at once: written, not yet
// confirmed, their originals not yet acknowledged. It stays well under 32:
// RabbitMQ 3.10 holds back a quorum queue's settlements past 32 in flight
// on a channel (rabbit_fifo_client's soft limit) and drops those it still
// holds when the channel closes, which gives their messages back: with a
// window of 64, a pass over 50 dead letters left 16 of them twice (the
// copy and the original). A basic.get between two acks lets the earlier
// ones through.
const rotateWindow = 16

// rotateGrace is how long past the end of its ctx an operation on a queue
// that rotates (see scan) still waits for the broker, to finish rotating
// what it holds: a dead letter it gave back instead would count as a
// delivery on a quorum queue. Only a broker silent that long loses the
// connection (and the dead letters held then count a delivery).
const rotateGrace = 2 * time.Second

// A scan is one pass over the dead-letter queue: a channel of its own that
// takes messages one by one (basic.get, manual acknowledgement) up to the
// number the queue held when the pass began. The operation removes the
// messages it means to (ack) and keeps the others (keep).
//
// How it keeps them depends on the queue (see rotates). A classic queue
// puts a message given back at its old place: keep does nothing, and close
// closes the channel, which gives everything back at once. A quorum queue
// counts every message given back as a delivery, and drops it (or
// dead-letters it) past its delivery limit (a policy; RabbitMQ 4 sets 20 by
// default): there keep "rotates" the message instead, a confirmed copy (the
// same properties, headers and id) published to the tail of the queue, and
// the original acknowledged only once the broker confirmed the copy. A
// pass over the whole queue leaves it in its order (messages that arrive
// during the pass interleave with the copies). A crash between a confirm
// and its ack leaves the message twice, with the same id: never lost.
//
// A pass always reads to the end of its snapshot, even when the operation
// needs only the first page, so that a rotation keeps the order.
// basic.get rather than basic.consume: a consumer's prefetched messages
// come back out of order when it is cancelled (RabbitMQ 3.10, quorum
// queues). A get costs a round trip per message (see the package doc for
// the figures).
//
// A scan belongs to the goroutine of its operation. Every call that waits on
// the broker is bounded by ctx (see call).
type scan struct {
	d       *DeadLetters
	ctx     context.Context // bounds the broker calls: op, or when rotating the operation's bg
	op      context.Context // the operation's ctx: its end stops reading
	ch      *amqp.Channel
	l       link
	acked   map[uint64]bool // delivery tags of the messages the operation removed
	ready   int             // messages ready in the queue when the scan began
	total   int             // messages the pass reads at most: ready, or less
	read    int             // messages read so far
	lastTag uint64          // delivery tag of the last message read
	rotate  bool            // keep rotates (see scan)
	rc      *confirmChannel // rotate: the channel of the copies, opened on the first
	rpend   []rotated       // rotate: copies in flight, oldest first
	user    string          // the user the connection logs in as (see rotationCopy)
	removed int             // messages the operation removed (ack)
}

type rotated struct {
	tag uint64
	id  string
	w   *pendingPublish
}

// begin starts an operation: it waits for its turn (one operation at a
// time in this process), then takes the dead-letter queue's lock (one
// operation at a time across processes, see lock). The caller must call
// the release func.
func (d *DeadLetters) begin(ctx context.Context, op string) (context.Context, func(), error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, nil, fmt.Errorf("rabbitmq: %s dead letters of %q: %w", op, d.cfg.Queue, ErrDeadLettersClosed)
	}
	d.ops.Add(1)
	d.mu.Unlock()
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		d.ops.Done()
		return nil, nil, fmt.Errorf("rabbitmq: %s dead letters of %q: %w", op, d.cfg.Queue, context.Cause(ctx))
	case <-d.done:
		d.ops.Done()
		return nil, nil, fmt.Errorf("rabbitmq: %s dead letters of %q: %w", op, d.cfg.Queue, ErrDeadLettersClosed)
	}
	// Close ends the operation as its ctx would.
	octx, cancel := context.WithCancelCause(ctx)
	bg, cancelBG := context.WithCancelCause(context.Background())
	watch := make(chan struct{})
	d.ops.Add(1)
	go func() {
		defer d.ops.Done()
		select {
		case <-d.done:
			cancel(ErrDeadLettersClosed)
			cancelBG(ErrDeadLettersClosed)
		case <-watch:
		}
	}()
	end := func() {
		close(watch)
		cancel(nil)
		cancelBG(nil)
		<-d.sem
		d.ops.Done()
	}
	lk, err := d.lock(octx, op)
	if err != nil {
		end()
		return nil, nil, err
	}
	d.bg, d.handedOff = bg, false
	d.release = func() {
		d.unlock(bg, lk)
		end()
	}
	return octx, func() {
		if !d.handedOff {
			d.release()
		}
	}, nil
}

// opLock is the lock of one operation: the exclusive queue
// DeadLetterQueue+".queuekit-lock", declared on the operation's connection.
type opLock struct {
	ch *amqp.Channel
	l  link
}

func (d *DeadLetters) lockName() string { return d.cfg.DeadLetterQueue + lockSuffix }

// lock takes the dead-letter queue's lock: it declares the exclusive queue
// lockName on the DeadLetters' connection. While another connection holds
// it the broker refuses (RESOURCE_LOCKED); lock tries again, backing off,
// until ctx ends, then returns an error wrapping ErrDeadLettersBusy. The
// lock dies with the connection that holds it, so a process that crashes
// (or whose connection is dropped) frees it.
func (d *DeadLetters) lock(ctx context.Context, op string) (*opLock, error) {
	name := d.lockName()
	pause := 10 * time.Millisecond
	for {
		ch, l, err := d.openChannel(ctx)
		if err != nil {
			return nil, err
		}
		err = bounded(ctx, l, abortGrace, func() error {
			_, err := ch.QueueDeclare(name, false, true, true, false, nil)
			return err
		})
		if err == nil {
			return &opLock{ch: ch, l: l}, nil
		}
		_ = bounded(ctx, l, abortGrace, ch.Close)
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
			return nil, d.opErr(ctx, fmt.Sprintf("%s: take the lock %q: a queue of that name exists and is not a queuekit lock (a lock is exclusive, not durable, auto-delete); delete it", op, name), err)
		}
		if !errors.As(err, &ae) || ae.Code != amqp.ResourceLocked {
			return nil, d.opErr(ctx, fmt.Sprintf("%s: take the lock %q", op, name), err)
		}
		if d.foreignLock(ctx, name) {
			return nil, fmt.Errorf("rabbitmq: %s dead letters of %q: take the lock %q: a queue of that name exists and is not a queuekit lock (not exclusive: another connection's lock could not be declared passively); delete it", op, d.cfg.Queue, name)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("rabbitmq: %s dead letters of %q: another process holds the lock %q of the dead-letter queue (a browse, redrive or purge in progress): %w (%w)", op, d.cfg.Queue, name, ErrDeadLettersBusy, context.Cause(ctx))
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// foreignLock reports whether the lock queue name exists and is not
// exclusive to another connection: a passive declaration of a lock that
// another connection holds fails (RESOURCE_LOCKED), one of a queue that is
// not exclusive succeeds. A queue of that name that is not a queuekit lock
// would refuse every operation.
func (d *DeadLetters) foreignLock(ctx context.Context, name string) bool {
	ch, l, err := d.openChannel(ctx)
	if err != nil {
		return false
	}
	err = bounded(ctx, l, abortGrace, func() error {
		_, err := ch.QueueDeclarePassive(name, false, true, true, false, nil)
		return err
	})
	if err == nil {
		_ = bounded(ctx, l, abortGrace, ch.Close)
	}
	return err == nil
}

// unlock deletes the lock queue. When that fails, it drops the connection,
// which frees the lock too.
func (d *DeadLetters) unlock(ctx context.Context, lk *opLock) {
	err := bounded(ctx, lk.l, abortGrace, func() error {
		_, err := lk.ch.QueueDelete(d.lockName(), false, false, false)
		return err
	})
	if err != nil {
		lk.l.drop()
		return
	}
	_ = bounded(ctx, lk.l, abortGrace, lk.ch.Close)
}

// queueInfo returns the dead-letter queue's counts (a passive declaration
// on a channel of its own).
func (d *DeadLetters) queueInfo(ctx context.Context) (amqp.Queue, error) {
	ch, l, err := d.openChannel(ctx)
	if err != nil {
		return amqp.Queue{}, err
	}
	var q amqp.Queue
	err = bounded(ctx, l, abortGrace, func() (err error) {
		q, err = ch.QueueDeclarePassive(d.cfg.DeadLetterQueue, true, false, false, false, nil)
		return err
	})
	_ = bounded(ctx, l, abortGrace, ch.Close)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return q, fmt.Errorf("rabbitmq: dead-letter queue %q does not exist (no consumer of %q has declared its topology yet?): %w", d.cfg.DeadLetterQueue, d.cfg.Queue, err)
		}
		return q, d.opErr(ctx, fmt.Sprintf("check dead-letter queue %q", d.cfg.DeadLetterQueue), err)
	}
	return q, nil
}

// rotates reports whether keep must rotate on the dead-letter queue: unless
// it is known to be a classic queue. DeadLetterConfig.QueueType Quorum says
// so at once; otherwise a declaration of the queue with x-queue-type
// classic (and durable, no other argument) tells: the broker accepts it on
// a classic queue declared so, and refuses it (PRECONDITION_FAILED, which
// closes only the probe's channel) on a quorum queue, but also on a classic
// queue with other arguments (a TTL, a length limit) or when the user may
// not configure the queue: rotating is then the safe choice.
func (d *DeadLetters) rotates(ctx context.Context) (bool, error) {
	if d.cfg.QueueType == Quorum {
		return true, nil
	}
	ch, l, err := d.openChannel(ctx)
	if err != nil {
		return false, err
	}
	err = bounded(ctx, l, abortGrace, func() error {
		_, err := ch.QueueDeclare(d.cfg.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: Classic})
		return err
	})
	_ = bounded(ctx, l, abortGrace, ch.Close)
	if err == nil {
		return false, nil
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && !errors.Is(err, amqp.ErrClosed) && ae.Code != amqp.FrameError {
		return true, nil
	}
	return false, d.opErr(ctx, fmt.Sprintf("check the type of %q", d.cfg.DeadLetterQueue), err)
}

// consumerWait is how long openScan waits for the dead-letter queue's
// consumers to go before it refuses to browse it.
const consumerWait = 2 * time.Second

// openScan opens a channel for a pass over the dead-letter queue. It
// refuses a queue with consumers (they would take messages in the middle of
// the pass) with an error wrapping ErrDeadLettersBusy.
func (d *DeadLetters) openScan(ctx context.Context) (*scan, error) {
	q, err := d.queueInfo(ctx)
	if err != nil {
		return nil, err
	}
	// A quorum queue counts as a consumer each channel whose basic.get
	// messages are not settled yet: the previous pass's last
	// acknowledgements, on their way (RabbitMQ 3.10 reported 16, the
	// rotation window, right after a pass). A consumer that stays is one.
	for wait, pause := time.Now().Add(consumerWait), 10*time.Millisecond; q.Consumers > 0 && time.Now().Before(wait); pause = min(2*pause, 200*time.Millisecond) {
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("rabbitmq: dead letters of %q: %w", d.cfg.Queue, context.Cause(ctx))
		}
		if q, err = d.queueInfo(ctx); err != nil {
			return nil, err
		}
	}
	if q.Consumers > 0 {
		return nil, fmt.Errorf("rabbitmq: dead letters of %q: the dead-letter queue %q has %d consumer(s), which would take dead letters in the middle of a browse; stop them first: %w", d.cfg.Queue, d.cfg.DeadLetterQueue, q.Consumers, ErrDeadLettersBusy)
	}
	rotate, err := d.rotates(ctx)
	if err != nil {
		return nil, err
	}
	ch, l, err := d.openChannel(ctx)
	if err != nil {
		return nil, err
	}
	s := &scan{d: d, ctx: ctx, op: ctx, ch: ch, l: l, rotate: rotate, ready: q.Messages, total: q.Messages, user: dialUser(d.conn.d)}
	if rotate {
		// A pass cut short would leave the queue rotated: the calls
		// outlive ctx, and close finishes the pass (see scan.close).
		s.ctx = d.bg
	}
	return s, nil
}

// openChannel opens a channel on d.conn, bounded by ctx. Dialling cannot be
// interrupted (see Publisher.channelCtx), so it runs on a goroutine of its
// own, which closes the channel it got when the caller has left.
func (d *DeadLetters) openChannel(ctx context.Context) (*amqp.Channel, link, error) {
	type result struct {
		ch  *amqp.Channel
		l   link
		err error
	}
	res := make(chan result) // unbuffered: a send succeeds only if the caller takes it
	abandoned := make(chan struct{})
	d.ops.Add(1) // inside an operation: the count is not zero
	go func() {
		defer d.ops.Done()
		ch, l, err := d.conn.channelOn()
		if err != nil && unfixable(err, false) {
			err = broker.Fatal(err)
		}
		select {
		case res <- result{ch, l, err}:
		case <-abandoned:
			if ch != nil {
				_ = ch.Close()
			}
		}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			return nil, link{}, fmt.Errorf("rabbitmq: dead letters of %q: %w", d.cfg.Queue, r.err)
		}
		return r.ch, r.l, nil
	case <-ctx.Done():
		close(abandoned)
		return nil, link{}, fmt.Errorf("rabbitmq: dead letters of %q: connecting: %w", d.cfg.Queue, context.Cause(ctx))
	}
}

// opErr wraps err, an error of an amqp call of an operation, with ctx's
// cause when ctx ended (the call failed because call dropped the socket).
func (d *DeadLetters) opErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("rabbitmq: dead letters of %q: %s: %w (%v)", d.cfg.Queue, what, context.Cause(ctx), err)
	}
	return fmt.Errorf("rabbitmq: dead letters of %q: %s: %w", d.cfg.Queue, what, err)
}

// bounded runs f, an amqp091 call that waits on the network with no
// deadline of its own, bounded by ctx: when ctx has ended and f still runs
// grace later, the socket of l is closed (link.drop), which ends f at
// once. The connection is the DeadLetters' own (never a shared
// Connection, see NewDeadLetters): the broker then gives back everything
// unacknowledged on it, and the lock dies with it.
func bounded(ctx context.Context, l link, grace time.Duration, f func() error) error {
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
			l.drop()
		case <-done:
		}
	})
	err := f()
	close(done)
	stop()
	return err
}

// call is bounded for the scan: a scan that rotates finishes what it holds
// within rotateGrace past its ctx.
func (s *scan) call(f func() error) error {
	grace := abortGrace
	if s.rotate {
		grace = rotateGrace
	}
	return bounded(s.ctx, s.l, grace, f)
}

// next returns the next message of the pass (basic.get). ok is false at
// the end of the pass: the snapshot count read, or the queue empty. It
// returns an error wrapping ctx's when ctx ends, and one when the channel
// closed. The caller must ack or keep every message it gets.
func (s *scan) next() (d amqp.Delivery, ok bool, err error) {
	if s.read >= s.total {
		return d, false, nil
	}
	if err := s.op.Err(); err != nil {
		return d, false, fmt.Errorf("rabbitmq: dead letters of %q: %w", s.d.cfg.Queue, context.Cause(s.op))
	}
	err = s.call(func() (err error) {
		d, ok, err = s.ch.Get(s.d.cfg.DeadLetterQueue, false)
		return err
	})
	if err != nil {
		return d, false, s.d.opErr(s.ctx, "read "+strconv.Quote(s.d.cfg.DeadLetterQueue), err)
	}
	if !ok {
		s.total = s.read // someone else took messages meanwhile
		return d, false, nil
	}
	s.read++
	s.lastTag = d.DeliveryTag
	return d, true, nil
}

// ack removes the message with tag from the dead-letter queue.
func (s *scan) ack(tag uint64) error {
	if err := s.ackTag(tag); err != nil {
		return err
	}
	s.removed++
	return nil
}

// ackTag acknowledges tag (a removal, or the original of a rotated copy).
func (s *scan) ackTag(tag uint64) error {
	if err := s.call(func() error { return s.ch.Ack(tag, false) }); err != nil {
		return s.d.opErr(s.ctx, "ack", err)
	}
	if s.acked == nil {
		s.acked = map[uint64]bool{}
	}
	s.acked[tag] = true
	return nil
}

// keep leaves m in the dead-letter queue: nothing to do on a classic queue
// (close gives it back at its place); on a queue that rotates, a copy of m
// to the queue's tail, and m acknowledged once the copy is confirmed.
func (s *scan) keep(m *amqp.Delivery) error {
	if !s.rotate {
		return nil
	}
	if s.rc == nil {
		ch, l, err := s.d.openChannel(s.ctx)
		if err != nil {
			return err
		}
		var cc *confirmChannel
		err = s.call(func() (err error) {
			cc, err = newConfirmChannel(ch, l, false)
			return err
		})
		if err != nil {
			return s.d.opErr(s.ctx, "open the rotation channel", err)
		}
		s.rc = cc
	}
	id := deadLetterID(m)
	pub := rotationCopy(m, id, s.user)
	if err := checkPublish("", s.d.cfg.DeadLetterQueue, &pub); err != nil {
		return fmt.Errorf("rabbitmq: dead letters of %q: dead letter %s cannot be rotated (it stays, counted as a delivery): %w", s.d.cfg.Queue, id, err)
	}
	var w *pendingPublish
	err := s.call(func() (err error) {
		w, err = s.rc.publish(s.ctx, "", s.d.cfg.DeadLetterQueue, true, pub)
		return err
	})
	if err != nil {
		return s.d.opErr(s.ctx, "rotate "+id, err)
	}
	s.rpend = append(s.rpend, rotated{tag: m.DeliveryTag, id: id, w: w})
	return s.settleRotation(rotateWindow - 1)
}

// settleRotation waits for the confirms of the oldest rotated copies until
// at most keep are in flight, and acknowledges their originals. It waits
// rotateGrace past ctx.
func (s *scan) settleRotation(keep int) error {
	for len(s.rpend) > keep {
		p := s.rpend[0]
		if !waitGrace(s.ctx, p.w.done, rotateGrace) {
			return fmt.Errorf("rabbitmq: dead letters of %q: waiting for the confirm of the rotated copy of %s: %w", s.d.cfg.Queue, p.id, context.Cause(s.ctx))
		}
		s.rpend = s.rpend[1:]
		if p.w.err != nil {
			// The original stays unacknowledged: the close gives it back.
			return s.d.opErr(s.ctx, "rotate "+p.id, p.w.err)
		}
		if err := s.ackTag(p.tag); err != nil {
			return err
		}
	}
	return nil
}

// waitGrace waits for done until grace past the end of ctx.
func waitGrace(ctx context.Context, done <-chan struct{}, grace time.Duration) bool {
	select {
	case <-done:
		return true
	case <-ctx.Done():
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// finish reads the pass to its end (keeping every message), finishes the
// rotation, and returns the first error. The operation returns it when it
// had none of its own.
func (s *scan) finish() error {
	for s.op.Err() == nil {
		m, ok, err := s.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if err := s.keep(&m); err != nil {
			return err
		}
	}
	if s.rotate {
		if err := s.settleRotation(0); err != nil {
			return err
		}
	}
	if err := s.op.Err(); err != nil && s.read < s.total {
		return fmt.Errorf("rabbitmq: dead letters of %q: %w", s.d.cfg.Queue, context.Cause(s.op))
	}
	return nil
}

// close ends the pass: it finishes it (see finish), then closes the
// channel, which gives back every message read and not acknowledged (on a
// classic queue, all those kept, at their old places), and waits until the
// queue counts them as ready again (see settle).
//
// A classic queue puts back what a closed channel held at the messages'
// old places. (One basic.nack with multiple set does the same, but
// RabbitMQ 3.10 took 111 s to requeue 10,000 messages that way, against
// 0.25 s for the close.)
//
// On a queue that rotates, when the operation's ctx ended before the end
// of the pass, close hands the rest of the pass to a goroutine, which keeps
// the operation's lock until it has rotated the whole snapshot (the next
// operation waits for it; Close stops it), so that the queue keeps its
// order: the caller gets its error at once.
func (s *scan) close() {
	if s.rotate && s.op.Err() != nil && s.ctx.Err() == nil && !s.d.handedOff {
		s.d.handedOff = true
		s.d.ops.Add(1)
		go func() {
			defer s.d.ops.Done()
			s.op = s.ctx
			s.close()
			s.d.release()
		}()
		return
	}
	_ = s.finish()
	if s.rc != nil {
		_ = s.call(func() error { s.rc.close(); return nil })
	}
	held := s.lastTag > 0 && len(s.acked) < int(s.lastTag)
	_ = s.call(func() error { return s.ch.Close() })
	if !held || s.ctx.Err() != nil {
		return
	}
	ch, l, err := s.d.openChannel(s.ctx)
	if err != nil {
		return
	}
	s.ch, s.l = ch, l
	if !s.settle() && s.ctx.Err() == nil && !s.d.handedOff {
		// The operation's ctx ended first (a queue that rotates: the
		// calls run on the operation's bg). The caller never waits past
		// its ctx: the rest of the wait goes to a goroutine, which keeps
		// the operation's lock until settle returns (bounded by
		// settleWait and settleStable; Close stops it).
		s.d.handedOff = true
		s.d.ops.Add(1)
		go func() {
			defer s.d.ops.Done()
			s.op = s.ctx
			s.settle()
			_ = s.call(func() error { return s.ch.Close() })
			s.d.release()
		}()
		return
	}
	_ = s.call(func() error { return s.ch.Close() })
}

// settleWait bounds how long close waits for the queue to count the
// messages it gave back, when ctx allows that long.
const settleWait = time.Minute

// settleStable is how long settle waits with the count unchanged: the
// queue may never reach the count settle wants, when it dropped messages
// meanwhile (a quorum queue past its delivery limit drops what a lost
// connection gave back; a TTL, a length limit, or someone else's purge).
const settleStable = 2 * time.Second

// settle waits until the dead-letter queue holds at least as many ready
// messages as when the scan began, less those it removed. The broker
// requeues after the channel closed: the next operation's passive
// declaration could otherwise miss them, and its pass end early. It stops
// waiting when the count has not changed for settleStable, after
// settleWait, and when the operation's ctx (s.op) ends: then it returns
// false.
func (s *scan) settle() bool {
	want := s.ready - s.removed
	deadline := time.Now().Add(settleWait)
	pause := 5 * time.Millisecond
	last, since := -1, time.Now()
	for {
		var q amqp.Queue
		err := s.call(func() (err error) {
			q, err = s.ch.QueueDeclarePassive(s.d.cfg.DeadLetterQueue, true, false, false, false, nil)
			return err
		})
		if err != nil || q.Messages >= want || time.Now().After(deadline) {
			return true
		}
		if q.Messages != last {
			last, since = q.Messages, time.Now()
		} else if time.Since(since) >= settleStable {
			return true
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return true
		case <-s.op.Done():
			t.Stop()
			return false
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

// rotationCopy is the copy of dead letter m (with id) that a rotation
// publishes to the tail of the dead-letter queue: its properties, headers
// and body, with id in HeaderDeadLetterID (so that a dead letter written by
// someone else keeps the id List showed) and without x-delivery-count. A
// user-id property that is not the connection's user (the broker refuses
// to publish those) moves to the header x-queuekit-user-id.
func rotationCopy(m *amqp.Delivery, id, user string) amqp.Publishing {
	h := make(amqp.Table, len(m.Headers)+1)
	for k, v := range m.Headers {
		if k == "x-delivery-count" {
			continue
		}
		h[k] = v
	}
	h[HeaderDeadLetterID] = id
	uid := m.UserId
	if uid != "" && uid != user {
		h["x-queuekit-user-id"] = uid
		uid = ""
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		DeliveryMode:    m.DeliveryMode,
		Priority:        m.Priority,
		CorrelationId:   m.CorrelationId,
		ReplyTo:         m.ReplyTo,
		Expiration:      m.Expiration,
		MessageId:       m.MessageId,
		Timestamp:       m.Timestamp,
		Type:            m.Type,
		UserId:          uid,
		AppId:           m.AppId,
		Body:            m.Body,
	}
}

// dialUser is the user name of d's (first) URL.
func dialUser(d Dialer) string {
	raw := d.urls()[0]
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return "guest"
	}
	return u.User.Username()
}

// toDeadLetter converts a delivery of the dead-letter queue, with its body
// cut to bodyLimit (see broker.CutBody).
func toDeadLetter(d *amqp.Delivery, dlq string, bodyLimit int) broker.DeadLetter {
	msg := toMessage(d, dlq, nil)
	// x-delivery-count counts the browses on a quorum dead-letter queue,
	// and the id is DeadLetter.ID: neither is the message's.
	delete(msg.Header, "x-delivery-count")
	delete(msg.Header, HeaderDeadLetterID)
	dl := broker.DeadLetter{ID: deadLetterID(d), Message: msg, Partition: -1, Offset: -1}
	dl.Reason, dl.HasReason = broker.ParseReason(msg.Header)
	if !dl.HasReason {
		dl.Reason, dl.HasReason = xDeathReason(d.Headers)
	}
	dl.Message.Attempt = dl.Reason.Attempts
	dl.Redriven = broker.Redriven(msg.Header)
	broker.CutBody(&dl, bodyLimit)
	return dl
}

// deadLetterID names a dead letter: the HeaderDeadLetterID a Source gave it;
// for one written by someone else (or by RabbitMQ's own dead-lettering),
// "m-" and its message-id, or, without one, "h-" and a hash of its body and
// headers. Such foreign dead letters that are alike share their id: Redrive
// and Purge by id then handle all of them.
func deadLetterID(d *amqp.Delivery) string {
	if id, ok := d.Headers[HeaderDeadLetterID].(string); ok && id != "" {
		return id
	}
	if d.MessageId != "" {
		return "m-" + d.MessageId
	}
	h := fnv.New64a()
	_, _ = h.Write(d.Body)
	keys := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		switch k {
		case "x-delivery-count", "x-death", "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange",
			"x-last-death-queue", "x-last-death-reason", "x-last-death-exchange":
			continue // change as the message moves
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "\x00%s\x00%v", k, d.Headers[k])
	}
	return fmt.Sprintf("h-%016x", h.Sum64())
}

// xDeathReason reads the reason of a message RabbitMQ dead-lettered itself
// (rejected without requeue, expired, over a length or delivery limit) from
// its newest x-death entry: the queue it died in is the source.
func xDeathReason(h amqp.Table) (broker.Reason, bool) {
	deaths, ok := h["x-death"].([]any)
	if !ok || len(deaths) == 0 {
		return broker.Reason{}, false
	}
	t, ok := deaths[0].(amqp.Table)
	if !ok {
		return broker.Reason{}, false
	}
	var r broker.Reason
	r.Source, _ = t["queue"].(string)
	why, _ := t["reason"].(string)
	r.Err = "dead-lettered by RabbitMQ: " + why
	if c, ok := tableInt(t, "count"); ok {
		r.Attempts = int(min(max(c, 0), 1<<31-1))
	}
	if tm, ok := t["time"].(time.Time); ok {
		r.Time = tm
	}
	return r, r.Source != "" || why != ""
}

// List implements broker.DeadLetters. It reads the whole dead-letter queue
// from its head and leaves every message (given back in place, or rotated:
// see the package doc, Dead letters): the queue's count and order are the
// same afterwards (dead letters that arrive during a rotating pass
// interleave with the rotated ones). A dead letter that a crash left twice
// (see scan) is listed twice, with the same id; Redrive and Purge by id
// handle every copy. A cursor is "<position>:<id>" of the last item of the
// previous page; a dead letter removed before it is fine, but the cursor's
// own dead letter must still be there, or List returns an error wrapping
// broker.ErrDeadLetterNotFound.
func (d *DeadLetters) List(ctx context.Context, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	page := broker.DeadLetterPage{Items: []broker.DeadLetter{}}
	if err := q.Resolve(); err != nil {
		return page, fmt.Errorf("rabbitmq: list dead letters of %q: %w", d.cfg.Queue, err)
	}
	curPos, curID := -1, ""
	if q.Cursor != "" {
		p, id, ok := strings.Cut(q.Cursor, ":")
		n, err := strconv.Atoi(p)
		if !ok || err != nil || n < 0 || id == "" {
			return page, fmt.Errorf("rabbitmq: list dead letters of %q: %w: cursor %q is not one List returned", d.cfg.Queue, broker.ErrInvalidConfig, q.Cursor)
		}
		curPos, curID = n, id
	}
	ctx, release, err := d.begin(ctx, "list")
	if err != nil {
		return page, err
	}
	defer release()
	s, err := d.openScan(ctx)
	if err != nil {
		return page, err
	}
	defer s.close()
	type item struct {
		dl  broker.DeadLetter
		pos int
	}
	var (
		items   []item
		started = curID == ""
		done    bool
	)
	for i := 0; ; i++ {
		m, ok, err := s.next()
		if err != nil {
			return broker.DeadLetterPage{Items: []broker.DeadLetter{}}, err
		}
		if !ok {
			break
		}
		if err := s.keep(&m); err != nil {
			return broker.DeadLetterPage{Items: []broker.DeadLetter{}}, err
		}
		if done {
			continue // the pass reads on to the end (see scan)
		}
		if curID != "" && i <= curPos {
			// The cursor's dead letter is at curPos or, after removals,
			// before it: the page starts after the last one with its id
			// up to curPos.
			if deadLetterID(&m) == curID {
				started = true
				items = items[:0]
				continue
			}
			if !started {
				continue
			}
		} else if !started {
			// Past curPos without the cursor's dead letter: a quorum
			// queue may have moved it (see the package doc); the page
			// starts after its first occurrence from here.
			if deadLetterID(&m) == curID {
				started = true
			}
			continue
		}
		dl := toDeadLetter(&m, d.cfg.DeadLetterQueue, q.BodyLimit)
		if !q.Match(&dl) {
			continue
		}
		items = append(items, item{dl, i})
		if len(items) > q.Limit && i >= curPos {
			done = true // one more than the page: there is a next one
		}
	}
	if err := s.finish(); err != nil {
		return broker.DeadLetterPage{Items: []broker.DeadLetter{}}, err
	}
	if !started {
		return page, fmt.Errorf("rabbitmq: list dead letters of %q: cursor %q: %w", d.cfg.Queue, q.Cursor, broker.ErrDeadLetterNotFound)
	}
	if len(items) > q.Limit {
		last := items[q.Limit-1]
		page.Next = strconv.Itoa(last.pos) + ":" + last.dl.ID
		items = items[:q.Limit]
	}
	for _, it := range items {
		page.Items = append(page.Items, it.dl)
	}
	return page, nil
}

// Count implements broker.DeadLetters. With a zero filter it is the
// queue's ready message count (a passive declaration); otherwise List's
// pass over the whole queue.
func (d *DeadLetters) Count(ctx context.Context, f broker.DeadLetterFilter) (int, error) {
	ctx, release, err := d.begin(ctx, "count")
	if err != nil {
		return 0, err
	}
	defer release()
	if f.IsZero() {
		q, err := d.queueInfo(ctx)
		return q.Messages, err
	}
	s, err := d.openScan(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	n := 0
	match := f.Matcher()
	for {
		m, ok, err := s.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		if err := s.keep(&m); err != nil {
			return 0, err
		}
		dl := toDeadLetter(&m, d.cfg.DeadLetterQueue, 0)
		if match(&dl) {
			n++
		}
	}
	if err := s.finish(); err != nil {
		return 0, err
	}
	return n, nil
}

// selection follows which ids of a selection were seen, to report the
// missing ones and to stop a pass early once every id was found.
type selection struct {
	broker.DeadLetterSelection
	match   func(*broker.DeadLetter) bool
	want    map[string]bool // ids of the filter; true once seen
	seen    int
	matched int             // ids picked, counted against Max
	picked  map[string]bool // ids picked: every copy of one is picked too
}

func newSelection(sel broker.DeadLetterSelection) *selection {
	s := &selection{DeadLetterSelection: sel, match: sel.Matcher()}
	if len(sel.IDs) > 0 {
		s.want = make(map[string]bool, len(sel.IDs))
		for _, id := range sel.IDs {
			s.want[id] = false
		}
	}
	return s
}

// pick reports whether dl is selected (Max not reached yet). Max counts
// ids, not copies: every copy of an id picked (a crash can leave a dead
// letter twice) is picked too.
func (s *selection) pick(dl *broker.DeadLetter) bool {
	if seen, ok := s.want[dl.ID]; ok && !seen {
		s.want[dl.ID] = true
		s.seen++
	}
	if s.picked[dl.ID] {
		return s.match(dl)
	}
	if s.Max > 0 && s.matched >= s.Max {
		return false
	}
	if !s.match(dl) {
		return false
	}
	if s.picked == nil {
		s.picked = map[string]bool{}
	}
	s.picked[dl.ID] = true
	s.matched++
	return true
}

// missing returns the ids never seen, in the order given.
func (s *selection) missing() []string {
	var out []string
	seen := map[string]bool{}
	for _, id := range s.IDs {
		if !s.want[id] && !seen[id] {
			out = append(out, id)
		}
		seen[id] = true
	}
	return out
}

// redriveWindow is how many redriven copies are in flight at once: written,
// not yet confirmed.
const redriveWindow = 64

// Redrive implements broker.DeadLetters. It reads the dead-letter queue from
// its head; each selected dead letter is published as a copy (persistent,
// mandatory, to the default exchange with the queue's name as its routing
// key: DeadLetterConfig.Queue, or opts.Destination, a queue name; a dead
// letter whose x-queuekit-source header, or x-death, names another queue, or
// none, is skipped with broker.ErrNoSource unless opts.Destination is given),
// and acknowledged, which removes
// it, only once the broker confirmed the copy. The dead letters not
// selected, and those skipped, are left as List leaves them (a copy the
// broker refused is rotated after the ones read since). Every copy of a
// dead letter a crash left twice is redriven (its id once in Done). A copy the broker
// returns because its queue does not exist is skipped with
// broker.ErrNoSource, its dead letter kept. A connection lost half-way, or a
// process killed, leaves every dead letter not acknowledged in the queue: a
// second Redrive sends again those whose copy was confirmed but not yet
// acknowledged (duplicates, never a loss).
//
// The copy keeps the message's properties, body and headers (and its
// original routing key in x-queuekit-routing-key), without the reason
// headers and the attempt counters (x-queuekit-deliveries, x-death,
// x-delivery-count), so that it starts a fresh delivery budget, and with the
// redrive headers of broker.RedriveHeader.
func (d *DeadLetters) Redrive(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	res := broker.DeadLetterResult{Done: []string{}, DryRun: opts.DryRun}
	if err := sel.Check(); err != nil {
		return res, fmt.Errorf("rabbitmq: redrive dead letters of %q: %w", d.cfg.Queue, err)
	}
	if opts.Destination != "" {
		if err := checkName("redrive destination", opts.Destination); err != nil {
			return res, fmt.Errorf("rabbitmq: redrive dead letters of %q: %w", d.cfg.Queue, err)
		}
	}
	if dest := opts.Destination; dest == d.cfg.DeadLetterQueue || dest == d.cfg.Queue+".retry" || dest == d.lockName() {
		return res, fmt.Errorf("%w: rabbitmq: redrive dead letters of %q: destination %q is the dead-letter queue, the retry queue or the dead letters' lock", broker.ErrInvalidConfig, d.cfg.Queue, dest)
	}
	ctx, release, err := d.begin(ctx, "redrive")
	if err != nil {
		return res, err
	}
	defer release()
	s, err := d.openScan(ctx)
	if err != nil {
		return res, err
	}
	defer s.close()
	r := redrive{d: d, s: s, res: &res, opts: opts, exists: map[string]bool{}, doneIDs: map[string]bool{}, now: time.Now()}
	if opts.Destination != "" {
		ok, err := r.queueExists(opts.Destination)
		if err != nil {
			return res, err
		}
		if !ok {
			return res, fmt.Errorf("rabbitmq: redrive dead letters of %q: destination queue %q does not exist: %w", d.cfg.Queue, opts.Destination, broker.ErrNoSource)
		}
	}
	defer r.closePublisher()
	err = r.run(newSelection(sel))
	if err != nil {
		if s.rotate {
			// The copies in flight are settled (their dead letters
			// removed) before the rest of the pass goes on (see
			// scan.close).
			_ = r.settle(0)
		}
		return res, err
	}
	return res, res.Err()
}

// redrive is the state of one Redrive.
type redrive struct {
	d       *DeadLetters
	s       *scan
	res     *broker.DeadLetterResult
	opts    broker.RedriveOptions
	cc      *confirmChannel // opened on the first copy
	pending []redriven      // copies written, oldest first
	exists  map[string]bool // DryRun: queues checked
	doneIDs map[string]bool // ids in res.Done
	now     time.Time
}

type redriven struct {
	id   string
	tag  uint64
	dest string
	w    *pendingPublish
	m    *amqp.Delivery // kept (see scan.keep) when the copy is refused
}

func (r *redrive) run(sel *selection) error {
	limit := r.opts.Limit()
	for {
		m, ok, err := r.s.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		sent, err := r.one(sel, limit, &m)
		if err != nil {
			return err
		}
		if !sent {
			if err := r.s.keep(&m); err != nil {
				return err
			}
		}
	}
	if err := r.settle(0); err != nil {
		return err
	}
	if err := r.s.finish(); err != nil {
		return err
	}
	if r.s.ctx.Err() == nil {
		r.res.Missing = sel.missing()
	}
	return nil
}

// one handles dead letter m of the pass: sent is true when its copy was
// published (settle then removes or keeps it).
func (r *redrive) one(sel *selection, limit int, m *amqp.Delivery) (sent bool, err error) {
	{
		dl := toDeadLetter(m, r.d.cfg.DeadLetterQueue, 0)
		if !sel.pick(&dl) {
			return false, nil
		}
		if n := dl.Redriven; limit >= 0 && n >= limit {
			r.skip(dl.ID, fmt.Errorf("rabbitmq: dead letter %s was redriven %d times (limit %d): %w", dl.ID, n, limit, broker.ErrRedriveLimit))
			return false, nil
		}
		// Headers do not choose where a redrive writes (anyone who can
		// write to the dead-letter queue can write headers): the source is
		// the configured queue, and a dead letter that names another one,
		// or none, needs a Destination.
		dest := r.opts.Destination
		if dest == "" {
			switch dl.Reason.Source {
			case "":
				r.skip(dl.ID, fmt.Errorf("rabbitmq: dead letter %s has no %s header (nor x-death); give a Destination: %w", dl.ID, broker.HeaderSource, broker.ErrNoSource))
				return false, nil
			case r.d.cfg.Queue:
			default:
				r.skip(dl.ID, fmt.Errorf("rabbitmq: dead letter %s came from %q, not %q; give a Destination: %w", dl.ID, dl.Reason.Source, r.d.cfg.Queue, broker.ErrNoSource))
				return false, nil
			}
			dest = r.d.cfg.Queue
		}
		if r.opts.DryRun {
			ok, err := r.queueExists(dest)
			if err != nil {
				return false, err
			}
			if !ok {
				r.skip(dl.ID, noQueue(dl.ID, dest, nil))
				return false, nil
			}
			r.done(dl.ID)
			return false, nil
		}
		return r.publish(m, dl.ID, dest)
	}
}

// done reports id redriven (once: copies of a dead letter share its id,
// see scan).
func (r *redrive) done(id string) {
	if !r.doneIDs[id] {
		r.doneIDs[id] = true
		r.res.Done = append(r.res.Done, id)
	}
}

func (r *redrive) skip(id string, err error) {
	r.res.Skipped = append(r.res.Skipped, broker.NewSkipped(id, err))
}

func noQueue(id, dest string, err error) error {
	if err != nil {
		return fmt.Errorf("rabbitmq: dead letter %s: queue %q does not exist (the broker returned the copy: %v): %w", id, dest, err, broker.ErrNoSource)
	}
	return fmt.Errorf("rabbitmq: dead letter %s: queue %q does not exist: %w", id, dest, broker.ErrNoSource)
}

// queueExists checks dest with a passive declaration on a channel of its
// own (a failed one closes its channel).
func (r *redrive) queueExists(dest string) (bool, error) {
	if ok, known := r.exists[dest]; known {
		return ok, nil
	}
	ch, _, err := r.d.openChannel(r.s.ctx)
	if err != nil {
		return false, err
	}
	err = r.s.call(func() error {
		_, err := ch.QueueDeclarePassive(dest, true, false, false, false, nil)
		return err
	})
	_ = r.s.call(func() error { return ch.Close() })
	var ae *amqp.Error
	switch {
	case err == nil:
		r.exists[dest] = true
	case errors.As(err, &ae) && ae.Code == amqp.NotFound:
		r.exists[dest] = false
	default:
		return false, r.d.opErr(r.s.ctx, fmt.Sprintf("check queue %q", dest), err)
	}
	return r.exists[dest], nil
}

// publish writes the copy of m to dest, and settles the oldest copies in
// flight when the window is full.
func (r *redrive) publish(m *amqp.Delivery, id, dest string) (bool, error) {
	if r.cc == nil {
		ch, l, err := r.d.openChannel(r.s.ctx)
		if err != nil {
			return false, err
		}
		var cc *confirmChannel
		err = r.s.call(func() (err error) {
			cc, err = newConfirmChannel(ch, l, false)
			return err
		})
		if err != nil {
			return false, r.d.opErr(r.s.ctx, "open the redrive channel", err)
		}
		r.cc = cc
	}
	pub := redriveCopy(m, id, r.now)
	if err := checkPublish("", dest, &pub); err != nil {
		r.skip(id, fmt.Errorf("rabbitmq: dead letter %s cannot be sent again: %w", id, err))
		return false, nil
	}
	if !fits(&pub, true, r.cc.link.frameMax) {
		r.skip(id, fmt.Errorf("rabbitmq: dead letter %s cannot be sent again: %w", id, tooLarge(&pub, true, r.cc.link.frameMax)))
		return false, nil
	}
	var w *pendingPublish
	err := r.s.call(func() (err error) {
		w, err = r.cc.publish(r.s.ctx, "", dest, true, pub)
		return err
	})
	if err != nil {
		return true, r.d.opErr(r.s.ctx, fmt.Sprintf("publish the copy of %s to %q", id, dest), err)
	}
	r.pending = append(r.pending, redriven{id: id, tag: m.DeliveryTag, dest: dest, w: w, m: m})
	window := redriveWindow
	if r.s.rotate {
		window = rotateWindow // see rotateWindow
	}
	return true, r.settle(window - 1)
}

// settle waits for the confirms of the oldest copies in flight until at
// most keep are, and acknowledges the dead letter of each confirmed one.
func (r *redrive) settle(keep int) error {
	for len(r.pending) > keep {
		p := r.pending[0]
		grace := time.Duration(0)
		if r.s.rotate {
			grace = rotateGrace // see scan.call
		}
		if !waitGrace(r.s.ctx, p.w.done, grace) {
			return fmt.Errorf("rabbitmq: redrive dead letters of %q: waiting for the confirm of %s: %w", r.d.cfg.Queue, p.id, context.Cause(r.s.ctx))
		}
		r.pending = r.pending[1:]
		var re *ReturnError
		switch {
		case p.w.err == nil:
			if err := r.s.ack(p.tag); err != nil {
				return err
			}
			r.done(p.id)
		case errors.As(p.w.err, &re):
			r.skip(p.id, noQueue(p.id, p.dest, p.w.err))
			if err := r.s.keep(p.m); err != nil {
				return err
			}
		case errors.Is(p.w.err, ErrNacked):
			r.skip(p.id, fmt.Errorf("rabbitmq: dead letter %s: the broker refused its copy to %q: %w", p.id, p.dest, p.w.err))
			if err := r.s.keep(p.m); err != nil {
				return err
			}
		default:
			return r.d.opErr(r.s.ctx, fmt.Sprintf("publish the copy of %s to %q", p.id, p.dest), p.w.err)
		}
	}
	return nil
}

func (r *redrive) closePublisher() {
	if r.cc != nil {
		_ = r.s.call(func() error { r.cc.close(); return nil })
	}
}

// deathHeaders are the headers RabbitMQ writes when it dead-letters a
// message; a redriven copy starts without them.
var deathHeaders = []string{
	"x-death", "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange",
	"x-last-death-queue", "x-last-death-reason", "x-last-death-exchange",
}

// redriveCopy is the copy of dead letter m (with id) that Redrive sends:
// its properties and body, its headers as broker.RedriveHeader changes
// them (values of other types kept as they are), without the attempt
// counters and the dead-letter id.
func redriveCopy(m *amqp.Delivery, id string, now time.Time) amqp.Publishing {
	strs := stringHeaders(m.Headers)
	next := broker.RedriveHeader(strs, id, now)
	h := make(amqp.Table, len(m.Headers)+3)
	for k, v := range m.Headers {
		switch {
		case k == "x-delivery-count", k == HeaderDeliveries, k == HeaderDeadLetterID, k == seqHeader,
			slices.Contains(deathHeaders, k):
			continue
		}
		if _, isStr := strs[k]; isStr {
			if _, kept := next[k]; !kept {
				continue // a reason header
			}
		}
		h[k] = v
	}
	for _, k := range []string{broker.HeaderRedriven, broker.HeaderRedrivenAt, broker.HeaderRedrivenFrom} {
		h[k] = next[k]
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        m.Priority,
		CorrelationId:   m.CorrelationId,
		ReplyTo:         m.ReplyTo,
		MessageId:       m.MessageId,
		Timestamp:       m.Timestamp,
		Type:            m.Type,
		UserId:          m.UserId,
		AppId:           m.AppId,
		Body:            m.Body,
	}
}

// Purge implements broker.DeadLetters: it reads the dead-letter queue from
// its head and acknowledges (removes) the selected dead letters; the others
// go back to their places. With dryRun it removes nothing and reports what
// it would remove.
func (d *DeadLetters) Purge(ctx context.Context, sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	res := broker.DeadLetterResult{Done: []string{}, DryRun: dryRun}
	if err := sel.Check(); err != nil {
		return res, fmt.Errorf("rabbitmq: purge dead letters of %q: %w", d.cfg.Queue, err)
	}
	ctx, release, err := d.begin(ctx, "purge")
	if err != nil {
		return res, err
	}
	defer release()
	s, err := d.openScan(ctx)
	if err != nil {
		return res, err
	}
	defer s.close()
	ps := newSelection(sel)
	done := map[string]bool{}
	for {
		m, ok, err := s.next()
		if err != nil {
			return res, err
		}
		if !ok {
			break
		}
		dl := toDeadLetter(&m, d.cfg.DeadLetterQueue, 0)
		picked := ps.pick(&dl)
		if !picked || dryRun {
			if err := s.keep(&m); err != nil {
				return res, err
			}
			if picked && !done[dl.ID] {
				done[dl.ID] = true
				res.Done = append(res.Done, dl.ID)
			}
			continue
		}
		if err := s.ack(m.DeliveryTag); err != nil {
			return res, err
		}
		if !done[dl.ID] {
			// Copies of one dead letter (a rotation cut short by a crash,
			// see scan) share its id: each is removed, the id told once.
			done[dl.ID] = true
			res.Done = append(res.Done, dl.ID)
		}
	}
	if err := s.finish(); err != nil {
		return res, err
	}
	res.Missing = ps.missing()
	return res, res.Err()
}

// lockSuffix names the lock of a dead-letter queue (see the package doc).
const lockSuffix = ".queuekit-lock"

// ErrDeadLettersBusy is returned when another process holds the dead
// letters' lock until the operation's context ended, or when the
// dead-letter queue has consumers.
var ErrDeadLettersBusy = errors.New("rabbitmq: dead letters busy")

// checkName checks a queue name before it is sent to the broker: valid
// UTF-8 (a shortstr that is not makes the broker close the connection) of
// at most 255 bytes.
func checkName(what, name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: rabbitmq: %s %q is not valid UTF-8", broker.ErrInvalidConfig, what, name)
	}
	return checkShortstr(what, name)
}
