package rabbitmq

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// PublisherConfig configures a Publisher. Zero fields mean the documented
// defaults.
type PublisherConfig struct {
	// Dialer says how to reach the broker when Conn is nil.
	Dialer Dialer
	// Conn, when set, is a shared connection to open the publisher's channel
	// on. The publisher then does not close it.
	Conn *Connection
	// Timeout bounds a Publish whose context has no deadline (default 10s).
	Timeout time.Duration
	// Transient publishes non-persistent messages. By default every message
	// is persistent (delivery mode 2): it survives a broker restart once
	// confirmed.
	Transient bool
	// AllowUnroutable publishes without the mandatory flag. By default a
	// message that no queue receives is returned by the broker and Publish
	// fails with ErrReturned, instead of being dropped silently.
	AllowUnroutable bool
	// Exchanges are declared (durable) on every (re)connect.
	Exchanges []Exchange
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff
	// between attempts to reopen the channel (defaults 100ms and 5s).
	ReconnectMin, ReconnectMax time.Duration
	// Logger receives reconnection warnings (default slog.Default()).
	Logger *slog.Logger
	// Inject, if set, is called for every message with the Publish context
	// and the message's string-valued headers, and returns headers to set on
	// the message (over its own), taken as Message.Header is: "content-type"
	// sets the property, and the adapter's own headers are ignored. A panic
	// in it fails the Publish (nothing is sent) instead of escaping. Use it
	// to propagate trace context or a correlation id from ctx:
	//
	//	Inject: func(ctx context.Context, h map[string]string) map[string]string { return otelqueuekit.Inject(ctx, h) }
	Inject func(ctx context.Context, header map[string]string) map[string]string
}

