package broker

import (
	"context"
	"encoding/json"
	"fmt"
)

// A Publisher sends messages to a broker. Every adapter's publisher
// implements it, so that code which publishes changes only its constructor
// when it moves between brokers.
//
// Publish sends msgs to dest, in order, and returns once the broker has taken
// every one of them (a publisher confirm on RabbitMQ, the acks the producer
// asked for on Kafka, the enqueue on the memory broker). A nil error means
// every message was taken. An error means some may have arrived and some not:
// a retry may duplicate, so consumers deduplicate on a key the producer put in
// the headers. dest is the queue (memory), the exchange (RabbitMQ; "" is the
// default exchange, which routes by Key to the queue of that name) or the
// topic (Kafka). Message.Key is the routing key (RabbitMQ) or the partition
// key (Kafka); Message.Header travels as message headers; Message.ID, when
// set, is the message id. Publish does not modify or keep the messages.
//
// Publish is safe for concurrent use. It is bounded by ctx: when ctx ends
// first, it returns an error wrapping ctx's, and the messages not yet
// confirmed may or may not arrive. After Close, Publish returns an error
// wrapping ErrPublisherClosed.
//
// Close waits, bounded by ctx, for the publishes in progress, then releases
// the publisher's connections. It is idempotent.
type Publisher interface {
	Publish(ctx context.Context, dest string, msgs ...*Message) error
	Close(ctx context.Context) error
}

// HeaderContentType is the header that carries a message's content type. The
// RabbitMQ adapter maps it to and from the AMQP content-type property.
const HeaderContentType = "content-type"

// HeaderIdempotencyKey is the header a producer sets to name a message for
// deduplication: the same key on two deliveries means the same message, sent
// twice (a retried publish, an outbox relay that republished after a crash).
// The inbox (package github.com/queuekit/queuekit/sql/inbox) records it to run
// a handler's effect once; the outbox sets a fresh random key on every message
// written without one. Message.ID is no substitute: adapters make ids up.
const HeaderIdempotencyKey = "idempotency-key"

// ContentTypeJSON is the content type of the messages NewJSON makes.
const ContentTypeJSON = "application/json"

// NewJSON returns a message whose Body is v encoded as JSON, with the header
// content-type: application/json: the counterpart of consumer.JSON. Set Key,
// ID or more headers on the result before publishing it.
func NewJSON(v any) (*Message, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("queuekit: encode JSON message: %w", err)
	}
	return &Message{Body: body, Header: map[string]string{HeaderContentType: ContentTypeJSON}}, nil
}

// PublishJSON publishes v, encoded as JSON by NewJSON, to dest, with key as
// its Key (nil for none). It returns what p.Publish returns, or the encoding
// error, in which case nothing was published.
func PublishJSON(ctx context.Context, p Publisher, dest string, key []byte, v any) error {
	m, err := NewJSON(v)
	if err != nil {
		return err
	}
	m.Key = key
	return p.Publish(ctx, dest, m)
}
