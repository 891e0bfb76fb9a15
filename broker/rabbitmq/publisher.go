package rabbitmq

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
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
	// the message (over its own). Use it to propagate trace context or a
	// correlation id from ctx:
	//
	//	Inject: func(ctx context.Context, h map[string]string) map[string]string { return otel.Inject(ctx, h) }
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

// A Publisher publishes messages with publisher confirms: Publish returns nil
// only once the broker has taken responsibility for the message.
//
// A Publisher is safe for concurrent use; publishes from several goroutines
// share one channel and are confirmed independently. It opens its channel
// lazily and reopens it (redialling if needed) when it was closed, waiting
// with backoff inside the deadline of the Publish that needs it. Close waits
// for no confirm: publishes still waiting for theirs fail. It waits for a
// dial in progress (at most the dial timeout).
type Publisher struct {
	cfg     PublisherConfig
	conn    *Connection
	ownConn bool

	dialMu sync.Mutex // held while opening a channel (see channel)
	mu     sync.Mutex // guards cur and closed; never held while dialling
	cur    *confirmChannel
	closed bool
	done   chan struct{}  // closed by Close
	dials  sync.WaitGroup // goroutines of channelCtx
	writes sync.WaitGroup // goroutines of publishCtx
}

// NewPublisher returns a Publisher. It does not connect yet. It returns an
// error wrapping consumer.ErrInvalidConfig when cfg is invalid.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := cfg.resolve(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, conn: cfg.Conn, done: make(chan struct{})}
	if p.conn == nil {
		p.conn = &Connection{d: cfg.Dialer}
		p.ownConn = true
	}
	return p, nil
}

// Publish publishes msg to exchange with routing key key and waits for the
// broker's confirm. Unless configured otherwise the message is persistent and
// mandatory.
//
// It returns nil once confirmed; an error wrapping ErrNacked or ErrReturned
// when the broker refused or could not route it; ctx's error (wrapped) when
// ctx is done first (a context without a deadline is bounded by
// PublisherConfig.Timeout); and an error wrapping the *amqp.Error when the
// channel was closed before the confirm, e.g. because the exchange does not
// exist (404 NOT_FOUND). After a timeout or a closed channel the message may
// or may not have been stored: publishing again is at-least-once.
//
// A message without a MessageId gets a random one, so that consumers can
// identify and deduplicate it. A mandatory message carries one more header,
// x-queuekit-publish-seq, which ties a basic.return to its publish (Sources
// of this package hide it from handlers). msg.Headers is not modified.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.Timeout)
		defer cancel()
	}
	if msg.MessageId == "" {
		msg.MessageId = newID()
	}
	if p.cfg.Inject != nil {
		msg.Headers = inject(ctx, p.cfg.Inject, msg.Headers)
	}
	if !p.cfg.Transient && msg.DeliveryMode == 0 {
		msg.DeliveryMode = amqp.Persistent
	}
	bo := backoff{min: p.cfg.ReconnectMin, max: p.cfg.ReconnectMax}
	var lastErr error // the last failure that was not the deadline, for the final error
	expired := func() error {
		if lastErr == nil {
			return fmt.Errorf("rabbitmq: publish to %s: %w", quoteName(exchange), context.Cause(ctx))
		}
		return fmt.Errorf("rabbitmq: publish to %s: %w (last error: %w)", quoteName(exchange), context.Cause(ctx), lastErr)
	}
	for {
		cc, err := p.channelCtx(ctx)
		if err == nil {
			var w *pendingPublish
			w, err = p.publishCtx(ctx, cc, exchange, key, !p.cfg.AllowUnroutable, msg)
			if err == nil {
				select {
				case <-w.done:
					if w.err != nil && !errors.Is(w.err, ErrReturned) && !errors.Is(w.err, ErrNacked) {
						return fmt.Errorf("rabbitmq: publish to %s with routing key %q: %w", quoteName(exchange), key, w.err)
					}
					return w.err
				case <-ctx.Done():
					return fmt.Errorf("rabbitmq: publish to %s: waiting for confirm: %w", quoteName(exchange), context.Cause(ctx))
				}
			}
			if cc.isDead() {
				p.drop(cc)
			}
		}
		switch {
		case errors.Is(err, ErrPublisherClosed), errors.Is(err, ErrConnectionClosed), broker.IsFatal(err):
			return err
		case ctx.Err() != nil:
			return expired()
		}
		lastErr = err
		if bo.n == 0 { // once per Publish: a long outage must not flood the log
			p.cfg.Logger.Warn("rabbitmq: publisher channel unavailable; retrying until the deadline", "error", err)
		}
		if !sleepCtx(ctx, p.done, bo.next()) {
			if ctx.Err() != nil {
				return expired()
			}
			return ErrPublisherClosed
		}
	}
}

// channelCtx is channel bounded by ctx. Dialling cannot be interrupted (the
// client library has no context for it), so it runs on a goroutine of its
// own that Close waits for; a Publish whose deadline passes meanwhile returns
// at its deadline, and the connection, once up, serves the next Publish.
func (p *Publisher) channelCtx(ctx context.Context) (*confirmChannel, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPublisherClosed
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
		return nil, fmt.Errorf("rabbitmq: connecting: %w", context.Cause(ctx))
	}
}