func (c *PublisherConfig) resolve() error {
	if c.Conn == nil {
		if err := c.Dialer.validate(); err != nil {
			return err
		}
	}
	if c.Timeout < 0 || c.ReconnectMin < 0 || c.ReconnectMax < 0 {
		return fmt.Errorf("%w: rabbitmq: negative publisher timeout or backoff", broker.ErrInvalidConfig)
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 100 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 5 * time.Second
	}
	if c.ReconnectMax < c.ReconnectMin {
		return fmt.Errorf("%w: rabbitmq: ReconnectMax %v < ReconnectMin %v", broker.ErrInvalidConfig, c.ReconnectMax, c.ReconnectMin)
	}
	c.Exchanges = slices.Clone(c.Exchanges) // defaults are filled in below: not in the caller's slice
	for i := range c.Exchanges {
		if c.Exchanges[i].Name == "" {
			return fmt.Errorf("%w: rabbitmq: exchange %d has no name", broker.ErrInvalidConfig, i)
		}
		if c.Exchanges[i].Kind == "" {
			c.Exchanges[i].Kind = amqp.ExchangeDirect
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// A Publisher publishes messages to RabbitMQ with publisher confirms: a
// Publish returns nil only once the broker has taken responsibility for
// every one of its messages. It implements broker.Publisher; PublishRaw
// publishes an amqp.Publishing, for the properties only AMQP has.
//
// A Publisher is safe for concurrent use. Publishes from several goroutines
// share one channel and are confirmed independently, and the messages of one
// Publish are written one after another without waiting for each other's
// confirms (one round trip for the lot, not one each). It opens its channel
// lazily and reopens it (redialling if needed) when it was lost, waiting
// with backoff inside the deadline of the Publish that needs it.
//
// Close stops new publishes (they fail with an error wrapping
// broker.ErrPublisherClosed), waits for those in progress, and closes the
// channel, and the connection if the publisher owns one; all of it bounded by
// its context.
type Publisher struct {
	cfg     PublisherConfig
	conn    *Connection
	ownConn bool

	dialMu sync.Mutex // held while opening a channel (see channel)
	// dialErr is the error of the last failed dial, returned without a
	// new dial until retryAt, and dialBo the backoff that sets retryAt:
	// concurrent publishes share one dial and one backoff (see channel).
	// Under dialMu.
	dialErr error
	retryAt time.Time
	dialBo  backoff
	// warnedAt is when the "channel unavailable" warning was last logged
	// (unix nanoseconds), and quiet how many were left out since: one line
	// per warnEvery for the whole publisher, whatever the concurrency.
	warnedAt  atomic.Int64
	quiet     atomic.Int64
	mu        sync.Mutex // guards cur and closed; never held while dialling
	cur       *confirmChannel
	closed    bool
	done      chan struct{}  // closed by Close: ends the backoff waits of Publish
	closeDone chan struct{}  // closed when shutdown is done; closeErr is set before
	closeErr  error          // what shutdown returned
	inflight  sync.WaitGroup // Publish calls; Add only under mu while !closed, so never after shutdown's Wait began
	dials     sync.WaitGroup // goroutines of channelCtx
	writes    sync.WaitGroup // goroutines of publishCtx

	// serial is set on a Source's dead-letter publisher: its publishes
	// carry no seqHeader (see confirmChannel.serial), so that a dead letter
	// holds none of the adapter's bookkeeping; a return is matched to its
	// publish by exchange, key and message-id (confirmChannel.returnedOne).
	// serialSlot bounds how many are in flight (dlInFlight): dead letters
	// one at a time ran at ~500/s whatever the consumer's concurrency.
	serial     bool
	serialSlot chan struct{}

	// dropBlocked is set on a Source's publisher: when a publish's ctx
	// ends with its write still blocked, the connection's socket is
	// closed, so that the settlement it is part of, and those behind it,
	// return (see delivery.bounded).
	dropBlocked bool
}

var _ broker.Publisher = (*Publisher)(nil)

// NewPublisher returns a Publisher. It does not connect yet. It returns an
// error wrapping broker.ErrInvalidConfig when cfg is invalid.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := cfg.resolve(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, conn: cfg.Conn, done: make(chan struct{}), closeDone: make(chan struct{}),
		dialBo: backoff{min: cfg.ReconnectMin, max: cfg.ReconnectMax}}
	if p.conn == nil {
		p.conn = newConnection(cfg.Dialer)
		p.conn.log = cfg.Logger
		p.ownConn = true
	}
	return p, nil
}

// outgoing is one message of a publish: its routing key and properties.
type outgoing struct {
	key string
	msg amqp.Publishing
	// fit, when set, cuts msg to fit the frame size when it does not (a
	// dead letter); when unset, such a message is refused.
	fit func(m *amqp.Publishing, mandatory bool, frameMax int) bool
}

// Publish implements broker.Publisher: it publishes msgs to exchange, in
// order, and returns once the broker confirmed every one of them. The
// default exchange, "", routes each message to the queue named by its Key.
//
// Each message becomes an AMQP message: Key is the routing key, Body the
// body, ID the message-id (a random one when empty, so that consumers can
// identify it), Time the timestamp (AMQP keeps whole seconds), and Header
// the AMQP headers, except broker.HeaderContentType ("content-type", that
// exact key: "Content-Type" is a plain header), which is the content-type
// property (a Source of this package gives it back as
// that header, so a message made by broker.NewJSON arrives with its content
// type). Unless PublisherConfig says otherwise the messages are persistent
// and mandatory. Publish does not modify msgs.
//
// It returns nil once every message is confirmed. Otherwise it returns the
// first failure, in the order of msgs (messages before it were confirmed,
// those after it may or may not arrive): an error wrapping ErrReturned
// (a *ReturnError) when no queue was bound to take a mandatory message;
// ErrNacked when the broker refused one; the *amqp.Error (wrapped) when the
// broker closed the channel, for example 404 NOT_FOUND for an exchange that
// does not exist; ctx's error (wrapped) when ctx ends first (a context
// without a deadline is bounded by PublisherConfig.Timeout); an error
// wrapping broker.ErrInvalidConfig, before anything is sent, for a message
// that cannot be sent (a nil message; a name or property over 255 bytes;
// headers AMQP cannot encode, or larger than the broker's frame size, which
// also wraps ErrMessageTooLarge; see the package doc) or when
// PublisherConfig.Inject panicked; and an error wrapping
// broker.ErrPublisherClosed after Close. After an error, publishing
// again is at-least-once: consumers deduplicate on a key of their own.
//
// After Publish returned at its deadline, a write in progress on a socket
// that takes no more bytes may still read the Body of the message it writes
// until the connection moves or closes.
func (p *Publisher) Publish(ctx context.Context, exchange string, msgs ...*broker.Message) error {
	out := make([]outgoing, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("%w: rabbitmq: publish to %s: message %d of %d is nil; nothing was published", broker.ErrInvalidConfig, quoteName(exchange), i+1, len(msgs))
		}
		out[i] = outgoing{key: string(m.Key), msg: toPublishing(m)}
	}
	return p.publish(ctx, exchange, out)
}

// PublishRaw publishes one amqp.Publishing to exchange with routing key
// key, for the AMQP properties a broker.Message has no field for (priority,
// expiration, reply-to, correlation-id…), and waits for the broker's confirm,
// as Publish does; its errors are those of Publish. A message without a
// MessageId gets a random one; unless PublisherConfig says otherwise it is
// made persistent and published mandatory. msg.Headers is not modified.
func (p *Publisher) PublishRaw(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	return p.publish(ctx, exchange, []outgoing{{key: key, msg: msg}})
}

