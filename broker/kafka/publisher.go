package kafka

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/queuekit/queuekit/broker"
	kafkago "github.com/segmentio/kafka-go"
)

// PublisherConfig configures a Publisher. Brokers is required; every other
// zero field means the documented default.
type PublisherConfig struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// Topic is used for messages whose Topic is empty. Default none: such
	// messages are refused.
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
	// Compression of the batches. Default none.
	Compression kafkago.Compression
	// Inject, if set, is called for every message with the Publish context
	// and a copy of the message's headers, and returns the headers to send.
	// Use it to propagate trace context or a correlation id from ctx:
	//
	//	Inject: func(ctx context.Context, h map[string]string) map[string]string { return otel.Inject(ctx, h) }
	Inject func(ctx context.Context, header map[string]string) map[string]string
}

// A Publisher writes messages to Kafka through a kafkago.Writer with
// explicit batching. It is safe for concurrent use; concurrent Publish calls
// share batches. After Close, Publish returns an error.
type Publisher struct {
	w      *kafkago.Writer
	t      *kafkago.Transport
	topic  string
	inject func(ctx context.Context, header map[string]string) map[string]string
}

// NewPublisher returns a Publisher. It returns an error wrapping
// consumer.ErrInvalidConfig when the config is invalid. It does not connect:
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
	}
	t := transport(cfg.Dialer)
	w := &kafkago.Writer{
		Addr:         kafkago.TCP(cfg.Brokers...),
		Balancer:     cfg.Balancer,
		BatchSize:    cfg.BatchSize,
		BatchBytes:   cfg.BatchBytes,
		BatchTimeout: cfg.BatchTimeout,
		ReadTimeout:  cfg.WriteTimeout,
		WriteTimeout: cfg.WriteTimeout,
		RequiredAcks: cfg.RequiredAcks,
		Compression:  cfg.Compression,
		Transport:    t,
		// Retries are the caller's decision (Publish returns the error);
		// kafka-go's default of 10 attempts would hide a dead cluster for
		// seconds. Keep a few for leader changes.
		MaxAttempts: 3,
	}
	return &Publisher{w: w, t: t, topic: cfg.Topic, inject: cfg.Inject}, nil
}

// Publish writes msgs and returns when every one was acknowledged by the
// brokers (RequiredAcks), or with an error. A message goes to its Topic, or
// to the config's Topic when it has none; its Key picks the partition; its
// Header becomes Kafka headers; a zero Time means now.
//
// ctx bounds the whole call. On error, some messages may have been written:
// a kafkago.WriteErrors value (see errors.As) says which failed.
func (p *Publisher) Publish(ctx context.Context, msgs ...*broker.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	out := make([]kafkago.Message, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("kafka: publish: message %d is nil", i)
		}
		topic := m.Topic
		if topic == "" {
			topic = p.topic
		}
		if topic == "" {
			return fmt.Errorf("kafka: publish: message %d has no topic and the publisher has no default", i)
		}
		h := m.Header
		if p.inject != nil {
			h = p.inject(ctx, maps.Clone(h)) // the caller's map is not modified
		}
		out[i] = kafkago.Message{Topic: topic, Key: m.Key, Value: m.Body, Time: m.Time, Headers: toHeaders(h)}
	}
	if err := p.w.WriteMessages(ctx, out...); err != nil {
		return fmt.Errorf("kafka: publish: %w", err)
	}
	return nil
}

// Close flushes pending writes and releases connections. It is idempotent.
func (p *Publisher) Close(ctx context.Context) error {
	err := p.w.Close() // idempotent in kafka-go
	// The Writer closes only transports it created itself.
	p.t.CloseIdleConnections()
	return err
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
