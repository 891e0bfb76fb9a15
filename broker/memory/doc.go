// Package memory is an in-process message broker: the embedded default of
// queuekit, for examples, documentation and tests of code that publishes to
// and consumes from queues. It has the semantics of a real broker, so that
// what works on it works on RabbitMQ: named queues, a prefetch bound per
// subscription, manual acknowledgement, requeue with a delivery count
// surfaced as broker.Message.Attempt, a dead-letter queue per queue, and a
// publisher. It also injects the faults that real brokers produce, so tests
// can check that no message is lost when they happen.
//
// A Broker holds the queues. Broker.Publisher returns a broker.Publisher
// that appends to them, and Broker.Source subscribes to one. A *Source is a
// broker.Source, so it is what consumer.New takes:
//
//	b := memory.NewBroker()
//	pub := b.Publisher()
//	err := broker.PublishJSON(ctx, pub, "orders", nil, order)
//
//	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 8})
//	c, err := consumer.New(src, handler, consumer.WithConcurrency(8))
//	err = c.Run(ctx)
//
// Code written against broker.Publisher and broker.Source runs on RabbitMQ
// or Kafka with only these constructors changed. Nothing is persisted: the
// queues live as long as the Broker value.
//
// # Publishing
//
// Publisher.Publish (and Broker.Publish, the same without a Close) copies a
// batch of messages to the tail of a queue, all of them or none, and returns
// when they are enqueued: a nil error means a Receive can have them. Each
// copy's Topic is the queue; its ID is kept, or "<queue>-<n>" when empty;
// Key and Header are kept as they are, including the content-type header of
// a message made by broker.NewJSON. Since queues are created on first use,
// no destination is unknown. After Publisher.Close, that publisher's
// Publish returns an error wrapping broker.ErrPublisherClosed; the broker
// and its other publishers go on working.
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
//     into its headers, and is recorded as a dead letter (see Dead letters).
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
// # Capabilities
//
// A Source implements every optional capability of package broker, as the
// conformance suite (broker/brokertest) checks:
//
//   - broker.Pauser: while paused, Receive hands out nothing; deliveries
//     already received can still be settled.
//   - broker.StatusReporter: connected until Close or Cancel.
//   - broker.EventSource: EventConnected on the first Receive (set the hook
//     before it, as the runtime does), and the events of the faults below;
//     never a call after Close returned.
//   - broker.BacklogReporter: Messages is the queue's ready messages (not
//     those handed out, nor those waiting out a RequeueAfter delay), as
//     RabbitMQ counts them; Consumers the sources subscribed to the queue.
//   - broker.DeadLetterSource: Source.DeadLetters returns the dead letters
//     of its queue (see Dead letters).
//
// Its deliveries implement broker.DelayedRequeuer and broker.Releaser.
//
// # Dead letters
//
// Every message that enters a dead-letter queue, by Delivery.DeadLetter or
// by a Publish to DeadLetterQueue(queue) directly, is recorded as a dead
// letter of queue with an id of its own, "<queue>.dlq-<n>". The record is
// what Broker.DeadLetters returns and what Broker.DeadLettersOf(queue) (and
// Source.DeadLetters) browses, redrives and purges through the
// broker.DeadLetters interface, as an operator would on RabbitMQ or Kafka:
//
//	dl := b.DeadLettersOf("orders")
//	page, err := dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{Reason: "timeout"}})
//	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
//
// List and Count change nothing. Redrive publishes a copy of each dead
// letter to queue (never to a queue its headers name: one whose reason
// names another is skipped with broker.ErrNoSource unless
// RedriveOptions.Destination, which must exist, is given) with a fresh delivery
// budget (Attempt 1 on its next delivery) and broker.HeaderRedriven
// incremented, then removes the dead letter; one redriven
// broker.DefaultMaxRedrives times stays, skipped with
// broker.ErrRedriveLimit. Redrive and Purge take a dead letter out of the
// dead-letter queue too when it is still waiting there. Consuming the
// dead-letter queue does not change the record. Stats of a dead-letter
// queue count what was redriven and purged.
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
// broker.ErrSourceClosed after Close. Settling a delivery twice returns an
// error wrapping broker.ErrAlreadySettled; settling a delivery that went
// back to the queue (Close, DropConnection, Cancel) returns an error wrapping
// broker.ErrStaleDelivery. Invalid configuration is an error wrapping
// broker.ErrInvalidConfig. Publish returns its context's error when the
// context is done, and an error wrapping broker.ErrPublisherClosed after the
// Publisher's Close. Publish and Source return ErrBrokerClosed after
// Broker.Close, and so do a DeadLetters' Redrive and Purge. A DeadLetters
// reports unknown ids with an error wrapping broker.ErrDeadLetterNotFound,
// a dead letter it cannot send back with one wrapping broker.ErrRedriveLimit
// or broker.ErrNoSource (no reason headers, or a source queue never used),
// and a selection of nothing with broker.ErrEmptySelection.
package memory