// publishDeadLetter is PublishRaw for a dead letter, which is cut to fit
// the frame size (see fitDeadLetter) instead of being refused.
func (p *Publisher) publishDeadLetter(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	return p.publish(ctx, exchange, []outgoing{{key: key, msg: msg, fit: fitDeadLetter}})
}

// toPublishing converts m as Publish documents.
func toPublishing(m *broker.Message) amqp.Publishing {
	pub := amqp.Publishing{MessageId: m.ID, Timestamp: m.Time, Body: m.Body}
	if len(m.Header) == 0 {
		return pub
	}
	h := make(amqp.Table, len(m.Header))
	for k, v := range m.Header {
		switch {
		case k == broker.HeaderContentType:
			pub.ContentType = v
		case k == seqHeader || k == routingKeyHeader:
			// The adapter's own: a Source would take them for its
			// bookkeeping, so a producer's copy is not sent.
		default:
			h[k] = v
		}
	}
	if len(h) > 0 {
		pub.Headers = h
	}
	return pub
}

// publish publishes out to exchange. Every message is written before any
// confirm is awaited: a batch costs one round trip, not one per message.
// Write failures (a channel that closed under us) are retried on a new
// channel, with backoff, inside ctx's deadline; a confirm that does not come
// (nack, return, a channel closed after the write) is not, since the message
// may have been stored.
func (p *Publisher) publish(ctx context.Context, exchange string, out []outgoing) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), broker.ErrPublisherClosed)
	}
	p.inflight.Add(1)
	p.mu.Unlock()
	defer p.inflight.Done()
	if len(out) == 0 {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.Timeout)
		defer cancel()
	}
	for i := range out {
		m := &out[i].msg
		if m.MessageId == "" {
			m.MessageId = newID()
		}
		if p.cfg.Inject != nil {
			if err := inject(ctx, p.cfg.Inject, m); err != nil {
				return publishErr(exchange, out, i, err)
			}
		}
		if !p.cfg.Transient && m.DeliveryMode == 0 {
			m.DeliveryMode = amqp.Persistent
		}
		// What amqp091 cannot encode fails the frame half written, and
		// closes the whole connection (that of every Source and Publisher
		// sharing it); and retrying cannot help. Nothing is sent then.
		if err := checkPublish(exchange, out[i].key, m); err != nil {
			return publishErr(exchange, out, i, fmt.Errorf("%w; nothing was published", err))
		}
	}
	mandatory := !p.cfg.AllowUnroutable
	if p.serial {
		// One publish at a time, from its write to its confirm, so that a
		// basic.return on the channel is that publish's (see serial).
		select {
		case p.serialSlot <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), context.Cause(ctx))
		case <-p.done:
			return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), broker.ErrPublisherClosed)
		}
	}
	var waits []*pendingPublish // one per message written, in order
	if p.serial {
		defer func() { p.releaseSerial(waits) }()
	}
	bo := backoff{min: p.cfg.ReconnectMin, max: p.cfg.ReconnectMax}
	var lastErr error // the last failure that was not the deadline, for the final error
	expired := func() error {
		if lastErr == nil {
			return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), context.Cause(ctx))
		}
		return fmt.Errorf("rabbitmq: publish to %s: %w (last error: %w)", quoteName(exchange), context.Cause(ctx), lastErr)
	}
	for len(waits) < len(out) {
		cc, err := p.channelCtx(ctx)
		if err == nil {
			var ws []*pendingPublish
			ws, err = p.publishCtx(ctx, cc, exchange, out[len(waits):], mandatory)
			if waits == nil {
				waits = ws // the usual case, one channel: no copy
			} else {
				waits = append(waits, ws...)
			}
			if err == nil {
				break
			}
			if cc.isDead() {
				// drop waits for the drainer to exit, which settles every
				// publish on cc: one the broker failed (404 for a missing
				// exchange closes the channel) is the answer, not a
				// reason to write the rest on another channel.
				p.drop(cc)
				for i, w := range waits {
					select {
					case <-w.done: // w.err is written before done is closed
						if w.err != nil {
							return publishErr(exchange, out, i, w.err)
						}
					default: // on an earlier channel, not settled yet
					}
				}
			}
		}
		switch {
		case errors.Is(err, broker.ErrPublisherClosed):
			return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), err)
		case errors.Is(err, ErrConnectionClosed), broker.IsFatal(err):
			return err
		case errors.Is(err, broker.ErrInvalidConfig): // too large for the frame: retrying cannot help
			return err
		case ctx.Err() != nil:
			return expired()
		}
		lastErr = err
		p.warnUnavailable(err)
		if !sleepCtx(ctx, p.done, bo.next()) {
			if ctx.Err() != nil {
				return expired()
			}
			return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), broker.ErrPublisherClosed)
		}
	}
	for i, w := range waits {
		select {
		case <-w.done:
			if w.err != nil {
				return publishErr(exchange, out, i, w.err)
			}
		case <-ctx.Done():
			return fmt.Errorf("rabbitmq: publish to %s: waiting for confirm (the message may or may not have arrived): %w", quoteName(exchange), context.Cause(ctx))
		}
	}
	return nil
}

