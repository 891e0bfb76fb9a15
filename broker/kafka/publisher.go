package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	kafkago "github.com/segmentio/kafka-go"
)

// PublisherConfig configures a Publisher. Brokers is required; every other
// zero field means the documented default.
type PublisherConfig struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// Topic is where Publish writes when its topic argument is "". Default
	// none: such a Publish is refused. It must be a name Kafka accepts (see
	// Config.Topic).
	Topic string
	// Dialer supplies TLS, SASL, client ID and dial timeout. Default: plain
	// connections with a 10 s dial timeout.
	Dialer *kafkago.Dialer

	// BatchSize is the most messages per partition sent in one request.
	// Default 100.
	BatchSize int
	// BatchBytes is the largest request per partition. Default 1 MB.
	BatchBytes int64
	// BatchTimeout is the longest a message waits for others to batch with.
	// Default 5 ms (kafka-go's default, 1 s, makes every lone Publish take a
	// second).
	BatchTimeout time.Duration
	// RequiredAcks is how many replicas must acknowledge a write:
	// kafkago.RequireAll (default, also the meaning of zero) or
	// kafkago.RequireOne. Fire-and-forget is not offered: Publish returns
	// only when it knows whether the write succeeded.
	RequiredAcks kafkago.RequiredAcks
	// WriteTimeout bounds each request when ctx has no earlier deadline.
	// Default 10 s.
	WriteTimeout time.Duration
	// Balancer picks the partition of a message. Default kafkago.Hash
	// (same key → same partition; compatible with Sarama's default).
	Balancer kafkago.Balancer
	// Compression of the batches: 0 (none, the default), kafkago.Gzip,
	// kafkago.Snappy, kafkago.Lz4 or kafkago.Zstd.
	Compression kafkago.Compression
	// Inject, if set, is called for every message with the Publish context
	// and a copy of the message's headers, and returns the headers to send.
	// Use it to propagate trace context or a correlation id from ctx:
	//
	//	Inject: func(ctx context.Context, h map[string]string) map[string]string { return otelqueuekit.Inject(ctx, h) }
	Inject func(ctx context.Context, header map[string]string) map[string]string
}

// A Publisher writes messages to Kafka through a kafkago.Writer with
// explicit batching, and implements broker.Publisher. It is safe for
// concurrent use; concurrent Publish calls share batches. After Close,
// Publish returns an error wrapping broker.ErrPublisherClosed. The zero value
// is not usable: make one with NewPublisher.
type Publisher struct {
	w      *kafkago.Writer
	t      *kafkago.Transport
	conns  *conns
	topic  string
	inject func(ctx context.Context, header map[string]string) map[string]string

	closed    atomic.Bool
	closeOnce sync.Once
	closeDone chan struct{}
	closeErr  error // written before closeDone is closed
}

var _ broker.Publisher = (*Publisher)(nil)