// channel returns the live confirm channel, opening one if needed. p.dialMu
// makes concurrent callers share one dial; p.mu is never held while dialling,
// so that Publish and Close never wait for a dial behind a lock.
func (p *Publisher) channel() (*confirmChannel, error) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return nil, ErrPublisherClosed
	case p.cur != nil && !p.cur.isDead():
		cc := p.cur
		p.mu.Unlock()
		return cc, nil
	}
	p.mu.Unlock()
	ch, err := p.conn.channel()
	if err != nil {
		if unfixable(err, false) {
			return nil, broker.Fatal(err) // e.g. ACCESS_REFUSED: retrying cannot help
		}
		return nil, err
	}
	for _, x := range p.cfg.Exchanges {
		if err := ch.ExchangeDeclare(x.Name, x.Kind, true, false, false, false, nil); err != nil {
			err = fmt.Errorf("rabbitmq: declare exchange %q: %w", x.Name, err)
			if unfixable(err, false) {
				return nil, broker.Fatal(err)
			}
			return nil, err
		}
	}
	cc, err := newConfirmChannel(ch)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed { // Close ran while we dialled: it will not see this channel
		p.mu.Unlock()
		cc.close()
		return nil, ErrPublisherClosed
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

// Close closes the publisher's channel, and its connection if it owns one.
// Publishes still waiting fail. Close is idempotent.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	cc := p.cur
	p.cur = nil
	p.mu.Unlock()
	if cc != nil {
		cc.close()
	}
	// A dial in progress finishes within the dial timeout and closes what
	// it opened, since p.closed is set.
	p.dials.Wait()
	var err error
	if p.ownConn {
		err = p.conn.Close()
	}
	// Writes stuck on a socket end once the connection is closed (by us, or
	// by the heartbeat timeout of a shared one).
	p.writes.Wait()
	return err
}

// publishCtx is cc.publish bounded by ctx. amqp091-go writes a frame with no
// deadline, so a socket that takes no more bytes (TCP backpressure, a broker
// resource alarm) would hold a Publish past its deadline; the write runs on
// a goroutine of its own instead, which finishes or fails when the socket
// moves or the connection dies, and which Close waits for. A Publish that
// returns at its deadline may still have its message published afterwards:
// publishing again is at-least-once.
func (p *Publisher) publishCtx(ctx context.Context, cc *confirmChannel, exchange, key string, mandatory bool, msg amqp.Publishing) (*pendingPublish, error) {
	type result struct {
		w   *pendingPublish
		err error
	}
	res := make(chan result, 1)
	p.writes.Add(1)
	go func() {
		defer p.writes.Done()
		w, err := cc.publish(ctx, exchange, key, mandatory, msg)
		res <- result{w, err}
	}()
	select {
	case r := <-res:
		return r.w, r.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// seqHeader carries the publish sequence number of a mandatory message, so
// that a basic.return (which has no delivery tag) finds its publish.
const seqHeader = "x-queuekit-publish-seq"

// A confirmChannel is a channel in confirm mode with one goroutine, the
// drainer, that reads both its returns and its confirms. Reading both on one
// goroutine is what makes returns reliable: the broker sends a message's
// basic.return before its basic.ack, the client hands the return to the
// drainer (unbuffered) before it reads the ack, and the drainer records the
// return before it reads the confirm.
type confirmChannel struct {
	ch *amqp.Channel
	// pubSlot serializes publishes (the sequence number we read is the one
	// the broker assigns). It is a one-slot semaphore rather than a mutex so
	// that a publish waiting behind one stuck in a write (a socket that takes
	// no more bytes) still returns at its deadline.
	pubSlot chan struct{}

	mu      sync.Mutex // guards pending and dead
	pending map[uint64]*pendingPublish
	dead    error
	exited  chan struct{} // closed when the drainer exits
}

type pendingPublish struct {
	exchange, key string
	done          chan struct{} // closed by the drainer once err is set
	err           error
	returned      *ReturnError
}

func newConfirmChannel(ch *amqp.Channel) (*confirmChannel, error) {
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("rabbitmq: confirm mode: %w", err)
	}
	cc := &confirmChannel{ch: ch, pending: map[uint64]*pendingPublish{}, exited: make(chan struct{}), pubSlot: make(chan struct{}, 1)}
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
			if !ok {
				continue
			}
			cc.mu.Lock()
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
				cc.fail(fmt.Errorf("rabbitmq: channel closed before the confirm: %w", cause))
				return
			}
			cc.mu.Lock()
			w := cc.pending[c.DeliveryTag]
			delete(cc.pending, c.DeliveryTag)
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
		delete(cc.pending, tag)
	}
}

func (cc *confirmChannel) isDead() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.dead != nil || cc.ch.IsClosed()
}

func (cc *confirmChannel) publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) (*pendingPublish, error) {
	w := &pendingPublish{exchange: exchange, key: key, done: make(chan struct{})}
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
	cc.mu.Unlock()
	if mandatory {
		h := make(amqp.Table, len(msg.Headers)+1)
		for k, v := range msg.Headers {
			h[k] = v
		}
		h[seqHeader] = int64(seq)
		msg.Headers = h
	}
	if err := cc.ch.PublishWithContext(ctx, exchange, key, mandatory, false, msg); err != nil {
		cc.mu.Lock()
		delete(cc.pending, seq)
		cc.mu.Unlock()
		return nil, fmt.Errorf("rabbitmq: publish: %w", err)
	}
	return w, nil
}

// close closes the channel; the drainer then fails what is pending and exits.
func (cc *confirmChannel) close() {
	_ = cc.ch.Close()
	<-cc.exited
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

// inject runs f over the string-valued headers of t and returns a copy of t
// with what f returned set over it; t itself is not modified.
func inject(ctx context.Context, f func(context.Context, map[string]string) map[string]string, t amqp.Table) amqp.Table {
	strs := make(map[string]string, len(t))
	for k, v := range t {
		if s, ok := v.(string); ok {
			strs[k] = s
		}
	}
	out := make(amqp.Table, len(t)+2)
	for k, v := range t {
		out[k] = v
	}
	for k, v := range f(ctx, strs) {
		out[k] = v
	}
	return out
}