// releaseSerial frees the serial slot once every publish in waits is
// settled (confirmed, returned, or failed with its channel), so that the
// next publish's return cannot be taken for one of these. A publish that
// gave up at its deadline leaves them pending: a goroutine then waits for
// them (the channel's close settles them all at last), and Close for it.
func (p *Publisher) releaseSerial(waits []*pendingPublish) {
	pending := func() bool {
		for _, w := range waits {
			select {
			case <-w.done:
			default:
				return true
			}
		}
		return false
	}
	if !pending() {
		<-p.serialSlot
		return
	}
	p.writes.Add(1)
	go func() {
		defer p.writes.Done()
		for _, w := range waits {
			<-w.done
		}
		<-p.serialSlot
	}()
}

// publishErr is the error of Publish when the confirm of out[i] failed
// with err.
func publishErr(exchange string, out []outgoing, i int, err error) error {
	if !errors.Is(err, ErrReturned) && !errors.Is(err, ErrNacked) {
		// ReturnError and the nack say where the message went already.
		err = fmt.Errorf("rabbitmq: publish to %s with routing key %q: %w", quoteName(exchange), out[i].key, err)
	}
	if len(out) > 1 {
		err = fmt.Errorf("rabbitmq: message %d of %d (id %q): %w", i+1, len(out), out[i].msg.MessageId, err)
	}
	return err
}

// channelCtx is channel bounded by ctx. Dialling cannot be interrupted (the
// client library has no context for it), so it runs on a goroutine of its
// own that Close waits for; a Publish whose deadline passes meanwhile returns
// at its deadline, and the connection, once up, serves the next Publish.
func (p *Publisher) channelCtx(ctx context.Context) (*confirmChannel, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, broker.ErrPublisherClosed
	}
	if p.cur != nil && !p.cur.isDead() {
		cc := p.cur
		p.mu.Unlock()
		return cc, nil
	}
	p.dials.Add(1) // under p.mu, so never after Close started waiting
	p.mu.Unlock()
	type result struct {
		cc  *confirmChannel
		err error
	}
	res := make(chan result, 1)
	go func() {
		defer p.dials.Done()
		cc, err := p.channel()
		res <- result{cc, err}
	}()
	select {
	case r := <-res:
		return r.cc, r.err
	case <-ctx.Done():
		if p.dropBlocked {
			// A settlement's publish (see publishCtx): opening the
			// channel is a write too, and may be what blocks.
			p.conn.dropCurrent()
		}
		return nil, fmt.Errorf("rabbitmq: connecting: %w", context.Cause(ctx))
	case <-p.done:
		return nil, broker.ErrPublisherClosed // Close need not wait for the dial
	}
}

// warnEvery is how often a Publisher logs that its channel is unavailable.
const warnEvery = 10 * time.Second

// warnUnavailable logs that a publish found no channel, at most once per
// warnEvery for the whole publisher: with every node down, each of many
// concurrent publishes failing would otherwise log a line of its own.
func (p *Publisher) warnUnavailable(err error) {
	now := time.Now().UnixNano()
	last := p.warnedAt.Load()
	if last != 0 && now-last < int64(warnEvery) || !p.warnedAt.CompareAndSwap(last, now) {
		p.quiet.Add(1)
		return
	}
	p.cfg.Logger.Warn("rabbitmq: publisher channel unavailable; retrying until the deadline",
		"error", err, "suppressed", p.quiet.Swap(0))
}

// channel returns the live confirm channel, opening one if needed. p.dialMu
// makes concurrent callers share one dial: those that wait behind a dial
// that failed get its error, and no caller dials again before the shared
// backoff (dialBo) allows, so that many publishes during an outage make one
// dial per backoff step, not one each. p.mu is never held while dialling,
// so that Publish and Close never wait for a dial behind a lock (a Publish
// waits in channelCtx, bounded by its ctx).
func (p *Publisher) channel() (*confirmChannel, error) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return nil, broker.ErrPublisherClosed
	case p.cur != nil && !p.cur.isDead():
		cc := p.cur
		p.mu.Unlock()
		return cc, nil
	}
	p.mu.Unlock()
	// The cached error stands until retryAt, unless the connection was
	// dialled meanwhile (shared with a Source, which redials it itself).
	if p.dialErr != nil && time.Now().Before(p.retryAt) && !p.conn.dialled() {
		return nil, p.dialErr
	}
	ch, l, err := p.conn.channelOn()
	if err != nil {
		if unfixable(err, false) {
			err = broker.Fatal(err) // e.g. ACCESS_REFUSED: retrying cannot help
		}
		p.dialErr, p.retryAt = err, time.Now().Add(p.dialBo.next())
		return nil, err
	}
	p.dialErr = nil
	p.dialBo.reset()
	for _, x := range p.cfg.Exchanges {
		if err := ch.ExchangeDeclare(x.Name, x.Kind, true, false, false, false, nil); err != nil {
			err = fmt.Errorf("rabbitmq: declare exchange %q: %w", x.Name, err)
			if unfixable(err, false) {
				return nil, broker.Fatal(err)
			}
			return nil, err
		}
	}
	cc, err := newConfirmChannel(ch, l, p.serial)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed { // Close ran while we dialled: it will not see this channel
		p.mu.Unlock()
		cc.close()
		return nil, broker.ErrPublisherClosed
	}
	p.cur = cc
	p.mu.Unlock()
	return cc, nil
}

