package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// HeaderDeliveries is set on a message the source publishes again (a delayed
// retry, or a requeue on a classic queue): it holds the number of deliveries
// the message had so far, so that Message.Attempt keeps counting on the copy.
const HeaderDeliveries = "x-queuekit-deliveries"

// delivery is one amqp.Delivery and the session it came on.
type delivery struct {
	s        *Source
	sess     *session
	d        amqp.Delivery // by value: one allocation per delivery, not two
	msg      broker.Message
	settling atomic.Bool // a settlement is in progress
	done     atomic.Bool // settled (or stale): nothing more to do
	memo     bool        // the message has an entry in the source's attemptMemo
	// keyBuf holds msg.Key when it fits: a routing key is short, and the
	// key then costs no allocation of its own.
	keyBuf [64]byte
}

var (
	_ broker.DelayedRequeuer = (*delivery)(nil)
	_ broker.Releaser        = (*delivery)(nil)
)

// routingKeyHeader keeps a message's original routing key on the copies the
// source publishes (they are routed by queue name), so Message.Key stays the
// key the producer chose.
const routingKeyHeader = "x-queuekit-routing-key"

func (s *Source) newDelivery(sess *session, d amqp.Delivery) *delivery {
	if sess.acks != nil {
		sess.acks.register(d.DeliveryTag)
	}
	dl := &delivery{s: s, sess: sess, d: d}
	dl.msg = toMessage(&dl.d, s.cfg.Queue, dl.keyBuf[:0])
	if a, ok := s.memo.redelivery(&dl.d); ok {
		dl.msg.Attempt = a
		dl.memo = true
	}
	if dl.msg.ID == "" {
		// No message-id (our Publisher always sets one): name the delivery
		// for logs. It is not stable across redeliveries.
		dl.msg.ID = s.cfg.Queue + "/" + strconv.FormatUint(sess.gen, 10) + "." + strconv.FormatUint(d.DeliveryTag, 10)
	}
	return dl
}

// toMessage converts an AMQP delivery from queue into a broker.Message. The
// content-type property becomes the header broker.HeaderContentType, the
// inverse of what Publish does. The key is appended to buf (of capacity
// enough for a usual key, or nil), capped so that a handler's append to it
// copies.
func toMessage(d *amqp.Delivery, queue string, buf []byte) broker.Message {
	key := d.RoutingKey
	if k, ok := d.Headers[routingKeyHeader].(string); ok {
		key = k
	}
	kb := append(buf, key...)
	kb = kb[:len(kb):len(kb)]
	if kb == nil {
		kb = []byte{} // as []byte(key) was
	}
	h := stringHeaders(d.Headers)
	if d.ContentType != "" {
		// The property, as the header Publish took it from (the property
		// wins over a header of the same name).
		if h == nil {
			h = make(map[string]string, 1)
		}
		h[broker.HeaderContentType] = d.ContentType
	}
	return broker.Message{
		ID:      d.MessageId,
		Topic:   queue,
		Key:     kb,
		Body:    d.Body,
		Header:  h,
		Time:    d.Timestamp,
		Attempt: attempt(d),
	}
}

// attempt computes Message.Attempt: the deliveries before the last publish of
// this message (our HeaderDeliveries, or else the x-death counts the broker
// keeps across dead-lettering), plus the deliveries since (x-delivery-count
// on quorum queues counts the previous ones; on classic queues the
// redelivered flag says only "at least one").
func attempt(d *amqp.Delivery) int {
	prior, ok := tableInt(d.Headers, HeaderDeliveries)
	if !ok {
		prior = xDeathCount(d.Headers)
	}
	// Any producer can set these headers: a negative count counts as 0, and
	// sums saturate instead of wrapping, so that Attempt is always >= 1 and
	// fits an int on every platform.
	n := int64(1)
	if dc, ok := tableInt(d.Headers, "x-delivery-count"); ok {
		n = satAdd(n, max(dc, 0))
	} else if d.Redelivered {
		n++
	}
	return int(min(satAdd(max(prior, 0), n), math.MaxInt32))
}

// satAdd adds two counts >= 0 without wrapping.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// attemptOf is Message.Attempt for d as newDelivery computes it, with the
// memo's correction when d's message has an entry there (see
// attemptMemo.redelivery).
func (s *Source) attemptOf(d *amqp.Delivery) int {
	if a, ok := s.memo.redelivery(d); ok {
		return a
	}
	return attempt(d)
}

