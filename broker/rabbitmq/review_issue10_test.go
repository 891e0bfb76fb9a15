package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// Regression tests for the outside review of issue 10 (the RabbitMQ
// adapter, round 1).

// getRaw takes one message from q with the plain client, waiting up to d.
func getRaw(t *testing.T, q string, d time.Duration) (amqp.Delivery, bool) {
	t.Helper()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	deadline := time.Now().Add(d)
	for {
		m, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatalf("get from %s: %v", q, err)
		}
		if ok || time.Now().After(deadline) {
			return m, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publishRaw publishes m to q with the plain client, with a confirm.
func publishRaw(t *testing.T, q string, m amqp.Publishing) {
	t.Helper()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	conf, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, m)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := conf.WaitContext(context.Background()); !ok || err != nil {
		t.Fatalf("publish to %s: confirmed %v, %v", q, ok, err)
	}
}

// TestIssue10HeaderFrameSizeMatchesTheBroker checks the measure the adapter
// refuses and cuts messages by against the broker itself: a message whose
// header frame is frame_max bytes by headerFrameSize is taken, and one
// whose frame payload is a byte more than frame_max makes the broker close
// the connection (501 FRAME_ERROR). RabbitMQ limits the payload to
// frame_max; the AMQP spec counts the frame's own 8 bytes in frame_max,
// and so does headerFrameSize: it is 8 bytes on the safe side.
func TestIssue10HeaderFrameSizeMatchesTheBroker(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	c := rawConn(t)
	frameMax := c.Config.FrameSize
	msg := func(extra int) amqp.Publishing {
		m := amqp.Publishing{MessageId: "m", DeliveryMode: amqp.Persistent, Body: []byte("b"),
			Headers: amqp.Table{"big": "", "n": int64(1), "list": []any{"a", int32(2)}}}
		m.Headers["big"] = strings.Repeat("x", frameMax-headerFrameSize(&m, false)+extra)
		return m
	}
	for _, tc := range []struct {
		extra int
		taken bool
	}{{0, true}, {frameOverhead + 1, false}} {
		m := msg(tc.extra)
		c, err := amqp.Dial(amqpURL())
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		_ = ch.Confirm(false)
		conf, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, m)
		ok := false
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ok, err = conf.WaitContext(ctx)
			cancel()
		}
		_ = c.Close()
		if ok != tc.taken {
			t.Errorf("publish of a header frame of headerFrameSize = frame_max%+d bytes: confirmed %v (%v); want %v",
				tc.extra, ok, err, tc.taken)
		}
	}
}