func (p *Publisher) drop(cc *confirmChannel) {
	p.mu.Lock()
	if p.cur == cc {
		p.cur = nil
	}
	p.mu.Unlock()
	cc.close()
}

// Close implements broker.Publisher. Publish fails from now on with an
// error wrapping broker.ErrPublisherClosed; Close waits for the publishes in
// progress (each bounded by its own context), then closes the channel, and
// the connection if the publisher owns one. When ctx ends first, Close gives
// up waiting for the broker: it closes its own connection's socket, without
// the AMQP close handshake (the publishes still waiting fail), and returns
// an error wrapping ctx's error. On a shared Connection it cannot do that:
// it returns at ctx's end and leaves the channel to close in the background,
// until the Connection's own Close ends it.
// Close is idempotent; a second call returns once the first is done or its
// own ctx ends.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.done)
		go p.shutdown()
	}
	p.mu.Unlock()
	select {
	case <-p.closeDone:
		return p.closeErr
	case <-ctx.Done():
	}
	if p.ownConn {
		p.conn.abort()
		waitAborted(p.closeDone)
	}
	return fmt.Errorf("rabbitmq: close publisher: gave up waiting for the broker: %w", ctx.Err())
}

// shutdown is the work of Close, on a goroutine of its own so that Close can
// stop waiting for it. It closes p.closeDone when done.
func (p *Publisher) shutdown() {
	defer close(p.closeDone)
	if p.ownConn {
		// A publish that waits for a dial of our own connection fails now
		// instead of holding Close up to its handshake timeout per node.
		p.conn.stopDial()
	}
	p.inflight.Wait()
	p.mu.Lock()
	cc := p.cur
	p.cur = nil
	p.mu.Unlock()
	if cc != nil {
		cc.close()
	}
	// A dial in progress closes what it opened, since p.closed is set; one
	// of our own connection was ended above (a Dialer.Dial of the user's
	// that is still connecting ends when it returns).
	p.dials.Wait()
	var err error
	if p.ownConn {
		err = p.conn.close()
	}
	// Writes stuck on a socket end once the connection is closed (by us, or
	// by the heartbeat timeout of a shared one).
	p.writes.Wait()
	p.closeErr = err
}

// abortGrace bounds how long Close waits, after it closed its socket, for
// its goroutines to notice. They do within milliseconds (every wait on the
// broker fails with the socket); the bound is there for a custom
// Dialer.Dial, which nothing can interrupt.
const abortGrace = 100 * time.Millisecond