// attemptMemo remembers the messages this source gave back unhandled with
// basic.nack and requeue (Release, and the deliveries Pause gives back), so
// that the redeliveries the broker counts for them are not counted as
// attempts. The broker marks such a redelivery redelivered, and on a quorum
// queue counts it in x-delivery-count: without the memo a message paused in
// the client's buffer would come back with an attempt spent, and one
// released and then requeued would carry every release in its Attempt ever
// after. A message is known by its message-id and a hash of its body.
//
// An entry holds two things. A give-back pins the Attempt of the message's
// next delivery: the same one after a release (no handler saw it), one
// more after a classic-queue Requeue whose copy the broker refused (that
// nack is the handler's failure, which the broker does not count there).
// That next delivery takes the pin and keeps, as the entry's offset, the
// difference between what the broker counts (attempt) and the pinned
// Attempt: the redeliveries the broker counted that were not attempts.
// Every later delivery of the message carries the broker's count less the
// offset (at least 1), so a quorum-queue Requeue after two releases is
// attempt 2, not 4. The offset is measured, not assumed: a broker that does
// not count a release (RabbitMQ 4.3 and later do not count basic.nack)
// leaves it at 0. The entry stays until the message is settled for good by
// this source (Ack, DeadLetter, or a Requeue or RequeueAfter that publishes
// a copy, which carries its Attempt in HeaderDeliveries), or until it ages
// out.
//
// The memo is per Source and in memory: a released message that another
// consumer takes, or that comes back after a restart, counts the
// redeliveries the broker counted as attempts (attempts spent early, never
// a budget that grows without bound). Its size is bounded (see init); when
// full, the entry used least recently goes, with the same effect for its
// message: its next deliveries count the releases again. A failure another
// consumer had with the message between a release and its next delivery
// here is counted in the offset, not as an attempt.
type attemptMemo struct {
	n     atomic.Int64 // entries, read without the lock on the hot path
	mu    sync.Mutex
	m     map[memoKey]memoEntry
	max   int
	seq   uint64
	order []memoOrder // uses, oldest first; may hold stale entries (see touch)
}

// memoOrder records when a key was last used, for least-recently-used
// eviction without a scan of the map.
type memoOrder struct {
	key memoKey
	seq uint64
}

type memoKey struct {
	id  string
	sum uint64
}

type memoEntry struct {
	next   int    // the Attempt of the next delivery, pinned by a give-back; 0 when none
	offset int64  // redeliveries the broker counted that were not attempts
	seq    uint64 // last use, for eviction
}

// init sizes the memo: a pause gives back at most prefetch deliveries, and
// most come back to this source before the next pause.
func (m *attemptMemo) init(prefetch int) {
	m.max = max(64*prefetch, 4096)
	m.m = make(map[memoKey]memoEntry)
}

func keyOf(d *amqp.Delivery) memoKey {
	h := fnv.New64a()
	_, _ = h.Write(d.Body)
	return memoKey{id: d.MessageId, sum: h.Sum64()}
}

// put pins Attempt a for d's next delivery, keeping the offset d's message
// has in the memo.
func (m *attemptMemo) put(d *amqp.Delivery, a int) {
	k := keyOf(d)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil { // a Source not made by NewSource
		m.init(0)
	}
	e, ok := m.m[k]
	if !ok {
		for len(m.m) >= m.max && len(m.order) > 0 {
			// Least recently used first. An order entry whose key was
			// taken since, or used again later (another seq), is stale:
			// skip it.
			o := m.order[0]
			m.order = m.order[1:]
			if e, ok := m.m[o.key]; ok && e.seq == o.seq {
				delete(m.m, o.key)
			}
		}
	}
	e.next = a
	m.touch(k, e)
	m.n.Store(int64(len(m.m)))
}

// touch stores e as k's entry, used now. The caller holds mu.
func (m *attemptMemo) touch(k memoKey, e memoEntry) {
	m.seq++
	e.seq = m.seq
	m.m[k] = e
	m.order = append(m.order, memoOrder{key: k, seq: m.seq})
	if len(m.order) > 2*m.max {
		// Entries taken or used since leave stale order entries behind:
		// compact now and then, so that order stays bounded too.
		live := m.order[:0]
		for _, o := range m.order {
			if e, ok := m.m[o.key]; ok && e.seq == o.seq {
				live = append(live, o)
			}
		}
		m.order = append([]memoOrder(nil), live...)
	}
}

