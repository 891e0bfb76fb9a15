package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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
	// Conn, when set, is a shared connection to open the channels on. The
	// DeadLetters then does not close it.
	Conn *Connection
	// Queue is the work queue whose dead letters these are. Required.
	Queue string
	// DeadLetterQueue is the queue holding them (default Queue+".dlq", the
	// default of Topology.DeadLetterQueue).
	DeadLetterQueue string
	// QueueType is the type of the dead-letter queue, Classic (default) or
	// Quorum: how to give back what a pass read in order (see the package
	// doc, Dead letters). A quorum queue is also recognized by the
	// x-delivery-count of a message that was browsed before.
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
	if err := checkShortstr("queue name", c.Queue); err != nil {
		return err
	}
	if err := checkShortstr("dead-letter queue name", c.DeadLetterQueue); err != nil {
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
	case "":
		c.QueueType = Classic
	case Classic, Quorum:
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
// time (two browses at once would each see only the dead letters the other
// does not hold). It connects on its first operation, on a connection of its
// own unless DeadLetterConfig.Conn is set. Close ends it; its methods then
// return an error wrapping ErrDeadLettersClosed.
type DeadLetters struct {
	cfg     DeadLetterConfig
	conn    *Connection
	ownConn bool

	sem chan struct{} // one operation at a time

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
	d := &DeadLetters{cfg: cfg, conn: cfg.Conn, sem: make(chan struct{}, 1), done: make(chan struct{}), closeDone: make(chan struct{})}
	if d.conn == nil {
		d.conn = newConnection(cfg.Dialer)
		d.ownConn = true
	}
	return d, nil
}

// Close stops the operations in progress (their dead letters go back to
// the queue, in order, as when their context ends) and closes the
// connection if the DeadLetters owns it. It is bounded by ctx: when ctx ends
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

// deliveryCountWarning is the x-delivery-count from which a pass warns that
// a quorum dead-letter queue counts its browses as deliveries.
const deliveryCountWarning = 10

// A scan is one pass over the dead-letter queue: a channel of its own that
// takes messages one by one (basic.get, manual acknowledgement) up to the
// number the queue held when the pass began. Nothing is acknowledged unless
// the operation says so; close gives everything else back (basic.nack with
// requeue), one message at a time, oldest first.
//
// A pass always reads to the end of that snapshot, even when the operation
// needs only the first page: a classic queue puts messages given back at
// their old places, but a quorum queue puts them at its tail, in the order
// it gets them back, so only a pass over the whole queue, given back in
// order, leaves the order as it was. basic.get rather than basic.consume:
// RabbitMQ 3.10 returns the messages of a cancelled consumer to a quorum
// queue partly reversed (measured: of 50, the first 33 in order, then the
// other 17 backwards), and a consumer that is not cancelled gets what it
// gives back again. A get costs a round trip per message (see the package
// doc for the figures).
//
// A scan belongs to the goroutine of its operation. Every call that waits on
// the broker is bounded by ctx (see call).
type scan struct {
	d       *DeadLetters
	ctx     context.Context
	ch      *amqp.Channel
	l       link
	acked   map[uint64]bool // delivery tags of the messages the operation removed
	ready   int             // messages ready in the queue when the scan began
	total   int             // messages the pass reads at most: ready, or less
	read    int             // messages read so far
	lastTag uint64          // delivery tag of the last message read
	warned  bool            // the delivery-count warning was logged
	quorum  bool            // the queue is a quorum queue: see close
	release func()          // ends the operation (see begin)
}

// begin starts an operation: it waits for its turn (one operation at a
// time), opens a channel and learns how many messages the dead-letter queue
// holds. The caller must call release.
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
	watch := make(chan struct{})
	d.ops.Add(1)
	go func() {
		defer d.ops.Done()
		select {
		case <-d.done:
			cancel(ErrDeadLettersClosed)
		case <-watch:
		}
	}()
	return octx, func() {
		close(watch)
		cancel(nil)
		<-d.sem
		d.ops.Done()
	}, nil
}

