package memory

import (
	"context"

	"github.com/queuekit/queuekit/broker"
)

// A Publisher publishes to the queues of a Broker. It is the memory broker's
// broker.Publisher: code written against that interface runs on the memory
// broker in tests and examples and on RabbitMQ or Kafka in production, with
// only the constructor changed.
//
// A Publisher is safe for concurrent use. Use Broker.Publisher; the zero
// value is not usable. Close ends this publisher only: the broker and its
// other publishers go on working.
type Publisher struct {
	b      *Broker
	closed bool // guarded by b.mu, so that Close and Publish are ordered
}

// Publisher returns a new Publisher of b's queues.
func (b *Broker) Publisher() *Publisher { return &Publisher{b: b} }

// Publish appends copies of msgs to queue, in order, all of them or none, as
// Broker.Publish does: the queue is created on first use, so no destination
// is unknown; msgs are taken when Publish returns nil. It returns ctx's error
// if ctx is done, an error wrapping broker.ErrInvalidConfig for an empty
// queue name or a nil message, an error wrapping broker.ErrPublisherClosed
// after Close, and ErrBrokerClosed after Broker.Close.
func (p *Publisher) Publish(ctx context.Context, queue string, msgs ...*broker.Message) error {
	return p.b.publish(ctx, p, queue, msgs)
}

// Close makes every later Publish of p return an error wrapping
// broker.ErrPublisherClosed. A Publish in progress finishes first: Close
// waits for it, which takes no longer than an enqueue. Close is idempotent,
// does not close the Broker, and returns nil.
func (p *Publisher) Close(context.Context) error {
	p.b.mu.Lock()
	p.closed = true
	p.b.mu.Unlock()
	return nil
}