// redelivery returns the Attempt of d when d's message has an entry: the
// pinned one, whose difference to the broker's count becomes the entry's
// offset, or else the broker's count less the offset. The entry stays. Only
// a delivery that may be a message's return is looked up: one marked
// redelivered, or with x-delivery-count (a quorum queue counts a return
// there, and RabbitMQ 3.10 does not set the redelivered flag on it). First
// deliveries are not, so that they never hash their bodies.
func (m *attemptMemo) redelivery(d *amqp.Delivery) (int, bool) {
	if m.n.Load() == 0 {
		return 0, false
	}
	if !d.Redelivered {
		if _, ok := d.Headers["x-delivery-count"]; !ok {
			return 0, false
		}
	}
	k := keyOf(d)
	raw := int64(attempt(d))
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[k]
	if !ok {
		return 0, false
	}
	a := e.next
	if a > 0 {
		e.next, e.offset = 0, raw-int64(a)
	} else {
		a = int(min(max(raw-e.offset, 1), math.MaxInt32))
	}
	m.touch(k, e)
	return a, true
}

// take forgets d's entry, if any, and returns the Attempt it pinned for
// the next delivery (0 when none).
func (m *attemptMemo) take(d *amqp.Delivery) (int, bool) {
	if m.n.Load() == 0 {
		return 0, false
	}
	k := keyOf(d)
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[k]
	if ok {
		delete(m.m, k)
		m.n.Store(int64(len(m.m)))
	}
	return e.next, ok
}

// xDeathCount sums the counts of the x-death entries: how many times the
// broker dead-lettered this message (rejected, expired…).
func xDeathCount(h amqp.Table) int64 {
	deaths, ok := h["x-death"].([]any)
	if !ok {
		return 0
	}
	var n int64
	for _, e := range deaths {
		if t, ok := e.(amqp.Table); ok {
			if c, ok := tableInt(t, "count"); ok {
				n = satAdd(n, max(c, 0))
			}
		}
	}
	return n
}

// stringHeaders converts the headers that have a scalar value to strings.
func stringHeaders(t amqp.Table) map[string]string {
	if len(t) == 0 {
		return nil
	}
	out := make(map[string]string, len(t))
	for k, v := range t {
		switch k {
		case seqHeader, routingKeyHeader:
			continue // ours, for the adapter only
		}
		switch v := v.(type) {
		case string:
			out[k] = v
		case []byte:
			out[k] = string(v)
		case bool:
			out[k] = strconv.FormatBool(v)
		case float32, float64, int, int8, int16, int32, int64, uint8, uint16, uint32, uint64, amqp.Decimal:
			out[k] = fmt.Sprint(v)
		case time.Time:
			out[k] = v.UTC().Format(time.RFC3339)
		}
	}
	return out
}

func (d *delivery) Message() *broker.Message { return &d.msg }

// begin starts a settlement of d. It fails with ErrAlreadySettled when d was
// settled before or a settlement is in progress, and with ErrStaleDelivery
// when d's channel is gone (the broker has requeued the message already).
// The caller must call end with the outcome, and defer endOnPanic.
func (d *delivery) begin(op string) error {
	if d.done.Load() || !d.settling.CompareAndSwap(false, true) {
		return fmt.Errorf("rabbitmq: %s message %q: %w", op, d.msg.ID, broker.ErrAlreadySettled)
	}
	if d.sess.ch.IsClosed() {
		d.done.Store(true)
		d.settling.Store(false)
		return d.stale(op)
	}
	return nil
}

// endOnPanic, deferred after a successful begin, ends the settlement when
// it panics (a bug, or a panic in the AMQP library) and panics on: without
// it settling stayed set, every later settlement failed with
// ErrAlreadySettled and the delivery held its prefetch slot until the
// channel closed (review R2: the consumer runtime recovers such panics). The
// delivery stays unsettled, as after an error.
func (d *delivery) endOnPanic() {
	if r := recover(); r != nil {
		d.settling.Store(false)
		panic(r)
	}
}

// end finishes a settlement begun with begin. A settlement that failed for
// another reason than staleness leaves d unsettled, so that the runtime may
// try again (it does, with backoff); if it gives up, the message stays
// unacknowledged and the broker redelivers it when the channel closes.
func (d *delivery) end(err error) error {
	if err == nil || errors.Is(err, broker.ErrStaleDelivery) {
		d.done.Store(true)
	}
	d.settling.Store(false)
	return err
}