func waitAborted[T any](done <-chan T) {
	t := time.NewTimer(abortGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// publishCtx writes out on cc, in order, bounded by ctx, and returns the
// pending confirms of the messages written, which are a prefix of out.
// amqp091-go writes a frame with no deadline, so a socket that takes no more
// bytes (TCP backpressure, a broker resource alarm) would hold a Publish past
// its deadline; the writes are done by cc's writer goroutine instead, which
// skips a request whose ctx has ended and stops between messages at its end,
// and otherwise finishes or fails when the socket moves or the connection
// dies. A message written after Publish returned at its deadline may still
// be stored: publishing again is at-least-once.
//
// The writer is one long-lived goroutine per channel rather than one per
// Publish: concurrent publishes still pipeline (each is written as soon as
// the writer gets to it, and none waits for another's confirm), without a
// goroutine start and stack growth per Publish.
func (p *Publisher) publishCtx(ctx context.Context, cc *confirmChannel, exchange string, out []outgoing, mandatory bool) ([]*pendingPublish, error) {
	// Every message is measured before the first is written: a frame
	// larger than the broker's frame_max makes it close the connection
	// (501 FRAME_ERROR), so such a message is refused (or, a dead letter,
	// cut to fit) before anything of the publish is sent.
	for i := range out {
		o := &out[i]
		if fits(&o.msg, mandatory, cc.link.frameMax) {
			continue
		}
		if o.fit == nil || !o.fit(&o.msg, mandatory, cc.link.frameMax) {
			return nil, publishErr(exchange, out, i, tooLarge(&o.msg, mandatory, cc.link.frameMax))
		}
	}
	cc.startWriter()
	r := &writeReq{ctx: ctx, exchange: exchange, out: out, mandatory: mandatory, done: make(chan struct{})}
	select {
	case cc.reqs <- r:
	case <-cc.quit:
		return nil, fmt.Errorf("rabbitmq: publish: %w", amqp.ErrClosed)
	case <-cc.exited:
		return nil, fmt.Errorf("rabbitmq: publish: %w", amqp.ErrClosed)
	case <-ctx.Done():
		// The writer is behind: a write of an earlier request blocks.
		if p.dropBlocked {
			cc.link.drop()
		}
		return nil, context.Cause(ctx)
	}
	select {
	case <-r.done:
		return r.ws, r.err
	case <-cc.quit:
		return cc.afterWriter(r)
	case <-cc.exited:
		return cc.afterWriter(r)
	case <-ctx.Done():
		if p.dropBlocked {
			// A settlement's publish (see Source): a write still blocked
			// holds every other write of the connection, acks included.
			cc.link.drop()
		}
		return nil, context.Cause(ctx)
	}
}

// afterWriter is the outcome of r once cc is closing or closed: the writer
// finishes the request it has (its writes fail) and takes no other, so once
// it is gone r is done or was never taken.
func (cc *confirmChannel) afterWriter(r *writeReq) ([]*pendingPublish, error) {
	cc.writerOnce.Do(func() {}) // no writer starts from now on
	if cc.writerExited != nil {
		<-cc.writerExited
	}
	select {
	case <-r.done:
		return r.ws, r.err
	default:
		return nil, fmt.Errorf("rabbitmq: publish: %w", amqp.ErrClosed)
	}
}

// A writeReq is a Publish's messages for a channel's writer.
type writeReq struct {
	ctx       context.Context
	exchange  string
	out       []outgoing
	mandatory bool
	ws        []*pendingPublish  // written by the writer before done is closed
	one       [1]*pendingPublish // ws's array for a publish of one message
	err       error
	done      chan struct{}
}

// startWriter starts cc's writer goroutine, once; close stops it.
func (cc *confirmChannel) startWriter() {
	cc.writerOnce.Do(func() {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		if cc.closing {
			return // close ran first: publishCtx sees quit closed
		}
		cc.writerExited = make(chan struct{})
		go cc.writer()
	})
}

// writer writes the requests publishCtx queues, one after another, until
// close. It is the only caller of publish on a Publisher's channel.
func (cc *confirmChannel) writer() {
	defer close(cc.writerExited)
	for {
		select {
		case r := <-cc.reqs:
			r.ws = r.one[:0]
			if len(r.out) > 1 {
				r.ws = make([]*pendingPublish, 0, len(r.out))
			}
			for i := range r.out {
				if r.ctx.Err() != nil {
					r.err = context.Cause(r.ctx)
					break
				}
				w, err := cc.publish(r.ctx, r.exchange, r.out[i].key, r.mandatory, r.out[i].msg)
				if err != nil {
					r.err = err
					break
				}
				r.ws = append(r.ws, w)
			}
			close(r.done)
		case <-cc.quit:
			return
		case <-cc.exited:
			// The channel closed under us (the drainer saw it go); the
			// publisher opens another and leaves this one.
			return
		}
	}
}

// seqHeader carries the publish sequence number of a mandatory message
// published while another with its message-id is pending, so that a
// basic.return (which has no delivery tag) finds its publish; other
// returns are found by message-id (see confirmChannel.byID).
const seqHeader = "x-queuekit-publish-seq"

// A confirmChannel is a channel in confirm mode with one goroutine, the
// drainer, that reads both its returns and its confirms. Reading both on one
// goroutine is what makes returns reliable: the broker sends a message's
// basic.return before its basic.ack, the client hands the return to the
// drainer (unbuffered) before it reads the ack, and the drainer records the
// return before it reads the confirm.
type confirmChannel struct {
	ch   *amqp.Channel
	link link // of the connection ch is on
	// serial is set when its publisher has at most one publish pending at
	// a time (Publisher.serial): a basic.return is then that publish's,
	// and publishes need no seqHeader.
	serial bool
	// pubSlot serializes publishes (the sequence number we read is the one
	// the broker assigns). It is a one-slot semaphore rather than a mutex so
	// that a publish waiting behind one stuck in a write (a socket that takes
	// no more bytes) still returns at its deadline.
	pubSlot chan struct{}

	mu      sync.Mutex // guards pending, byID, dead and closing
	pending map[uint64]*pendingPublish
	// byID counts, by message-id, the pending mandatory publishes whose
	// return is found by message-id (byReturn), not by seqHeader: a
	// mandatory publish goes without the header when no other such
	// publish with its message-id is pending, so that a header-less
	// return names exactly one (issue 15: the header cost the broker
	// about 8% more CPU per message, and the publisher 10% of its rate,
	// with 32 concurrent publishers). Unused on a serial channel.
	byID    map[string]int
	dead    error
	closing bool
	exited  chan struct{} // closed when the drainer exits

	// The writer (see publishCtx), started by the first publishCtx.
	writerOnce   sync.Once
	reqs         chan *writeReq
	quit         chan struct{} // closed by close
	writerExited chan struct{} // closed when the writer exits; nil if it never started
}

type pendingPublish struct {
	exchange, key string
	messageID     string        // for returnedOne
	byReturn      bool          // mandatory, without seqHeader: returnedOne finds its return
	done          chan struct{} // closed by the drainer once err is set
	err           error
	returned      *ReturnError
}

// forget removes w, the pending publish of seq, from cc.pending and
// cc.byID. cc.mu is held.
func (cc *confirmChannel) forget(seq uint64, w *pendingPublish) {
	delete(cc.pending, seq)
	if w.byReturn && !cc.serial {
		if n := cc.byID[w.messageID]; n > 1 {
			cc.byID[w.messageID] = n - 1
		} else {
			delete(cc.byID, w.messageID)
		}
	}
}

func newConfirmChannel(ch *amqp.Channel, l link, serial bool) (*confirmChannel, error) {
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("rabbitmq: confirm mode: %w", err)
	}
	cc := &confirmChannel{ch: ch, link: l, serial: serial, pending: map[uint64]*pendingPublish{}, byID: map[string]int{}, exited: make(chan struct{}), pubSlot: make(chan struct{}, 1),
		reqs: make(chan *writeReq, 64), quit: make(chan struct{})}
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	returns := ch.NotifyReturn(make(chan amqp.Return)) // unbuffered: see confirmChannel
	// Buffered so that a burst of confirms does not wait on map operations;
	// the drainer reads it until the library closes it with the channel.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 256))
	go cc.drain(closes, returns, confirms)
	return cc, nil
}

// drain runs on its own goroutine until the channel closes. It owns the
// notify channels; it completes pending publishes.
func (cc *confirmChannel) drain(closes <-chan *amqp.Error, returns <-chan amqp.Return, confirms <-chan amqp.Confirmation) {
	defer close(cc.exited)
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			seq, ok := tableInt(r.Headers, seqHeader)
			cc.mu.Lock()
			if !ok {
				seq, ok = cc.returnedOne(r)
			}
			if !ok {
				cc.mu.Unlock()
				continue
			}
			if w := cc.pending[uint64(seq)]; w != nil {
				w.returned = &ReturnError{Exchange: r.Exchange, RoutingKey: r.RoutingKey, Code: int(r.ReplyCode), Reason: r.ReplyText}
			}
			cc.mu.Unlock()
		case c, ok := <-confirms:
			if !ok {
				var cause error = amqp.ErrClosed
				select {
				case e := <-closes:
					if e != nil {
						cause = e
					}
				default:
				}
				// The library closes returns before confirms, so nothing
				// is left to read on either.
				// The node is named: with a cluster, the caller (and
				// its logs) see which node was lost.
				node := ""
				if cc.link.node != "" {
					node = " to " + cc.link.node
				}
				cc.fail(fmt.Errorf("rabbitmq: channel%s closed before the confirm (the message may or may not have arrived): %w", node, cause))
				return
			}
			cc.mu.Lock()
			w := cc.pending[c.DeliveryTag]
			if w != nil {
				cc.forget(c.DeliveryTag, w)
			}
			cc.mu.Unlock()
			if w == nil {
				continue
			}
			switch {
			case w.returned != nil:
				w.err = w.returned
			case !c.Ack:
				w.err = fmt.Errorf("rabbitmq: publish to %s with routing key %q: %w", quoteName(w.exchange), w.key, ErrNacked)
			}
			close(w.done)
		}
	}
}

