package broker

import "time"

// Message is one broker delivery as a handler sees it. It is broker-neutral:
// it carries no context and no acknowledgement methods, because settling a
// message is the runtime's job, not the handler's.
//
// A handler may read a Message concurrently with nothing else; the runtime
// hands each Message to exactly one handler at a time. A handler must not
// keep a reference to the Message after it returns.
type Message struct {
	// ID identifies the delivery for logs and tracing: the AMQP message-id
	// (the RabbitMQ Publisher sets a random one on a message without; the
	// Source makes one up when there is none), topic/partition/offset for Kafka,
	// or, on the in-memory broker, the published ID or "<queue>-<n>". It is
	// not a deduplication key: a producer's retry gets a new one, and
	// made-up ids repeat across processes. Deduplicate on a key the producer
	// puts in Header.
	ID string
	// Topic is the queue name (RabbitMQ, memory) or topic (Kafka) the
	// message was received from.
	Topic string
	// Key is the partitioning key (Kafka) or routing key (RabbitMQ).
	Key []byte
	// Body is the payload.
	Body []byte
	// Header holds the message headers as strings. It may be nil.
	Header map[string]string
	// Time is when the message was published, if the broker says so.
	Time time.Time
	// Attempt is 1 on the first delivery and grows with each redelivery.
	// Adapters take it from broker counters where they exist (x-delivery-count,
	// x-death, a SQL row's attempts column, a Kafka retry topic's header), so
	// the delivery budget survives consumer restarts there; docs/attempts.md
	// in the repository says what each broker can and cannot count.
	Attempt int
}

// Headers written on a dead-lettered message. They say why it failed.
const (
	// HeaderError holds the error text of the last failure.
	HeaderError = "x-queuekit-error"
	// HeaderAttempts holds the number of deliveries the message had.
	HeaderAttempts = "x-queuekit-attempts"
	// HeaderSource holds the queue or topic the message was consumed from.
	HeaderSource = "x-queuekit-source"
	// HeaderPermanent is "true" when the failure was permanent (not retried).
	HeaderPermanent = "x-queuekit-permanent"
	// HeaderFailedAt holds the RFC 3339 time of the failure.
	HeaderFailedAt = "x-queuekit-failed-at"
)