// NewPublisher returns a Publisher. It returns an error wrapping
// broker.ErrInvalidConfig when the config is invalid. It does not connect:
// the first Publish does.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := validateBrokers(cfg.Brokers); err != nil {
		return nil, err
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &kafkago.Dialer{Timeout: 10 * time.Second}
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 100
	}
	if cfg.BatchBytes == 0 {
		cfg.BatchBytes = 1 << 20
	}
	if cfg.BatchTimeout == 0 {
		cfg.BatchTimeout = 5 * time.Millisecond
	}
	if cfg.RequiredAcks == kafkago.RequireNone {
		cfg.RequiredAcks = kafkago.RequireAll
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.Balancer == nil {
		cfg.Balancer = &kafkago.Hash{}
	}
	switch {
	case cfg.BatchSize < 1:
		return nil, invalid("publisher BatchSize %d, want at least 1", cfg.BatchSize)
	case cfg.BatchBytes < 1:
		return nil, invalid("publisher BatchBytes %d, want at least 1", cfg.BatchBytes)
	case cfg.BatchTimeout < 0:
		return nil, invalid("publisher BatchTimeout %v, want > 0", cfg.BatchTimeout)
	case cfg.WriteTimeout < 0:
		return nil, invalid("publisher WriteTimeout %v, want > 0", cfg.WriteTimeout)
	case cfg.RequiredAcks != kafkago.RequireAll && cfg.RequiredAcks != kafkago.RequireOne:
		return nil, invalid("publisher RequiredAcks %d, want RequireAll or RequireOne", cfg.RequiredAcks)
	case !knownCompression(cfg.Compression):
		// kafka-go sends an unknown codec uncompressed (99) or fails every
		// write with it (-1).
		return nil, invalid("publisher Compression %d, want 0 (none), kafkago.Gzip, Snappy, Lz4 or Zstd", int8(cfg.Compression))
	}
	if cfg.Topic != "" {
		if err := invalidTopic("publisher Topic", cfg.Topic); err != nil {
			return nil, err
		}
	}
	cs := newConns(cfg.Dialer)
	t := transport(cfg.Dialer, cs)
	addr := kafkago.TCP(cfg.Brokers...)
	w := &kafkago.Writer{
		Addr:         addr,
		Balancer:     cfg.Balancer,
		BatchSize:    cfg.BatchSize,
		BatchBytes:   cfg.BatchBytes,
		BatchTimeout: cfg.BatchTimeout,
		ReadTimeout:  cfg.WriteTimeout,
		WriteTimeout: cfg.WriteTimeout,
		RequiredAcks: cfg.RequiredAcks,
		Compression:  cfg.Compression,
		// A write refused because the partition's leader moved (or failed
		// because its broker went away) makes the transport read the
		// cluster's layout again, so that the next attempt goes to the new
		// leader (see leaderFollower).
		Transport: &leaderFollower{d: layoutDropper{t: t}},
		// Retries are the caller's decision (Publish returns the error);
		// kafka-go's default of 10 attempts would hide a dead cluster for
		// seconds. Keep a few for leader changes.
		MaxAttempts: 3,
		// The Writer must never create a topic: a publish to a topic that
		// does not exist is an error the caller sees (see Publish).
		AllowAutoTopicCreation: false,
	}
	return &Publisher{
		w: w, t: t, conns: cs, topic: cfg.Topic, inject: cfg.Inject,
		closeDone: make(chan struct{}),
	}, nil
}

// Publish implements broker.Publisher: it writes msgs to topic (the
// config's Topic when topic is ""), in order per partition, and returns
// when every one was acknowledged by the brokers as RequiredAcks asks, or
// with an error. A message's Key picks its partition (see
// PublisherConfig.Balancer); its Header becomes Kafka record headers
// (passed through PublisherConfig.Inject, if set); a zero Time means now.
// Message.Topic is ignored: topic decides. Message.ID is not sent: a Kafka
// record is identified by its topic, partition and offset, which is the ID
// a Source gives it; put a deduplication key in Header.
//
// ctx bounds the whole call. On error, some messages may have been
// written: a kafkago.WriteErrors value (see errors.As) says which failed. A
// topic that does not exist is not created: the error wraps
// kafkago.UnknownTopicOrPartition and names the topic, and nothing was
// written. A topic name Kafka refuses (see Config.Topic) is refused before
// anything is sent: the error wraps kafkago.InvalidTopic. After Close, the
// error wraps broker.ErrPublisherClosed.
//
// How far past ctx's deadline Publish may return: it checks ctx every 1024
// messages while it prepares the batch (about half a millisecond of work
// each), and if ctx ended by then returns its error with nothing sent. Two
// steps do not look at ctx: the allocation of the batch's Kafka records,
// which the Go runtime may make pay for a garbage collection in progress
// (up to ~100 ms was measured for 200 000 messages on a busy 2-core
// machine; it grows with the batch), and kafka-go's pass that assigns the
// records to partitions (~4 ms for 200 000 messages, ~18 ms under the race
// detector). Once the batch is handed over, Publish returns as soon as ctx
// ends; records already handed to kafka-go may still be written. Publish
// batches of thousands of messages, not hundreds of thousands, when the
// deadline is short.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	if p.closed.Load() {
		return fmt.Errorf("kafka: publish: %w", broker.ErrPublisherClosed)
	}
	if len(msgs) == 0 {
		return nil
	}
	if topic == "" {
		topic = p.topic
	}
	if topic == "" {
		return errors.New("kafka: publish: no topic given and the publisher has no default Topic")
	}
	if err := validTopicName(topic); err != nil {
		return fmt.Errorf("kafka: publish: %w", err)
	}
	out := make([]kafkago.Message, len(msgs))
	for i, m := range msgs {
		// Converting a large batch takes a while (~0.5 µs a message,
		// several times that under the race detector): check ctx every
		// chunk, so that a deadline that passes meanwhile ends the call
		// within one chunk, before anything is sent.
		if i > 0 && i%publishChunk == 0 {
			if err := ctxEnded(ctx); err != nil {
				return fmt.Errorf("kafka: publish to %s: nothing was written: %w", topic, err)
			}
		}
		if m == nil {
			return fmt.Errorf("kafka: publish: message %d is nil", i)
		}
		h := m.Header
		if p.inject != nil {
			h = p.inject(ctx, maps.Clone(h)) // the caller's map is not modified
		}
		out[i] = kafkago.Message{Topic: topic, Key: m.Key, Value: m.Body, Time: m.Time, Headers: toHeaders(h)}
	}
	if err := ctxEnded(ctx); err != nil {
		return fmt.Errorf("kafka: publish to %s: nothing was written: %w", topic, err)
	}
	err := p.w.WriteMessages(ctx, out...)
	switch {
	case err == nil:
		return nil
	case p.closed.Load() && (errors.Is(err, io.ErrClosedPipe) || errors.Is(err, errConnsClosed)):
		return fmt.Errorf("kafka: publish to %s: %w", topic, broker.ErrPublisherClosed)
	case errors.Is(err, kafkago.UnknownTopicOrPartition):
		return fmt.Errorf("kafka: publish: topic %s does not exist (the publisher does not create topics; see Source.DeclareTopology): %w", topic, err)
	}
	return fmt.Errorf("kafka: publish to %s: %w", topic, err)
}