// openScan opens a channel for a pass over at most limit messages of the
// dead-letter queue (limit < 0: all of them) and subscribes. It returns a
// scan with total 0 and no subscription when the queue is empty.
func (d *DeadLetters) openScan(ctx context.Context, limit int) (*scan, error) {
	ch, l, err := d.openChannel(ctx)
	if err != nil {
		return nil, err
	}
	s := &scan{d: d, ctx: ctx, ch: ch, l: l, quorum: d.cfg.QueueType == Quorum}
	var q amqp.Queue
	err = s.call(func() (err error) {
		q, err = ch.QueueDeclarePassive(d.cfg.DeadLetterQueue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		s.close()
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return nil, fmt.Errorf("rabbitmq: dead-letter queue %q does not exist (no consumer of %q has declared its topology yet?): %w", d.cfg.DeadLetterQueue, d.cfg.Queue, err)
		}
		return nil, d.opErr(ctx, fmt.Sprintf("check dead-letter queue %q", d.cfg.DeadLetterQueue), err)
	}
	s.ready, s.total = q.Messages, q.Messages
	if limit >= 0 && limit < s.total {
		s.total = limit
	}
	if s.total == 0 {
		return s, nil
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

// call runs f, an amqp091 call that waits on the network with no deadline
// of its own, bounded by the scan's ctx: when ctx ends while f still runs,
// the connection's socket is closed (link.drop), which ends f at once; the
// broker then gives back everything unacknowledged on the connection, in
// order. When ctx is already done, f gets abortGrace first: the give-back
// at the end of an operation must not cost a healthy connection.
func (s *scan) call(f func() error) error {
	var stop func() bool
	if s.ctx.Err() != nil {
		t := time.AfterFunc(abortGrace, s.l.drop)
		stop = t.Stop
	} else {
		stop = context.AfterFunc(s.ctx, s.l.drop)
	}
	err := f()
	stop()
	return err
}

// next returns the next message of the pass (basic.get). ok is false at
// the end of the pass: the snapshot count read, or the queue empty. It
// returns an error wrapping ctx's when ctx ends, and one when the channel
// closed.
func (s *scan) next() (d amqp.Delivery, ok bool, err error) {
	if s.read >= s.total {
		return d, false, nil
	}
	if err := s.ctx.Err(); err != nil {
		return d, false, fmt.Errorf("rabbitmq: dead letters of %q: %w", s.d.cfg.Queue, context.Cause(s.ctx))
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
	n, counted := tableInt(d.Headers, "x-delivery-count")
	if counted {
		s.quorum = true // only a quorum queue counts deliveries
	}
	if counted && n >= deliveryCountWarning && !s.warned {
		s.warned = true
		s.d.cfg.Logger.Warn("rabbitmq: a dead letter was browsed many times: on a quorum queue every pass counts as a delivery; "+
			"a delivery-limit on the dead-letter queue (RabbitMQ 4 sets 20 by default) makes the broker drop or dead-letter it",
			"queue", s.d.cfg.DeadLetterQueue, "x-delivery-count", n)
	}
	return d, true, nil
}

// ack removes the message with tag from the dead-letter queue.
func (s *scan) ack(tag uint64) error {
	if err := s.call(func() error { return s.ch.Ack(tag, false) }); err != nil {
		return s.d.opErr(s.ctx, "ack", err)
	}
	if s.acked == nil {
		s.acked = map[uint64]bool{}
	}
	s.acked[tag] = true
	return nil
}

// close reads the pass to its end, then gives back every message the scan
// read and did not acknowledge, so that the broker puts each back at its
// place, in order, and waits until the queue counts them as ready again
// (see settle).
//
// On a classic queue it closes the channel: the broker requeues what the
// channel held at the messages' old places. (One basic.nack with multiple
// set does the same, but RabbitMQ 3.10 took 111 s to requeue 10,000
// messages that way, against 0.25 s for the close.) A quorum queue puts
// what it gets back at its tail, in the order it gets it, and applies a
// channel's close, or a multiple nack, partly reversed (see scan): there
// close sends one nack per message, oldest first, pipelined (no answer is
// awaited), waits, and only then closes the channel. A channel's delivery
// tags run 1, 2, 3…, and the scan takes every message on it. When ctx has
// ended, close skips the waits: closing the channel (or the connection,
// see call) gives everything back, though a quorum queue may then reorder
// it.
func (s *scan) close() {
	for s.ctx.Err() == nil {
		if _, ok, err := s.next(); !ok || err != nil {
			break
		}
	}
	if s.lastTag == 0 || !s.quorum {
		_ = s.call(func() error { return s.ch.Close() })
		if s.lastTag > 0 && s.ctx.Err() == nil {
			if ch, l, err := s.d.openChannel(s.ctx); err == nil {
				s.ch, s.l = ch, l
				s.settle()
				_ = s.call(func() error { return s.ch.Close() })
			}
		}
		return
	}
	err := s.call(func() error {
		for tag := uint64(1); tag <= s.lastTag; tag++ {
			if s.acked[tag] {
				continue
			}
			if err := s.ch.Nack(tag, false, true); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && s.ctx.Err() == nil {
		s.settle()
	}
	_ = s.call(func() error { return s.ch.Close() })
}

// settleWait bounds how long close waits for the queue to count the
// messages it gave back, when ctx allows that long.
const settleWait = 5 * time.Minute

// settle waits until the dead-letter queue holds at least as many ready
// messages as when the scan began, less those it removed. The broker
// requeues after the channel closed or the nack reached the queue, a quorum
// queue through its log: the next operation's passive declaration could
// otherwise miss them, and its pass end early; and closing the channel
// before a quorum queue took everything back reorders it (RabbitMQ 3.10:
// by a rotation).
func (s *scan) settle() {
	want := s.ready - len(s.acked)
	deadline := time.Now().Add(settleWait)
	pause := 5 * time.Millisecond
	for {
		var q amqp.Queue
		err := s.call(func() (err error) {
			q, err = s.ch.QueueDeclarePassive(s.d.cfg.DeadLetterQueue, true, false, false, false, nil)
			return err
		})
		if err != nil || q.Messages >= want || time.Now().After(deadline) {
			return
		}
		select {
		case <-time.After(pause):
		case <-s.ctx.Done():
			return
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

// toDeadLetter converts a delivery of the dead-letter queue, with its body
// cut to bodyLimit (see broker.CutBody).
func toDeadLetter(d *amqp.Delivery, dlq string, bodyLimit int) broker.DeadLetter {
	msg := toMessage(d, dlq)
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

// List implements broker.DeadLetters. It reads the dead-letter queue from
// its head, as far as the page needs, and gives every message back (see
// the package doc, Dead letters): the queue's count and order are the same
// afterwards. A cursor is "<position>:<id>" of the last item of the
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
	s, err := d.openScan(ctx, -1)
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
		s, err := d.openScan(ctx, 0)
		if err != nil {
			return 0, err
		}
		s.close()
		return s.ready, nil
	}
	s, err := d.openScan(ctx, -1)
	if err != nil {
		return 0, err
	}
	defer s.close()
	n := 0
	for {
		m, ok, err := s.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return n, nil
		}
		dl := toDeadLetter(&m, d.cfg.DeadLetterQueue, 0)
		if f.Match(&dl) {
			n++
		}
	}
}

// selection follows which ids of a selection were seen, to report the
// missing ones and to stop a pass early once every id was found.
type selection struct {
	broker.DeadLetterSelection
	match   func(*broker.DeadLetter) bool
	want    map[string]bool // ids of the filter; true once seen
	seen    int
	matched int
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

// pick reports whether dl is selected (Max not reached yet).
func (s *selection) pick(dl *broker.DeadLetter) bool {
	if seen, ok := s.want[dl.ID]; ok && !seen {
		s.want[dl.ID] = true
		s.seen++
	}
	if s.Max > 0 && s.matched >= s.Max {
		return false
	}
	if !s.match(dl) {
		return false
	}
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
// selected, and those skipped, go back to their places. A copy the broker
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
		if err := checkShortstr("redrive destination", opts.Destination); err != nil {
			return res, fmt.Errorf("rabbitmq: redrive dead letters of %q: %w", d.cfg.Queue, err)
		}
	}
	if dest := opts.Destination; dest == d.cfg.DeadLetterQueue || dest == d.cfg.Queue+".retry" {
		return res, fmt.Errorf("%w: rabbitmq: redrive dead letters of %q: destination %q is the dead-letter queue or the retry queue", broker.ErrInvalidConfig, d.cfg.Queue, dest)
	}
	ctx, release, err := d.begin(ctx, "redrive")
	if err != nil {
		return res, err
	}
	defer release()
	s, err := d.openScan(ctx, -1)
	if err != nil {
		return res, err
	}
	defer s.close()
	r := redrive{d: d, s: s, res: &res, opts: opts, exists: map[string]bool{}, now: time.Now()}
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
	now     time.Time
}

type redriven struct {
	id   string
	tag  uint64
	dest string
	w    *pendingPublish
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
		dl := toDeadLetter(&m, r.d.cfg.DeadLetterQueue, 0)
		if !sel.pick(&dl) {
			continue
		}
		if n := dl.Redriven; limit >= 0 && n >= limit {
			r.skip(dl.ID, fmt.Errorf("rabbitmq: dead letter %s was redriven %d times (limit %d): %w", dl.ID, n, limit, broker.ErrRedriveLimit))
			continue
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
				continue
			case r.d.cfg.Queue:
			default:
				r.skip(dl.ID, fmt.Errorf("rabbitmq: dead letter %s came from %q, not %q; give a Destination: %w", dl.ID, dl.Reason.Source, r.d.cfg.Queue, broker.ErrNoSource))
				continue
			}
			dest = r.d.cfg.Queue
		}
		if r.opts.DryRun {
			ok, err := r.queueExists(dest)
			if err != nil {
				return err
			}
			if !ok {
				r.skip(dl.ID, noQueue(dl.ID, dest, nil))
				continue
			}
			r.res.Done = append(r.res.Done, dl.ID)
			continue
		}
		if err := r.publish(&m, dl.ID, dest); err != nil {
			return err
		}
	}
	if err := r.settle(0); err != nil {
		return err
	}
	if r.s.ctx.Err() == nil {
		r.res.Missing = sel.missing()
	}
	return nil
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
func (r *redrive) publish(m *amqp.Delivery, id, dest string) error {
	if r.cc == nil {
		ch, l, err := r.d.openChannel(r.s.ctx)
		if err != nil {
			return err
		}
		var cc *confirmChannel
		err = r.s.call(func() (err error) {
			cc, err = newConfirmChannel(ch, l, false)
			return err
		})
		if err != nil {
			return r.d.opErr(r.s.ctx, "open the redrive channel", err)
		}
		r.cc = cc
	}
	pub := redriveCopy(m, id, r.now)
	if err := checkPublish("", dest, &pub); err != nil {
		r.skip(id, fmt.Errorf("rabbitmq: dead letter %s cannot be sent again: %w", id, err))
		return nil
	}
	if !fits(&pub, true, r.cc.link.frameMax) {
		r.skip(id, fmt.Errorf("rabbitmq: dead letter %s cannot be sent again: %w", id, tooLarge(&pub, true, r.cc.link.frameMax)))
		return nil
	}
	var w *pendingPublish
	err := r.s.call(func() (err error) {
		w, err = r.cc.publish(r.s.ctx, "", dest, true, pub)
		return err
	})
	if err != nil {
		return r.d.opErr(r.s.ctx, fmt.Sprintf("publish the copy of %s to %q", id, dest), err)
	}
	r.pending = append(r.pending, redriven{id: id, tag: m.DeliveryTag, dest: dest, w: w})
	return r.settle(redriveWindow - 1)
}

// settle waits for the confirms of the oldest copies in flight until at
// most keep are, and acknowledges the dead letter of each confirmed one.
func (r *redrive) settle(keep int) error {
	for len(r.pending) > keep {
		p := r.pending[0]
		select {
		case <-p.w.done:
		case <-r.s.ctx.Done():
			return fmt.Errorf("rabbitmq: redrive dead letters of %q: waiting for the confirm of %s: %w", r.d.cfg.Queue, p.id, context.Cause(r.s.ctx))
		}
		r.pending = r.pending[1:]
		var re *ReturnError
		switch {
		case p.w.err == nil:
			if err := r.s.ack(p.tag); err != nil {
				return err
			}
			r.res.Done = append(r.res.Done, p.id)
		case errors.As(p.w.err, &re):
			r.skip(p.id, noQueue(p.id, p.dest, p.w.err))
		case errors.Is(p.w.err, ErrNacked):
			r.skip(p.id, fmt.Errorf("rabbitmq: dead letter %s: the broker refused its copy to %q: %w", p.id, p.dest, p.w.err))
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
	s, err := d.openScan(ctx, -1)
	if err != nil {
		return res, err
	}
	defer s.close()
	ps := newSelection(sel)
	for {
		m, ok, err := s.next()
		if err != nil {
			return res, err
		}
		if !ok {
			break
		}
		dl := toDeadLetter(&m, d.cfg.DeadLetterQueue, 0)
		if !ps.pick(&dl) {
			continue
		}
		if !dryRun {
			if err := s.ack(m.DeliveryTag); err != nil {
				return res, err
			}
		}
		res.Done = append(res.Done, dl.ID)
	}
	res.Missing = ps.missing()
	return res, res.Err()
}