func (d *delivery) ack() error { return d.sess.w.Ack(d.d.DeliveryTag, false) }

// nack sends basic.nack with requeue, never multiple (which would reject
// the deliveries below it too), after the acks waiting on the channel.
func (d *delivery) nack() error {
	if a := d.sess.acks; a != nil {
		return a.nack(d.d.DeliveryTag)
	}
	return d.sess.w.Nack(d.d.DeliveryTag, false, true)
}

// settleAck acknowledges d as a settlement op. Without coalescing it writes
// basic.ack, bounded by ctx. With coalescing the ack is queued on the
// channel's acker and goes out with a multiple ack within Config.AckDelay;
// the call writes only when it fills a batch (bounded by ctx then). See
// the package doc, Acknowledgement.
func (d *delivery) settleAck(ctx context.Context, op string) error {
	a := d.sess.acks
	if a == nil {
		return d.write(ctx, op, d.ack)
	}
	flush, err := a.ack(d.d.DeliveryTag)
	if errors.Is(err, errNotPending) {
		return fmt.Errorf("rabbitmq: %s message %q: %w", op, d.msg.ID, err)
	}
	if err != nil {
		return d.settleErr(op, err) // the channel is closing: stale
	}
	if flush {
		return d.write(ctx, op, a.flush)
	}
	return nil
}

func (d *delivery) stale(op string) error {
	return fmt.Errorf("rabbitmq: %s message %q from subscription %d: channel closed, the broker redelivers it: %w",
		op, d.msg.ID, d.sess.gen, broker.ErrStaleDelivery)
}

// settleErr turns a failed basic.ack/nack into a stale-delivery error.
// amqp091-go returns an error from Ack/Nack only when the channel is closed
// or the frame could not be written, and a failed write shuts the connection
// down: either way the delivery tag is dead, nothing sent later can settle
// it, and the broker requeues the message when it sees the channel go. (The
// channel may not report IsClosed yet when the write error comes back, as in
// "connection reset by peer"; the chaos test caught that race.)
func (d *delivery) settleErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, amqp.ErrClosed) || d.sess.ch.IsClosed() {
		return d.stale(op)
	}
	return fmt.Errorf("rabbitmq: %s message %q: write failed (%v), the broker redelivers it: %w",
		op, d.msg.ID, err, broker.ErrStaleDelivery)
}

// write sends one basic.ack or basic.nack of a settlement (f), bounded by
// ctx. amqp091 writes with no deadline and ignores ctx: on a socket that
// takes no more bytes (TCP backpressure, a broker that stopped reading) the
// write, and every other write of the connection behind it, would block
// until the heartbeat timeout or forever. So when ctx ends first, the
// connection's socket is closed (link.drop): the write fails at once, the
// broker requeues every unacknowledged delivery of the connection, and the
// source reconnects. The error then wraps ctx's error and
// broker.ErrStaleDelivery. A ctx already done gets abortGrace to write: a
// settlement must not cost a healthy connection.
func (d *delivery) write(ctx context.Context, op string, f func() error) error {
	var stop func() bool
	if ctx.Err() != nil {
		t := time.AfterFunc(abortGrace, d.sess.link.drop)
		stop = t.Stop
	} else {
		stop = context.AfterFunc(ctx, d.sess.link.drop)
	}
	err := f()
	if !stop() && err != nil {
		// The write was still blocked when the bound came (a write that
		// went through before the socket closed returned nil: it stands).
		cause := context.Cause(ctx)
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return fmt.Errorf("rabbitmq: %s message %q: the write did not go through before the context ended (%v); "+
			"closed the connection, the broker redelivers it: %w (%w)", op, d.msg.ID, err, cause, broker.ErrStaleDelivery)
	}
	return d.settleErr(op, err)
}

// Ack implements broker.Delivery. It is sent only on the channel the
// delivery came on; if that channel is closed it returns an error wrapping
// broker.ErrStaleDelivery.
//
// With coalescing (the default; Config.AckBatch 1 turns it off) Ack returns once
// the ack is queued on its channel: it goes out, with the acks of the
// deliveries before it, in a basic.ack with multiple=true within
// Config.AckDelay, or at once when it fills a batch (the call then writes
// it, bounded by ctx). If the channel closes before, the ack is lost and
// the broker delivers the message again: a duplicate, never a loss, as after
// any connection loss. See the package doc, Acknowledgement.
func (d *delivery) Ack(ctx context.Context) error {
	if err := d.begin("ack"); err != nil {
		return err
	}
	defer d.endOnPanic()
	return d.end(d.forget(d.settleAck(ctx, "ack")))
}