// TestIssue10DeadLetterLargerThanTheFrameIsCutToFit: a dead letter whose
// headers (error text, or the message's own headers) exceed the broker's
// frame size made the broker close the connection (501 FRAME_ERROR); the
// delivery went stale, came back and looped for ever, never dead-lettered.
// Now the copy is cut to fit, what was cut is listed in HeaderTrimmed, and
// the connection stays up (the source's delivery after it still acks).
func TestIssue10DeadLetterLargerThanTheFrameIsCutToFit(t *testing.T) {
	needBroker(t)
	for _, tc := range []struct {
		name    string
		reason  int // bytes of error text
		own     int // bytes of the message's own biggest header
		dropped string
	}{
		{name: "long error text", reason: 200_000, own: 10},
		{name: "large headers of the message's own", reason: 100, own: 140_000, dropped: "big"},
		{name: "both", reason: 200_000, own: 140_000, dropped: "big"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := uniqueQueue(t)
			src, err := NewSource(testConfig(q))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close(context.Background())
			if err := src.DeclareTopology(context.Background()); err != nil {
				t.Fatal(err)
			}
			// The message's own headers as large as the frame allows.
			m := amqp.Publishing{MessageId: "poison", Body: []byte("poison"), DeliveryMode: amqp.Persistent,
				Headers: amqp.Table{"small": "s", "big": ""}}
			m.Headers["big"] = strings.Repeat("h", min(tc.own, 131072-headerFrameSize(&m, false)-200))
			publishRaw(t, q, m)
			publishOne(t, q, "next")

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			d, err := src.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			reason := broker.Reason{Err: "upstream said: " + strings.Repeat("e", tc.reason), Attempts: 3, Source: q, Time: time.Now()}
			if err := d.DeadLetter(ctx, reason); err != nil {
				t.Fatalf("DeadLetter with a %d-byte error and a %d-byte header = %v; want nil", tc.reason, tc.own, err)
			}
			next, err := src.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := next.Ack(ctx); err != nil {
				t.Errorf("Ack of the next delivery = %v; want nil (the connection must survive the dead letter)", err)
			}
			dl, ok := getRaw(t, q+".dlq", 5*time.Second)
			if !ok {
				t.Fatal("nothing in the dead-letter queue")
			}
			h := dl.Headers
			if got, _ := h[broker.HeaderError].(string); !strings.HasPrefix(got, "upstream said: eee") {
				t.Errorf("dead letter's %s = %.60q…; want the start of the error text", broker.HeaderError, got)
			}
			trimmed, _ := h[HeaderTrimmed].(string)
			if tc.dropped != "" {
				if _, ok := h[tc.dropped]; ok || !strings.Contains(trimmed, tc.dropped+" (") {
					t.Errorf("dead letter keeps %q: %v, %s = %q; want it left out and listed", tc.dropped, ok, HeaderTrimmed, trimmed)
				}
				if h["small"] != "s" {
					t.Errorf("dead letter lost header small: %v", h["small"])
				}
			}
			if tc.reason > 100_000 && !strings.Contains(trimmed, broker.HeaderError+" (") {
				t.Errorf("%s = %q; want the error text listed as cut", HeaderTrimmed, trimmed)
			}
			if v, ok := h[seqHeader]; ok {
				t.Errorf("dead letter carries the adapter's %s = %v", seqHeader, v)
			}
			if got := toMessage(&dl, q+".dlq", nil); string(got.Key) != q || got.ID != "poison" {
				t.Errorf("dead letter reads back with key %q, id %q; want %q, %q", got.Key, got.ID, q, "poison")
			}
		})
	}
}