func (cc *confirmChannel) fail(err error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.dead == nil {
		cc.dead = err
	}
	for tag, w := range cc.pending {
		w.err = err
		close(w.done)
		cc.forget(tag, w)
	}
}

func (cc *confirmChannel) isDead() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.dead != nil || cc.ch.IsClosed()
}

// returnedOne finds the pending publish r, a return without seqHeader, is
// the return of: the oldest one without the header (byReturn) not returned
// yet with r's exchange, routing key and message-id. On a channel that is
// not serial there is at most one (see byID). On a serial one the broker
// handles a channel's publishes in order and sends a return before that
// publish's confirm, so the oldest match is the right one: publishes with
// the same exchange, key and message-id are routed alike. cc.mu is held.
func (cc *confirmChannel) returnedOne(r amqp.Return) (int64, bool) {
	best, found := uint64(0), false
	for s, w := range cc.pending {
		if w.byReturn && w.returned == nil && w.exchange == r.Exchange && w.key == r.RoutingKey && w.messageID == r.MessageId && (!found || s < best) {
			best, found = s, true
		}
	}
	return int64(best), found
}

func (cc *confirmChannel) publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) (*pendingPublish, error) {
	w := &pendingPublish{exchange: exchange, key: key, messageID: msg.MessageId, done: make(chan struct{})}
	select {
	case cc.pubSlot <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { <-cc.pubSlot }()
	seq := cc.ch.GetNextPublishSeqNo()
	cc.mu.Lock()
	if cc.dead != nil {
		err := cc.dead
		cc.mu.Unlock()
		return nil, err
	}
	cc.pending[seq] = w
	tag := false // whether the publish carries seqHeader
	if mandatory {
		switch {
		case cc.serial:
			w.byReturn = true
		case cc.byID[w.messageID] > 0:
			tag = true // another with its message-id may be returned: tell them apart
		default:
			w.byReturn = true
			cc.byID[w.messageID]++
		}
	}
	cc.mu.Unlock()
	if _, forged := msg.Headers[seqHeader]; tag || forged {
		// A seqHeader the caller set (PublishRaw, Inject) would be taken
		// for ours: it is replaced, or dropped.
		h := make(amqp.Table, len(msg.Headers)+1)
		for k, v := range msg.Headers {
			if k != seqHeader {
				h[k] = v
			}
		}
		if tag {
			h[seqHeader] = int64(seq)
		}
		msg.Headers = h
	}
	if err := cc.ch.PublishWithContext(ctx, exchange, key, mandatory, false, msg); err != nil {
		cc.mu.Lock()
		cc.forget(seq, w)
		cc.mu.Unlock()
		return nil, fmt.Errorf("rabbitmq: publish: %w", err)
	}
	return w, nil
}

// close closes the channel; the drainer then fails what is pending and
// exits, and so does the writer. It is idempotent and safe to call
// concurrently: every Publish that sees the channel dead drops it (review
// R2: an unguarded close(quit) panicked there), and every call returns once
// the drainer and the writer have exited.
func (cc *confirmChannel) close() {
	cc.mu.Lock()
	first := !cc.closing
	cc.closing = true
	cc.mu.Unlock()
	if first {
		close(cc.quit)
		_ = cc.ch.Close()
	}
	<-cc.exited
	cc.writerOnce.Do(func() {}) // no writer starts from now on
	if cc.writerExited != nil {
		<-cc.writerExited
	}
}

// tableInt reads an integer header of any AMQP integer type.
func tableInt(t amqp.Table, key string) (int64, bool) {
	switch v := t[key].(type) {
	case int:
		return int64(v), true
	case int8:
		return int64(v), true
	case int16:
		return int64(v), true
	case int32:
		return int64(v), true
	case int64:
		return v, true
	case uint8:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint32:
		return int64(v), true
	case uint64:
		return int64(min(v, math.MaxInt64)), true
	}
	return 0, false
}

// newID returns a random 128-bit id in hex.
func newID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// inject runs f over the string-valued headers of m and sets what it
// returned on a copy of m's headers, filtered as Publish filters
// Message.Header: "content-type" sets the content-type property, and the
// adapter's own headers are not taken. m's original headers are not
// modified. A panic in f is returned as an error: Publish fails, nothing is
// sent, and the Publisher stays usable.
func inject(ctx context.Context, f func(context.Context, map[string]string) map[string]string, m *amqp.Publishing) (err error) {
	strs := make(map[string]string, len(m.Headers))
	for k, v := range m.Headers {
		if s, ok := v.(string); ok {
			strs[k] = s
		}
	}
	var got map[string]string
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("rabbitmq: PublisherConfig.Inject panicked: %v; nothing was published", r)
			}
		}()
		got = f(ctx, strs)
	}()
	if err != nil || len(got) == 0 {
		return err
	}
	out := make(amqp.Table, len(m.Headers)+len(got))
	for k, v := range m.Headers {
		out[k] = v
	}
	for k, v := range got {
		switch k {
		case broker.HeaderContentType:
			m.ContentType = v
		case seqHeader, routingKeyHeader:
			// The adapter's own (see toPublishing).
		default:
			out[k] = v
		}
	}
	m.Headers = out
	return nil
}
