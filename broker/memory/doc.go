// Package memory is an in-process message broker: the embedded default of
// queuekit, for examples, documentation and tests of code that consumes
// queues. It has the semantics of a real broker, so that what works on it
// works on RabbitMQ: named queues, a prefetch bound per subscription, manual
// acknowledgement, requeue with a delivery count surfaced as
// consumer.Message.Attempt, a dead-letter queue per queue, and a publisher.
// It also injects the faults that real brokers produce, so tests can check
// that no message is lost when they happen.
//
// A Broker holds the queues; Broker.Publish appends to one and
// Broker.Source subscribes to one. A *Source is a consumer.Source, so it is
// what consumer.New takes:
//
//	b := memory.NewBroker()
//	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 8})
//	c, err := consumer.New(src, handler, consumer.WithConcurrency(8))
//	err = c.Run(ctx)
//
// Nothing is persisted: the queues live as long as the Broker value.
//
// # Lifecycle
//
// Queues are created on first use, by Publish or Source, and are never
// deleted. A Source lives until Source.Close; Broker.Close closes every
// source and makes delayed messages ready at once, so that no timer
// outlives the broker. The broker starts no goroutine of its own: a
// RequeueAfter delay is a time.AfterFunc timer, whose function only makes
// the message ready and returns.
//
// # Acknowledgement
//
// Every message handed out by Receive is outstanding until it is settled,
// exactly once, by one of:
//
//   - Ack: the message is removed.
//   - Requeue: the message goes back to the head of the queue and is the
//     next delivered, with Attempt+1. RabbitMQ puts a requeued message back
//     at its original position, which is the head for the oldest message.
//   - RequeueAfter(d): the delivery is released at once, and the message
//     becomes ready again after d, at the tail of the queue.
//   - DeadLetter(reason): the message moves to the queue
//     DeadLetterQueue(queue) (queue + ".dlq") with reason.Header() merged
//     into its headers, and is recorded for Broker.DeadLetters.
//
// Attempt is 1 on the first delivery and grows by one on every redelivery,
// whatever caused it: Requeue, a closed or cancelled source, a dropped
// connection. Messages are copied on Publish and on every delivery, so
// neither a publisher nor a handler can change what another one sees.
//
// A source never has more than Prefetch deliveries outstanding: Receive
// blocks until one is settled. When a source closes, its outstanding
// deliveries go back to the head of the queue, oldest first.
//
// # Fault injection
//
// Source.DropConnection makes every outstanding delivery of a source stale
// and puts their messages back, as a lost AMQP connection does; the source
// reconnects at once. Source.Cancel cancels the subscription from the broker
// side: Receive fails until Source.Resume. Broker.SetAckDelay slows every
// settlement down, honouring the settling context.
//
// # Concurrency
//
// A Broker and its Sources are safe for concurrent use; Receive may be
// called from many goroutines at once. Every operation takes one broker-wide
// mutex once, and blocked Receive calls wait on a channel that is closed when
// their queue changes, so Receive honours its context. Event hooks are called
// without that mutex held.
//
// # Errors
//
// Receive returns its context's error when the context ends, and
// consumer.ErrSourceClosed after Close. Settling a delivery twice returns an
// error wrapping consumer.ErrAlreadySettled; settling a delivery that went
// back to the queue (Close, DropConnection, Cancel) returns an error wrapping
// consumer.ErrStaleDelivery. Invalid configuration is an error wrapping
// consumer.ErrInvalidConfig. Publish and Source return ErrBrokerClosed after
// Broker.Close.
package memory