// TestIssue10PublishRefusesHeadersLargerThanTheFrame: one Publish with
// headers over the frame size made the broker close the connection, and
// with it every Source and Publisher sharing it. Now Publish refuses the
// message before sending anything, with ErrMessageTooLarge (and
// broker.ErrInvalidConfig), and the shared connection lives on.
func TestIssue10PublishRefusesHeadersLargerThanTheFrame(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	publishOne(t, q, "m1")
	conn, err := NewConnection(Dialer{URL: amqpURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	cfg := testConfig(q)
	cfg.Conn = conn
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	p, err := NewPublisher(PublisherConfig{Conn: conn, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = p.Publish(ctx, "", &broker.Message{Key: []byte(q), Body: []byte("a"), Header: map[string]string{"ok": "1"}},
		&broker.Message{Key: []byte(q), Header: map[string]string{"big": strings.Repeat("x", 200_000)}})
	if !errors.Is(err, ErrMessageTooLarge) || !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Publish with a 200 KB header = %v; want ErrMessageTooLarge and broker.ErrInvalidConfig", err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Errorf("Ack on the shared connection after the refused publish = %v; want nil", err)
	}
	if err := p.Publish(ctx, "", &broker.Message{ID: "after", Key: []byte(q)}); err != nil {
		t.Errorf("Publish after the refused one = %v; want nil", err)
	}
	if got := receiveOne(t, src, 10*time.Second); got.ID != "after" {
		t.Errorf("received %q; want only %q (nothing of the refused batch was sent)", got.ID, "after")
	}
}

// TestIssue10PublishRefusesWhatAMQPCannotEncodeAtOnce: names over 255
// bytes and header values AMQP has no type for made amqp091 fail the frame
// and close the connection; Publish redialled and retried until its
// deadline and reported DeadlineExceeded. A nil message was not
// broker.ErrInvalidConfig as on memory. Now each is refused at once with
// an error wrapping broker.ErrInvalidConfig.
func TestIssue10PublishRefusesWhatAMQPCannotEncodeAtOnce(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	p, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Timeout: 3 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx := context.Background()
	long := strings.Repeat("k", 300)
	for _, tc := range []struct {
		name string
		pub  func() error
	}{
		{"routing key of 300 bytes", func() error { return p.Publish(ctx, "", &broker.Message{Key: []byte(long)}) }},
		{"exchange name of 300 bytes", func() error { return p.Publish(ctx, long, &broker.Message{Key: []byte(q)}) }},
		{"header name of 300 bytes", func() error {
			return p.Publish(ctx, "", &broker.Message{Key: []byte(q), Header: map[string]string{long: "v"}})
		}},
		{"message-id of 300 bytes", func() error { return p.Publish(ctx, "", &broker.Message{ID: long, Key: []byte(q)}) }},
		{"nil message", func() error { return p.Publish(ctx, "", &broker.Message{Key: []byte(q)}, nil) }},
		{"uint64 header value", func() error {
			return p.PublishRaw(ctx, "", q, amqp.Publishing{Headers: amqp.Table{"n": uint64(1)}})
		}},
	} {
		if err := tc.pub(); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Publish with a %s = %v; want an error wrapping broker.ErrInvalidConfig", tc.name, err)
		}
	}
	if err := p.Publish(ctx, "", &broker.Message{ID: "after", Key: []byte(q)}); err != nil {
		t.Fatalf("Publish after the refused ones = %v", err)
	}
	if m, _ := getRaw(t, q, 5*time.Second); m.MessageId != "after" {
		t.Errorf("queue holds %q first; want only %q", m.MessageId, "after")
	}
}

// TestIssue10InjectIsFilteredAndPanicSafe: PublisherConfig.Inject's panic
// escaped Publish, and what it returned was set as is: the adapter's own
// x-queuekit-routing-key forged the Key consumers see, and "content-type"
// became a plain header. Now a panic is an error, and Inject's headers go
// through the same filter as Message.Header.
func TestIssue10InjectIsFilteredAndPanicSafe(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	type key struct{}
	p, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Inject: func(ctx context.Context, h map[string]string) map[string]string {
		if ctx.Value(key{}) != nil {
			panic("inject")
		}
		return map[string]string{"content-type": "text/injected", routingKeyHeader: "forged", seqHeader: "1", "trace": "t1"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("Publish panicked with Inject's panic: %v", r)
			}
		}()
		err := p.Publish(context.WithValue(context.Background(), key{}, 1), "", &broker.Message{ID: "panic", Key: []byte(q)})
		if err == nil || !strings.Contains(err.Error(), "panicked") {
			t.Errorf("Publish with a panicking Inject = %v; want an error that says so", err)
		}
	}()
	if err := p.Publish(context.Background(), "", &broker.Message{ID: "ok", Key: []byte(q)}); err != nil {
		t.Fatal(err)
	}
	m, ok := getRaw(t, q, 5*time.Second)
	if !ok {
		t.Fatal("nothing published")
	}
	got := toMessage(&m, q, nil)
	if got.ID != "ok" || string(got.Key) != q || m.ContentType != "text/injected" || got.Header["trace"] != "t1" {
		t.Errorf("received id %q key %q content-type property %q headers %v; want %q, %q, %q and trace=t1",
			got.ID, got.Key, m.ContentType, m.Headers, "ok", q, "text/injected")
	}
	if s, ok := m.Headers[seqHeader]; ok && s == "1" {
		t.Errorf("Inject's %s reached the broker", seqHeader)
	}
}

// TestIssue10ContentTypeIsTheExactLowerCaseKey: "content-type" and
// "Content-Type" both set made the property whichever the map iteration
// saw last, and lost the other. Now only the exact key "content-type" is
// the property; any other spelling is a plain header.
func TestIssue10ContentTypeIsTheExactLowerCaseKey(t *testing.T) {
	m := toPublishing(&broker.Message{Header: map[string]string{"content-type": "application/json", "Content-Type": "text/plain", "CONTENT-TYPE": "text/x"}})
	if m.ContentType != "application/json" || m.Headers["Content-Type"] != "text/plain" || m.Headers["CONTENT-TYPE"] != "text/x" || m.Headers["content-type"] != nil {
		t.Errorf("toPublishing: content-type property %q, headers %v; want application/json, and the other spellings as headers", m.ContentType, m.Headers)
	}
}

// blockingConn is a network connection whose writes block, once frozen,
// until it is closed: a socket that takes no more bytes (TCP backpressure,
// a broker that stopped reading). Reads go on.
type blockingConn struct {
	net.Conn
	frozen *atomic.Bool
	closed chan struct{}
	once   sync.Once
}

func (c *blockingConn) Write(p []byte) (int, error) {
	if c.frozen.Load() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

func (c *blockingConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestIssue10SettlementIsBoundedByItsContext: amqp091's Ack and Nack ignore
// ctx and block in the socket write, so a settlement on a socket that took
// no more bytes held Consumer.Shutdown and Close past their bounds. Now
// each settlement gives up at its ctx's end: it closes the socket (the
// broker redelivers), and returns an error wrapping ctx's error and
// broker.ErrStaleDelivery. The upper bound is generous; without the bound
// the settlement waits for the heartbeat timeout (here 60 s).
//
// "Ack" runs with per-message acks (AckBatch 1), where Ack writes. With
// coalescing ("Ack coalesced", issue 15) Ack only queues the ack and
// returns nil at once; the write that follows is bounded by
// ackWriteTimeout, past which the socket is closed and the message, whose
// ack never reached the broker, is delivered again.
func TestIssue10SettlementIsBoundedByItsContext(t *testing.T) {
	needBroker(t)
	settle := map[string]func(broker.Delivery, context.Context) error{
		"Ack":           func(d broker.Delivery, ctx context.Context) error { return d.Ack(ctx) },
		"Ack coalesced": func(d broker.Delivery, ctx context.Context) error { return d.Ack(ctx) },
		"Requeue":       func(d broker.Delivery, ctx context.Context) error { return d.Requeue(ctx) },
		"Release":       func(d broker.Delivery, ctx context.Context) error { return d.(broker.Releaser).Release(ctx) },
		"RequeueAfter": func(d broker.Delivery, ctx context.Context) error {
			return d.(broker.DelayedRequeuer).RequeueAfter(ctx, time.Second)
		},
		"DeadLetter": func(d broker.Delivery, ctx context.Context) error { return d.DeadLetter(ctx, broker.Reason{Err: "x"}) },
	}
	for name, f := range settle {
		t.Run(name, func(t *testing.T) {
			q := uniqueQueue(t)
			declareQueue(t, q, Classic)
			publishOne(t, q, "m1")
			var frozen atomic.Bool
			cfg := testConfig(q)
			cfg.Logger = quietLogger()
			cfg.Dialer.Heartbeat = 60 * time.Second
			switch name {
			case "Ack":
				cfg.AckBatch = 1
			case "Ack coalesced":
				cfg.AckBatch = 16 // the default, said for the reader
			}
			cfg.Dialer.Dial = func(network, addr string) (net.Conn, error) {
				c, err := net.DialTimeout(network, addr, 5*time.Second)
				if err != nil {
					return nil, err
				}
				return &blockingConn{Conn: c, frozen: &frozen, closed: make(chan struct{})}, nil
			}
			src, err := NewSource(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = src.Close(ctx)
			}()
			if err := src.DeclareTopology(context.Background()); err != nil {
				t.Fatal(err)
			}
			rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer rcancel()
			d, err := src.Receive(rctx)
			if err != nil {
				t.Fatal(err)
			}
			frozen.Store(true)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- f(d, ctx) }()
			if name == "Ack coalesced" {
				start := time.Now()
				if err := <-done; err != nil {
					t.Fatalf("coalesced Ack on a blocked socket = %v; want nil (queued)", err)
				}
				// Still frozen: the queued ack's write blocks until
				// ackWriteTimeout closes the socket.
				redelivered(t, q, "m1")
				t.Logf("the ack queued on a blocked socket: message redelivered after %v (ackWriteTimeout %v)",
					time.Since(start).Round(time.Millisecond), ackWriteTimeout)
				frozen.Store(false)
				return
			}
			select {
			case err := <-done:
				// Ack and Release are one write; the others publish a
				// copy first, and fail there.
				stale := name == "Ack" || name == "Release"
				if !errors.Is(err, context.DeadlineExceeded) || stale && !errors.Is(err, broker.ErrStaleDelivery) {
					t.Errorf("%s on a blocked socket = %v; want an error wrapping context.DeadlineExceeded (and ErrStaleDelivery: %v)", name, err, stale)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("%s on a blocked socket with a 300 ms context still blocked after 10 s", name)
				frozen.Store(false)
				src.conn.abort() // let the test end
				<-done
			}
			frozen.Store(false)
			redelivered(t, q, "m1")
		})
	}
}

// TestFitDeadLetterAlwaysFits: whatever the dead letter holds, fitDeadLetter
// makes it fit the frame, down to RabbitMQ's smallest frame_max (4096) with
// every string property at its 255-byte maximum, and keeps what it can:
// the error text's start, queuekit's headers, the smaller headers of the
// message's own.
func TestFitDeadLetterAlwaysFits(t *testing.T) {
	p255 := strings.Repeat("p", 255)
	full := amqp.Publishing{ContentType: p255, ContentEncoding: p255, CorrelationId: p255, ReplyTo: p255,
		Expiration: p255, MessageId: p255, Type: p255, UserId: p255, AppId: p255,
		DeliveryMode: 2, Priority: 1, Timestamp: time.Now()}
	for _, tc := range []struct {
		name     string
		frameMax int
		props    amqp.Publishing
		own      amqp.Table
		reason   int
	}{
		{"long error text", 131072, amqp.Publishing{}, amqp.Table{"a": "1"}, 500_000},
		{"many small headers", 131072, amqp.Publishing{}, manyHeaders(20_000), 100},
		{"nested tables and arrays", 131072, amqp.Publishing{}, amqp.Table{"t": amqp.Table{"x": strings.Repeat("x", 200_000)}, "l": []any{strings.Repeat("y", 100_000), int64(1)}, "s": "keep"}, 10},
		{"smallest frame, full properties", 4096, full, amqp.Table{"h": strings.Repeat("h", 3000), "s": "keep"}, 10_000},
		{"smallest frame, 255-byte header names", 4096, full, manyHeaders255(20), 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.props
			m.Headers = amqp.Table{}
			for k, v := range tc.own {
				m.Headers[k] = v
			}
			q := strings.Repeat("q", 255)
			for k, v := range (broker.Reason{Err: strings.Repeat("é", tc.reason/2), Attempts: 3, Source: q, Time: time.Now()}).Header(nil) {
				m.Headers[k] = v
			}
			m.Headers[routingKeyHeader] = strings.Repeat("k", 255)
			if err := checkPublish("", q, &m); err != nil {
				t.Fatal(err)
			}
			if !fitDeadLetter(&m, true, tc.frameMax) {
				t.Fatalf("fitDeadLetter = false")
			}
			if n := headerFrameSize(&m, true); n > tc.frameMax {
				t.Fatalf("after fitDeadLetter the header frame is %d bytes; frame_max %d", n, tc.frameMax)
			}
			if err := checkPublish("", q, &m); err != nil {
				t.Fatalf("cut dead letter is not publishable: %v", err)
			}
			for _, k := range []string{broker.HeaderAttempts, broker.HeaderSource, broker.HeaderPermanent, routingKeyHeader} {
				if _, ok := m.Headers[k]; !ok {
					t.Errorf("cut dead letter lost %s", k)
				}
			}
			if e, _ := m.Headers[broker.HeaderError].(string); !utf8.ValidString(e) {
				t.Errorf("error text cut inside a UTF-8 sequence: %q…", e[:min(len(e), 40)])
			}
			if _, ok := tc.own["s"]; ok && m.Headers["s"] != "keep" {
				t.Errorf("the small header s was left out; trimmed: %v", m.Headers[HeaderTrimmed])
			}
		})
	}
}

func manyHeaders(n int) amqp.Table {
	h := amqp.Table{}
	for i := range n {
		h[fmt.Sprintf("h%05d", i)] = "v"
	}
	return h
}

func manyHeaders255(n int) amqp.Table {
	h := amqp.Table{}
	for i := range n {
		h[fmt.Sprintf("%0255d", i)] = "v"
	}
	return h
}