// forget drops d's message from the source's attemptMemo once a settlement
// that ends it here succeeded (err nil): an ack, or the ack of the original
// of a copy that carries its Attempt in HeaderDeliveries. It returns err.
func (d *delivery) forget(err error) error {
	if err == nil && d.memo {
		d.s.memo.take(&d.d)
	}
	return err
}

// Requeue implements broker.Delivery. When the broker counts deliveries (a
// quorum queue) it nacks with requeue, and x-delivery-count goes up; the
// releases of the message before, which the broker counted too, are taken
// off its next Attempt (see Release). When it
// does not (a classic queue), it publishes a copy to the queue with
// HeaderDeliveries set, waits for the confirm, and acks the original, so that
// the delivery budget is enforced there too; the copy goes to the back of the
// queue.
//
// When the broker refuses the copy (ErrNacked: a full queue with x-overflow
// reject-publish), or the copy cannot be sent (a message of another
// producer so near the frame size that the copy's two headers do not fit,
// see ErrMessageTooLarge), Requeue nacks the original with requeue instead: it keeps
// its place, no other message is evicted (a requeue is not a publish), and
// the worker is free at once. That delivery is counted by the source itself
// (see the package doc: the memory of given-back messages), so the budget
// still holds; an uncounted nack made such a message come back thousands of
// times a second, never reaching its budget. If the publish fails otherwise
// (the broker is unreachable), the error is returned and the delivery stays
// unsettled: the runtime retries with backoff.
//
// Whether the broker counts is decided per delivery, not only from the
// configured queue type: a redelivered message without x-delivery-count is on
// a queue that does not count, whatever Topology.QueueType says (an existing
// classic queue used with QueueType Quorum).
func (d *delivery) Requeue(ctx context.Context) error {
	if err := d.begin("requeue"); err != nil {
		return err
	}
	defer d.endOnPanic()
	if d.brokerCounts() {
		return d.end(d.write(ctx, "requeue", d.nack))
	}
	err := d.s.pub.PublishRaw(ctx, "", d.s.cfg.Queue, d.copyWith(nil))
	// A copy that cannot be sent (ErrInvalidConfig: a message from another
	// producer near the frame size, which the copy's headers push over)
	// would fail the same way on every retry: nack it as well.
	if errors.Is(err, ErrNacked) || errors.Is(err, broker.ErrInvalidConfig) {
		d.s.memo.put(&d.d, d.msg.Attempt+1)
		return d.end(d.write(ctx, "requeue", d.nack))
	}
	if err != nil {
		return d.end(fmt.Errorf("rabbitmq: requeue message %q by republishing it to %q: %w", d.msg.ID, d.s.cfg.Queue, err))
	}
	return d.end(d.forget(d.settleAck(ctx, "requeue")))
}

// Release implements broker.Releaser: the runtime calls it for a delivery
// no handler saw (it arrived as intake stopped), or whose failure spends no
// attempt (a tripped kill switch). It sends basic.nack with requeue on the
// delivery's channel: the broker puts the message back at its place in the
// queue (classic queues keep the original position), and its next delivery
// to this source carries the same Attempt. A quorum queue counts the
// release in x-delivery-count; the source remembers it (see the package
// doc, Attempts), so that the message's later deliveries to this source do
// not count it either: after two releases and a Requeue, Attempt is 2.
// Unlike Requeue it publishes no copy, so it never changes the order and
// never needs queue space. On a closed channel it returns an error wrapping
// broker.ErrStaleDelivery (the broker has requeued the message already).
// While a Pause cancels a quorum-queue subscription, the nack is queued and
// written once the broker has applied the cancel (see Source.Pause).
func (d *delivery) Release(ctx context.Context) error {
	if err := d.begin("release"); err != nil {
		return err
	}
	defer d.endOnPanic()
	d.s.memo.put(&d.d, d.msg.Attempt)
	return d.end(d.write(ctx, "release", d.nack))
}