// Close implements broker.Publisher: Publish refuses new messages at once;
// Close waits for the writes in progress (their batches are sent without
// waiting for BatchTimeout) and releases the connections. It is bounded by
// ctx: when ctx ends first, the connections are closed under the writes in
// progress (which then fail, and may or may not have arrived), Close waits
// for the writer's goroutines, which return at once, and returns an error
// wrapping ctx's. It is idempotent; a second call waits for the first, or
// for its own ctx.
func (p *Publisher) Close(ctx context.Context) error {
	p.closed.Store(true)
	first := false
	p.closeOnce.Do(func() {
		first = true
		stop := context.AfterFunc(ctx, p.conns.kill)
		p.w.Close() // idempotent; flushes the pending batches
		if !stop() {
			// ctx ended first: the writes still in progress were cut.
			p.closeErr = fmt.Errorf("kafka: close publisher: writes in progress were cut short: %w", ctx.Err())
		}
		p.conns.kill()             // nothing is left to write; end what kafka-go keeps open
		p.t.CloseIdleConnections() // the Writer closes only transports it created
		close(p.closeDone)
	})
	if !first {
		select {
		case <-p.closeDone:
		case <-ctx.Done():
			return fmt.Errorf("kafka: close publisher: %w", ctx.Err())
		}
	}
	return p.closeErr
}

// ctxEnded returns ctx.Err(), or context.DeadlineExceeded once ctx's
// deadline has passed even if ctx does not say so yet: the timer that
// cancels ctx runs on a goroutine of its own, which a busy machine may not
// schedule for tens of milliseconds while Publish converts.
func ctxEnded(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func knownCompression(c kafkago.Compression) bool {
	switch c {
	case 0, kafkago.Gzip, kafkago.Snappy, kafkago.Lz4, kafkago.Zstd:
		return true
	}
	return false
}

func toHeaders(h map[string]string) []kafkago.Header {
	if len(h) == 0 {
		return nil
	}
	out := make([]kafkago.Header, 0, len(h))
	for k, v := range h {
		out = append(out, kafkago.Header{Key: k, Value: []byte(v)})
	}
	return out
}

func fromHeaders(hs []kafkago.Header) map[string]string {
	if len(hs) == 0 {
		return nil
	}
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		out[h.Key] = string(h.Value) // a repeated key keeps its last value
	}
	return out
}

// publishChunk is how many messages Publish converts between two checks of
// its ctx: about half a millisecond of work.
const publishChunk = 1024
