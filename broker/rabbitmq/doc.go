// Package rabbitmq is the RabbitMQ adapter of queuekit, on
// github.com/rabbitmq/amqp091-go: a Source that keeps itself subscribed
// through connection losses, broker restarts and queue deletions, and a
// Publisher that returns only once the broker has confirmed a message.
//
// Example (in this package's documentation) shows a consumer under a
// Supervisor and a publisher; it needs a broker, so it is compiled by go test
// but not run.
//
// # Lifecycle
//
// NewSource and NewPublisher validate their configuration and connect
// nothing. A Source connects on its first Receive; from then on one goroutine
// of its own, the session loop, opens a channel (one per source, on a
// connection the source owns or on a shared Connection), makes sure of the
// topology, sets Qos(Prefetch) and subscribes with a consumer tag of its own.
// When the channel or connection closes, or the broker cancels the
// subscription (the queue was deleted), the loop reports it, waits with a
// jittered exponential backoff (ReconnectMin up to ReconnectMax; never a hot
// loop) and does it all again. Receive blocks meanwhile. Close stops the
// loop, closes the channel, so that the broker requeues what was prefetched
// and not settled, and closes the connection if the source owns it.
//
// Pause (consumer.Pauser) stops Receive from handing out deliveries; the
// session loop cancels the subscription and releases (see Acknowledgement)
// what the client had buffered; Resume subscribes again. Pause returns once
// that is done or when its context ends; in the latter case the loop finishes
// the give-back in the background, and closes the channel (the broker then
// requeues everything unacknowledged on it) if it takes more than 10 s. So a
// Pause with a context that is already done strands nothing: the next Resume
// sees every message.
//
// Status (consumer.StatusReporter) and the event hook (consumer.EventSource:
// EventConnected, EventReconnecting, EventCancelled) make the connection
// state visible to Supervisor.Health and to operators.
//
// A Publisher opens its channel on first use and again whenever it was lost,
// retrying with backoff inside the deadline of the Publish that needs it.
//
// # Topology
//
// By default the source makes sure that its queue (classic or quorum, with
// QueueArgs), the exchanges and bindings of Topology, a dead-letter exchange
// "<queue>.dlx" with a queue "<queue>.dlq" bound to it by the queue's name,
// and a retry queue "<queue>.retry" exist: it checks each passively and
// declares only what is missing. Strict declares everything actively on
// every connect, which detects an existing queue with different arguments
// (PRECONDITION_FAILED); it is not the default because each active
// declaration is a metadata write after which RabbitMQ 3.10 consumed about
// half as fast for seconds in our benchmark. Passive declares nothing, for
// infrastructure provisioned elsewhere: the queue, the dead-letter exchange
// and the retry queue must exist, and the dead-letter queue must be bound to
// the exchange with the queue's name as the routing key.
//
// A classic queue that drops messages at its head when full (x-max-length or
// x-max-length-bytes in QueueArgs, with x-overflow "drop-head", the default)
// is refused with consumer.ErrInvalidConfig: on a full queue every way of
// giving a message back loses one. The copy Requeue publishes makes the
// broker drop the head, a message nobody has seen, without dead-lettering
// it; and a nack with requeue (a release, or the broker's own requeue when a
// channel closes) puts the message back at the head, where RabbitMQ drops
// it. Use x-overflow "reject-publish" (the broker refuses the copy while the
// queue is full, and Requeue then nacks with requeue, which is not refused
// and evicts nothing; see Acknowledgement) or a quorum queue. A limit set
// by a policy, or on a queue declared elsewhere, cannot be seen over AMQP
// 0-9-1 (queue.declare-ok carries only the message and consumer counts):
// state it in QueueArgs so that the source checks it.
//
// One path stays unsafe on any length-limited queue: a delayed retry
// (RequeueAfter) comes back from the retry queue by dead-lettering, which the
// broker does not confirm. Into a full reject-publish queue RabbitMQ 3.10
// drops it; into a full drop-head quorum queue it evicts the head. Do not
// return retry.After errors from handlers of a length-limited queue.
//
// A source declares its topology when it connects, so a program that
// publishes before any consumer has (an API whose workers run elsewhere)
// would see its mandatory publishes returned as unroutable: it calls
// DeclareTopology first, with the same Topology as the consumers.
//
// # Acknowledgement
//
// Deliveries use manual acknowledgements. The runtime settles each one:
//
//   - Ack sends basic.ack on the channel the delivery came on.
//   - Requeue, on a quorum queue, sends basic.nack with requeue; the broker
//     counts it in x-delivery-count. A classic queue counts nothing, so there
//     Requeue publishes a copy to the back of the queue with HeaderDeliveries,
//     waits for the confirm and acks the original: the delivery budget holds
//     on both.
//   - Release (consumer.Releaser), which the runtime uses for a delivery no
//     handler saw (it arrived as intake stopped), sends basic.nack with
//     requeue: a classic queue puts the message back at its place (RabbitMQ
//     3.10 puts a message returned to a quorum queue at the back), and its
//     next delivery carries the same Attempt. Receive itself releases a
//     delivery it took after its context ended or after Pause began.
//   - RequeueAfter (consumer.DelayedRequeuer) publishes a copy to the retry
//     queue with a per-message TTL; when it expires the broker dead-letters
//     the copy back to the queue. The consumer slot is free meanwhile.
//   - DeadLetter publishes a copy to the dead-letter exchange with the
//     consumer.Reason headers (x-queuekit-error, -attempts, -source…) and the
//     original headers, waits for the confirm, and only then acks the
//     original.
//
// Every copy is confirmed before the original is acked, so no path loses a
// message (except a delayed retry into a full length-limited queue, see
// Topology). When a dead-letter or delayed-retry publish fails, the settlement
// returns the error and the delivery stays unsettled: the runtime tries
// again with backoff, and a delivery it gives up on stays with the broker,
// which redelivers it when the channel closes. A classic-queue Requeue whose
// copy cannot be published (the broker unreachable) does the same. One whose
// copy the broker refuses (ErrNacked: a full queue with x-overflow
// reject-publish) nacks the original with requeue instead, which keeps its
// place and evicts nothing, and counts that delivery in the source's memory
// of given-back messages (below), so the budget holds and the worker is free
// (an uncounted nack used to retry such a message forever; retrying the
// publish held the worker for as long as the queue stayed full). Whether the
// broker counts deliveries is decided per delivery: a redelivered message
// without x-delivery-count is counted by republishing, whatever
// Topology.QueueType says. A dead letter does not carry HeaderDeliveries, so
// one moved back to the work queue starts a fresh budget.
//
// The broker marks a released message redelivered (and a quorum queue
// counts it in x-delivery-count). The source remembers, in memory, the
// Attempt of each message it released (and one more for a refused
// classic-queue Requeue), known by its message-id and a hash of its body,
// and gives it to the message's next delivery to this source, so
// Pause/Resume cycles neither reorder a classic queue nor spend attempts.
// The memory is bounded (64 × Prefetch entries, at least 4,096; the oldest
// goes first) and per Source: a released message that another consumer
// takes, that comes back after a restart, or whose entry went before it came
// back (a quorum queue returns it behind everything else) counts the
// redelivery as one attempt. On a quorum queue the release stays in
// x-delivery-count, so deliveries after the next one count it: an attempt
// spent early, never an unbounded budget.
//
// In Passive mode the dead-letter exchange is checked but not that a queue
// is bound to it: an unroutable dead letter is returned by the broker, and
// the runtime retries the settlement (holding that worker) until the
// binding exists. Bind the dead-letter queue before consuming.
// Message.Attempt is computed from what the broker and the copies carry:
// HeaderDeliveries (or else the x-death counts) for the deliveries before
// the last copy, plus x-delivery-count on quorum queues (or 1 when a classic
// queue says "redelivered", unless the source released the message itself,
// see above). It therefore survives consumer restarts; on a classic queue a
// redelivery after a connection loss counts once however many it was, which
// is why Quorum is recommended.
//
// Deliveries are fenced: each holds the channel it came on, and is settled
// only there. After that channel closed (a reconnect happened), Ack, Requeue
// and DeadLetter return an error wrapping consumer.ErrStaleDelivery and send
// nothing: delivery tags are per channel, and the broker has already
// requeued the message. So no acknowledgement ever reaches a channel it does
// not belong to (which the broker would punish with PRECONDITION_FAILED
// "unknown delivery tag", closing the channel). Duplicates after a
// connection loss are bounded by the prefetch.
//
// # Concurrency
//
// Source, Publisher and Connection are safe for concurrent use. The runtime
// calls Receive from all its workers at once; they read the subscription's
// delivery channel directly, without a lock. The session loop owns the
// channel's NotifyClose and NotifyCancel listeners and reads them until the
// channel is replaced; a Publisher's channel has one goroutine that reads its
// confirms and returns together (which is what lets it tie a basic.return to
// its publish), so no notification channel is ever left unread and the
// client can never block on one. The event hook is called from a goroutine
// of the source, in order; a hook more than 64 events behind misses events
// instead of delaying reconnection.
//
// # Errors
//
// Errors that restarting cannot fix are returned by Receive wrapped with
// consumer.Fatal, so that a Supervisor stops instead of looping:
// ACCESS_REFUSED (bad credentials, no access to the vhost),
// PRECONDITION_FAILED (Strict declaration against an existing object that
// differs) and NOT_FOUND in Passive mode. Everything else is retried.
//
// Publish returns nil only when the broker confirmed the message; an error
// wrapping ErrNacked when it refused it; a *ReturnError (ErrReturned) when a
// mandatory message could not be routed; an error wrapping the *amqp.Error
// when the broker closed the channel (404 for a missing exchange); and ctx's
// error when the deadline passes first.
//
// URLs are redacted (the password replaced by "xxxxx") in every error and log
// line of this package.
package rabbitmq