// brokerCounts reports whether the broker counts this message's deliveries
// (x-delivery-count), so that a nack with requeue keeps the budget.
func (d *delivery) brokerCounts() bool {
	if d.s.cfg.Topology.QueueType != Quorum {
		return false
	}
	if _, ok := tableInt(d.d.Headers, "x-delivery-count"); ok {
		return true
	}
	// A quorum queue sets x-delivery-count on every redelivery; a first
	// delivery has none yet.
	return !d.d.Redelivered
}

// RequeueAfter implements broker.DelayedRequeuer: it publishes a copy to
// the retry queue with a per-message TTL of delay, waits for the confirm, and
// only then acks the original. When the TTL expires the broker dead-letters
// the copy back to the queue. If the copy cannot be sent (see Requeue), it
// nacks the original with requeue, counting the attempt as Requeue does:
// the message comes back at once, without the delay. If the publish fails
// otherwise, the error is returned and the delivery stays unsettled, so that
// it can be settled again.
func (d *delivery) RequeueAfter(ctx context.Context, delay time.Duration) error {
	if err := d.begin("requeue after delay"); err != nil {
		return err
	}
	defer d.endOnPanic()
	ms := max(delay.Milliseconds(), 0)
	pub := d.copyWith(nil)
	pub.Expiration = strconv.FormatInt(ms, 10)
	err := d.s.pub.PublishRaw(ctx, "", d.s.cfg.Topology.RetryQueue, pub)
	if errors.Is(err, broker.ErrInvalidConfig) {
		// The copy cannot be sent (see Requeue): the message comes back
		// at once instead of after delay, counted by the source.
		d.s.memo.put(&d.d, d.msg.Attempt+1)
		return d.end(d.write(ctx, "requeue after delay", d.nack))
	}
	if err != nil {
		return d.end(fmt.Errorf("rabbitmq: requeue message %q to %q after %v: %w", d.msg.ID, d.s.cfg.Topology.RetryQueue, delay, err))
	}
	return d.end(d.forget(d.settleAck(ctx, "requeue after delay")))
}

// DeadLetter implements broker.Delivery: it publishes a copy to the
// dead-letter exchange with the reason headers, waits for the confirm, and
// only then acks the original, so a message is never lost between the two
// (at worst, after a connection loss, it is dead-lettered twice). If the
// publish fails, the error is returned and the delivery stays unsettled, so
// that it can be settled again; the runtime retries with backoff.
func (d *delivery) DeadLetter(ctx context.Context, reason broker.Reason) error {
	if err := d.begin("dead-letter"); err != nil {
		return err
	}
	defer d.endOnPanic()
	extra := reason.Header(nil)
	// A random id names the dead letter for Redrive and Purge (see
	// DeadLetters); a copy of a message that was a dead letter before gets
	// a new one.
	extra[HeaderDeadLetterID] = newID()
	pub := d.copyWith(extra)
	// The dead letter carries its attempts in x-queuekit-attempts; without
	// our delivery counter, a message an operator moves back to the work
	// queue starts a fresh budget instead of being dead-lettered again on
	// its first failure.
	delete(pub.Headers, HeaderDeliveries)
	x := d.s.cfg.Topology.DeadLetterExchange
	if err := d.s.dlPub.publishDeadLetter(ctx, x, d.s.cfg.Queue, pub); err != nil {
		return d.end(fmt.Errorf("rabbitmq: dead-letter message %q to exchange %q: %w", d.msg.ID, x, err))
	}
	return d.end(d.forget(d.settleAck(ctx, "dead-letter")))
}

// copyWith returns the delivery as a publishing with its properties and
// headers, plus extra headers and HeaderDeliveries = this attempt.
// x-delivery-count is dropped: it belongs to the original.
func (d *delivery) copyWith(extra map[string]string) amqp.Publishing {
	h := make(amqp.Table, len(d.d.Headers)+len(extra)+1)
	for k, v := range d.d.Headers {
		if k == "x-delivery-count" || k == seqHeader {
			continue
		}
		h[k] = v
	}
	for k, v := range extra {
		h[k] = v
	}
	h[HeaderDeliveries] = int64(d.msg.Attempt)
	h[routingKeyHeader] = string(d.msg.Key)
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.d.ContentType,
		ContentEncoding: d.d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.d.Priority,
		CorrelationId:   d.d.CorrelationId,
		ReplyTo:         d.d.ReplyTo,
		MessageId:       d.d.MessageId,
		Timestamp:       d.d.Timestamp,
		Type:            d.d.Type,
		UserId:          d.d.UserId,
		AppId:           d.d.AppId,
		Body:            d.d.Body,
	}
}
