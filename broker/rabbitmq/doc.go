// Package rabbitmq is the RabbitMQ adapter of queuekit, on
// github.com/rabbitmq/amqp091-go. A Source consumes a queue for a
// consumer.Consumer and keeps itself subscribed through connection losses,
// broker restarts and queue deletions; a Publisher publishes broker.Messages
// and returns only once the broker has confirmed them. Both implement the
// interfaces of package broker, so code written against broker.Publisher and
// consumer.Consumer changes only its constructors when it moves to another
// broker.
//
// Example (in this package's documentation) shows a consumer under a
// Supervisor and a publisher feeding it; it needs a broker, so go test
// compiles it but does not run it.
//
// # Connecting
//
// A Dialer says how to reach the broker: an amqp:// or amqps:// URL (its
// vhost in the path), or the URLs of a cluster's nodes (see Clusters), TLS settings, the heartbeat, and optionally a dial
// function of your own. Each Source and Publisher opens a connection of its
// own, unless given a Connection to share (each then has its own channel on
// it). NewSource and NewPublisher connect nothing: they validate their
// configuration and return an error wrapping broker.ErrInvalidConfig when it
// is wrong.
//
// # Clusters
//
// Dialer.URLs lists the nodes of a RabbitMQ cluster (Dialer.URL is the
// one-node case; setting both is an error, and the constructors validate
// every URL). Each connection — that of a Source, of a Publisher, or a
// shared Connection — tries the nodes in an order of its own, shuffled once,
// so that clients spread over the cluster, and stays on the first that
// answers. When its connection is lost it redials from the node after the
// one it had, so it moves to a live node at once; when no node answers, the
// error names each node tried (passwords redacted) and the Source or
// Publisher retries with its usual backoff (ReconnectMin, ReconnectMax).
// A Source then makes sure of its topology and subscribes again on the new
// node. Use quorum queues (Topology.QueueType Quorum) for a queue that must
// survive the loss of a node: a quorum queue elects a new leader among the
// remaining nodes, and consuming goes on. A classic queue lives on one
// node and is unavailable while that node is down; so is the retry queue
// (always classic), which a Source does not wait for: it subscribes to its
// queue, and RequeueAfter fails (the message is given back or retried as
// for any failed settlement) until the retry queue's node is back.
//
// When a node is lost, the deliveries a Source had not acknowledged on it
// are delivered again, through the new connection: handlers may see up to
// Config.Prefetch messages again per failover (at-least-once). A Publish
// whose message was written to the lost node but not yet confirmed returns
// an error saying the message may or may not have arrived, naming the node;
// publishing it again is at-least-once. A Publish never returns nil for a
// message the broker did not confirm.
//
// # Lifecycle
//
// A Source connects on its first Receive. From then on it keeps one channel
// subscribed to its queue, with basic.qos set to Config.Prefetch. When the
// channel or the connection closes, or the broker cancels the subscription
// (the queue was deleted), it reconnects with a jittered exponential backoff
// between Config.ReconnectMin and ReconnectMax, makes sure of its topology
// again and resubscribes; Receive blocks meanwhile. Status
// (broker.StatusReporter) and the event hook (broker.EventSource:
// EventConnected, EventReconnecting, EventCancelled) make this visible to
// Supervisor.Health and to operators.
//
// Pause (broker.Pauser) stops the deliveries: the source cancels its
// subscription, and what the client had prefetched goes back to its place in
// the queue without counting as an attempt. Resume subscribes again. Pause
// returns once the prefetched deliveries are back, or when its context ends;
// the give-back then finishes in the background (after 10 s the source closes
// its channel, which gives back everything at once), so even a Pause with a
// context that is already done strands nothing.
//
// Close stops the source: its channel closes, and the broker requeues what
// was prefetched and not settled. Close is bounded by its context, like
// net/http's Server.Shutdown: when the context ends before the broker has
// answered (a broker that stopped answering, a network that drops
// everything), Close closes the network connection without the AMQP close
// handshake and returns an error wrapping the context's error. Nothing is
// lost: the broker requeues the unsettled deliveries as soon as it sees the
// connection go, or after its heartbeat timeout when the network is what
// hangs. So a consumer.Consumer on this source shuts down within the
// deadline of the context given to Shutdown plus the consumer's short grace
// (see Consumer.Shutdown), however the broker behaves. A source on a shared
// Connection cannot close the connection: its Close returns at the context's
// end too, but its channel closes in the background, until the Connection's
// own Close(ctx), which can close the network connection, or the heartbeat
// timeout ends it. Close the Connection last, with a context of its own.
//
// A Publisher opens its channel on its first Publish and again whenever it
// was lost, retrying with backoff inside the deadline of the Publish that
// needs it. Its Close waits for the publishes in progress, bounded by its
// context in the same way.
//
// # Publishing
//
// Publisher.Publish(ctx, exchange, msgs...) implements broker.Publisher.
// Each broker.Message becomes an AMQP message: Key is the routing key, Body
// the body, ID the message-id (a random one when empty), Time the timestamp
// (whole seconds), and Header the AMQP headers, except "content-type"
// (broker.HeaderContentType, that exact lower-case key), which is the
// content-type property; any other spelling ("Content-Type") is a plain
// header. A Source gives the property back as that header, so
// broker.PublishJSON and broker.NewJSON messages arrive with their content
// type. The headers PublisherConfig.Inject returns are taken the same way.
// The adapter's own headers (x-queuekit-publish-seq, x-queuekit-routing-key)
// are never taken from a message or from Inject. The default exchange ""
// routes each message to the queue named by its Key.
//
// What RabbitMQ would answer by closing the whole connection — that of
// every Source and Publisher sharing it — is refused before anything is
// sent, with an error wrapping broker.ErrInvalidConfig: an exchange name,
// routing key, header name or string property over 255 bytes, a header
// value of a type AMQP has not, and properties and headers that do not fit
// in one frame of the size the broker negotiated (frame_max, 131072 bytes
// by default; that error wraps ErrMessageTooLarge too), less a reserve of
// 4 KiB (a quarter of a frame under 16 KiB) for the headers added after
// the publish: by the broker (x-death, x-first-death-*, x-last-death-*,
// x-delivery-count) and by a Source (x-queuekit-deliveries,
// x-queuekit-routing-key), without which a message accepted at the limit
// could not be read back after a retry. The body has no such limit: it is
// split over as many frames as it needs.
//
// What a consumer could not read back is refused the same way: amqp091
// reads no field table or array of more than 8192 elements, nor nested
// deeper than 32, so a header value nested deeper, a nested table or array
// of more elements, or more than 8128 headers (the rest is left for the
// headers the broker and the adapter add) is refused, wrapping
// ErrMessageTooLarge when there are too many headers. A Source cannot
// defend against such a message sent by another producer: amqp091 closes
// the connection (502 SYNTAX_ERROR) before the adapter sees the delivery,
// the broker delivers it again on the next connection, and the queue is
// stuck behind it until an operator removes it (the management UI's "Get
// messages" with "Reject requeue false", or a policy with a dead-letter
// exchange and a delivery limit on a quorum queue).
//
// Messages are persistent and published mandatory by default: a message
// that no queue takes comes back from the broker, and Publish fails with
// ErrReturned instead of losing it silently (PublisherConfig.Transient and
// AllowUnroutable change that). The messages of one Publish are written one
// after another and their confirms awaited together, so a batch costs about
// one round trip. PublishRaw publishes an amqp.Publishing, for the
// properties a broker.Message has no field for (priority, expiration,
// reply-to…).
//
// # Topology
//
// Before it subscribes, and again after every reconnect, a Source makes sure
// that its queue (classic or quorum, with Topology.QueueArgs), the exchanges
// and bindings of its Topology, a dead-letter exchange "<queue>.dlx" with a
// queue "<queue>.dlq" bound to it by the queue's name, and a retry queue
// "<queue>.retry" exist. By default it checks each with a passive declaration
// and declares only what is missing. Topology.Strict declares everything on
// every connect, which detects an existing queue whose arguments differ
// (PRECONDITION_FAILED, a fatal error); Topology.Passive declares nothing,
// for infrastructure provisioned elsewhere, and fails when the queue, the
// dead-letter exchange or the retry queue is missing. It cannot check that
// the dead-letter queue is bound to the dead-letter exchange with the
// queue's name as the routing key: bind it before consuming, or dead letters
// come back unroutable and their settlement is retried (holding a worker)
// until the binding exists.
//
// A program that publishes to a queue before any consumer of it has
// connected (an API whose workers run elsewhere) would see its mandatory
// publishes returned as unroutable: it calls DeclareTopology first, with the
// consumers' Topology. A program with a Source calls Source.DeclareTopology
// (broker.TopologyDeclarer), which declares the source's own Topology.
//
// A classic queue that drops messages at its head when full (x-max-length or
// x-max-length-bytes in QueueArgs, with x-overflow "drop-head", RabbitMQ's
// default) is refused with broker.ErrInvalidConfig: on a full queue every way
// of giving a message back would make the broker drop one silently. Use
// x-overflow "reject-publish" (or "reject-publish-dlx"), or a quorum queue. A
// limit set by a policy, or on a queue declared elsewhere, cannot be seen
// over AMQP 0-9-1: state it in QueueArgs so that the source checks it. Even
// so, a delayed retry into a full length-limited queue is lost or evicts
// another message (the broker moves it back by dead-lettering, which it does
// not confirm): do not return retry.After errors from the handlers of a
// length-limited queue.
//
// Source.Backlog (broker.BacklogReporter) reports the messages ready in the
// queue and the consumers subscribed to it; the consumer's Backlog caches it
// for health checks and metrics.
//
// # Acknowledgement
//
// Deliveries use manual acknowledgements, and the consumer runtime settles
// each one:
//
//   - Ack acknowledges on the channel the delivery came on, coalesced (see
//     below).
//   - Requeue, on a quorum queue, sends basic.nack with requeue; the broker
//     counts the delivery in x-delivery-count. A classic queue counts
//     nothing, so there Requeue publishes a copy to the back of the queue
//     carrying HeaderDeliveries, waits for its confirm, and acks the
//     original: the delivery budget holds on both. When the broker refuses
//     the copy (a full reject-publish queue), Requeue nacks the original
//     with requeue instead, and the source counts that delivery itself.
//   - Release (broker.Releaser), for a delivery no handler saw (it arrived
//     as intake stopped), sends basic.nack with requeue: the message goes
//     back to its place in a classic queue (to the back of a quorum queue),
//     and its next delivery carries the same Attempt; later ones do not
//     count the release either (see Attempts).
//   - RequeueAfter (broker.DelayedRequeuer) publishes a copy to the retry
//     queue with a per-message TTL; when it expires the broker moves the
//     copy back to the queue. The consumer slot is free meanwhile. RabbitMQ
//     expires messages only at the head of a queue, so a short delay may
//     wait behind a longer one.
//   - DeadLetter publishes a copy to the dead-letter exchange with the
//     broker.Reason headers (x-queuekit-error, -attempts, -source…) and the
//     original headers, waits for its confirm, and then acks the original.
//     A dead letter is always publishable: when its headers would not fit
//     in a frame, the error text is cut, then the message's own largest
//     headers are left out, and HeaderTrimmed lists what was cut. The copy
//     keeps the original routing key in x-queuekit-routing-key (it is routed
//     by the queue name, and a Source reading the dead-letter queue, or a
//     redrive, gives the producer's key back as Message.Key); it carries no
//     other header of the adapter's.
//
// Every settlement is bounded by its context. amqp091 writes with no
// deadline: on a socket that takes no more bytes (TCP backpressure, a broker
// that stopped reading) a basic.ack, and every other write behind it, would
// wait for the heartbeat timeout or for ever. When the context ends with a
// settlement's write still blocked, the source closes the connection's
// socket (the broker requeues every unacknowledged delivery on it, and the
// source reconnects) and the settlement returns an error wrapping the
// context's error (and broker.ErrStaleDelivery for an ack or nack). So
// Consumer.Shutdown and Close keep their bounds on such a connection too.
//
// Acks are coalesced (Config.AckBatch, default 16; 1 turns it off, and so
// does a prefetch below 8). Rather than a basic.ack per message, the source
// sends one basic.ack with multiple=true for the longest run of the
// channel's deliveries, in delivery order, that are all settled: when that
// run holds Config.AckBatch acks (at most a quarter of the prefetch), or
// Config.AckDelay after an ack (default 2ms), whichever comes first, and
// before any nack on the channel. A multiple ack acknowledges every earlier
// delivery of the channel, so the run stops at the first delivery whose
// handler has not finished or failed: that one is never covered, and its
// requeue or dead letter goes as it would without coalescing. Acks that wait
// behind a slow handler go out one by one after one AckDelay, or when
// AckBatch of them wait, so that a stuck handler holds only its own
// prefetch slot. Pause, and the end of the channel (Close, a reconnect),
// send what waits first. Acks never cross channels: an ack made after its
// channel closed fails with broker.ErrStaleDelivery, as before.
//
// A waiting ack holds a prefetch slot, so coalescing never lets a worker
// wait for the credit it holds: when the deliveries the workers hold, acked
// or not, plus the Receives that found nothing buffered use up the prefetch
// (with the prefetch equal to the concurrency, whenever an ack waits),
// every waiting ack goes out at once. With the
// prefetch well above the concurrency the acks go in batches, and the
// broker, which at high rates is the bottleneck, does about a quarter less
// work per message.
//
// So an Ack that returned nil has been queued, not necessarily written. If
// the connection is lost or the process ends without Close in between, the
// broker delivers those messages again, as it does with every message not
// yet acknowledged: at-least-once holds, and duplicates stay bounded by the
// prefetch.
//
// Every copy is confirmed before the original is acknowledged, so no
// settlement loses a message; when a copy cannot be published, the
// settlement fails and the runtime tries again, and a delivery it gives up on
// stays with the broker, which delivers it again. Deliveries are fenced:
// each is settled only on the channel it came on, and once that channel is
// gone (a reconnect happened) its settlements return an error wrapping
// broker.ErrStaleDelivery and send nothing, since the broker has requeued the
// message already. Duplicates after a connection loss are bounded by the
// prefetch.
//
// # Attempts
//
// Message.Attempt counts the deliveries of a message. It comes from what the
// broker keeps: x-delivery-count on quorum queues, the x-death counts of
// messages the broker dead-lettered, and HeaderDeliveries on the copies this
// package publishes; so it survives consumer restarts. A classic queue says
// only "redelivered" after a connection loss, which counts as one delivery
// however many there were: use quorum queues where the delivery budget must
// be exact.
//
// A message the source gives back unhandled (Pause, Release) comes back
// marked redelivered, and a quorum queue counts the give-back in
// x-delivery-count. The source remembers, in memory and per Source, each
// message it gave back (by message-id and a hash of the body, at most 64 ×
// Prefetch of them, at least 4,096, the least recently used going first):
// its next delivery carries the Attempt it had, and every later one the
// broker's count less the give-backs the broker counted, until the source
// acks it, dead-letters it or requeues it as a copy. So Pause/Resume and
// Release spend no attempt, now or later: on a quorum queue, release,
// release, Requeue, Requeue gives Attempts 1, 1, 1, 2, 3. A message that
// another consumer takes, or that comes back after a restart or after its
// entry aged out, counts the give-backs the broker counted as attempts: a
// budget spent early, never one that grows without bound.
//
// On a quorum queue, RabbitMQ itself returns, and counts, the deliveries
// that reach the channel after basic.cancel (rabbitmq-server#3729): the
// source never sees them. So a Pause there holds the channel's acks and
// nacks from the moment it stops intake, waits until no delivery has come
// for 50 ms (the broker, with nothing settled, then has none left to send;
// at most 1 s), cancels, and only then writes what it held and gives back
// what it took. A Pause of a quorum-queue subscription thus takes 50 ms or
// more; a message published as the queue could not fill the prefetch can
// still cross the cancel and come back with one attempt spent.
//
// # Dead letters
//
// Source.DeadLetters (broker.DeadLetterSource), or NewDeadLetters for a
// program without a Source (a command-line tool), gives the dead letters of
// a queue: its dead-letter queue, to List, Count, Redrive and Purge (see
// broker.DeadLetters).
//
// Each dead letter a Source writes carries a random id in
// x-queuekit-dead-letter-id (HeaderDeadLetterID): DeadLetter.ID. A dead
// letter written by someone else is named "m-" and its message-id, or, with
// none, "h-" and a hash of its body and headers, so dead letters alike
// share an id (Redrive and Purge by that id handle all of them). One that
// RabbitMQ dead-lettered itself (rejected, expired, over a limit) has its
// Reason read from its newest x-death entry: Source is the queue it died
// in, Err "dead-lettered by RabbitMQ: <reason>"; HasReason is true. Without
// reason headers or x-death, HasReason is false.
//
// AMQP 0-9-1 has no way to read a queue without taking its messages, so a
// browse takes them (basic.get, manual acknowledgements: one pass over the
// dead-letter queue on a channel of its own, up to the number of messages
// the queue held when it began, always to that end) and then leaves them as
// they were, in one of two ways.
//
// On a classic queue it gives them back: the pass closes its channel, and
// the broker requeues what it held at the messages' old places, so count
// and order are as before (a basic.nack with multiple set does the same,
// but RabbitMQ 3.10 took 111 s to requeue 10,000 messages that way, against
// 0.25 s for the close); the operation then waits until the queue counts
// them ready again.
//
// A quorum queue counts every message given back as a delivery
// (x-delivery-count), and past its delivery limit (a policy; RabbitMQ 4
// sets 20 by default) drops or dead-letters it: browses would empty the
// dead-letter queue. So there a pass never gives a message back: it
// rotates it, a copy (the same properties, headers, body and
// x-queuekit-dead-letter-id, without x-delivery-count) published, mandatory
// and confirmed, to the tail of the dead-letter queue (default exchange),
// and the original acknowledged only once the broker confirmed the copy.
// A pass over the whole queue keeps its order; dead letters that arrive
// during a pass interleave with the rotated ones. A pass whose context ends
// early returns at once, but finishes rotating in the background, holding
// the lock (below), so that the order is kept; only Close, a lost
// connection, or a broker silent for 2 s past the deadline cuts it short,
// which changes the order (the part already rotated is at the tail, and
// the up to 17 dead letters the pass held come back after it, each counted
// as one delivery). That loses nothing unless the queue has a low
// delivery limit: a quorum queue counts each basic.get as a delivery, so
// the dead letters a lost connection gives back are dropped (or
// dead-lettered) by the broker once past the limit, as would happen to any
// consumer of such a queue; with x-delivery-limit 0 every dead letter the
// pass held is lost. Give dead-letter queues no delivery limit (RabbitMQ
// 4: x-delivery-limit -1). Rotation also resets each dead letter's
// x-message-ttl: a rotated copy is a new message, so a dead-letter queue
// with a TTL that is browsed more often than the TTL keeps its dead
// letters. After a lost connection the operation waits (in the background
// once its context has ended, holding the lock) until the queue counts the
// dead letters given back, or the count has not moved for 2 s (the broker
// dropped some), at most a minute. Copies are in flight 16 at a
// time: RabbitMQ 3.10 holds back a quorum queue's settlements past 32 in
// flight on a channel and drops them when the channel closes (their
// messages came back: 16 of 50 were left twice with a window of 64). A
// user-id property that is not the connection's user moves to the header
// x-queuekit-user-id (the broker refuses to publish it).
//
// Which way: DeadLetterConfig.QueueType Quorum rotates. Otherwise each
// operation asks the broker (a passive declaration does not tell the
// type): it declares the dead-letter queue with x-queue-type classic,
// durable and no other argument; the broker accepts that on a classic queue
// declared so (as Topology declares it), and refuses it on a quorum queue
// (PRECONDITION_FAILED, on a channel of its own), but also on a classic
// queue with other arguments or for a user who may not configure it. Only
// an accepted declaration gives back in place; anything else rotates, which
// is always safe, only slower. (The declaration needs the configure
// permission on the dead-letter queue to be accepted.)
//
// A crash (or a connection lost) between a rotated copy's confirm and its
// original's acknowledgement leaves that dead letter twice, with the same
// id: never lost. List shows both (the same ID twice); Count counts both;
// Purge and Redrive by id handle every copy (Done names the id once; a
// Redrive may then send the message twice, as after any crash).
//
// The cost is the queue's length, not the page's: every List reads the
// whole dead-letter queue, one round trip per message, and on a quorum
// queue publishes and confirms a copy of each. BenchmarkDeadLettersList10k,
// 10,000 small dead letters on RabbitMQ 3.10 (2 vCPU, broker and client on
// one machine, shared with other work, load average about 3): a classic
// queue, 4.1 s per listing (2,452 msgs/s) and 2.2 s of broker CPU; a
// quorum queue, rotated, 43 s (232 msgs/s) and 13 s of broker CPU, each
// copy written to the quorum log and confirmed. Keep dead-letter
// queues short: redrive or purge what you have seen. The alternatives were
// worse: the management API's "get messages" requeues the same way (and
// needs the HTTP port and its credentials); a stream would need the
// dead-letter queue to be a stream; basic.consume is faster to read (10,000
// in 1.7 s against 3.2 s) but its prefetched messages come back out of
// order when it is cancelled (of 50 on a quorum queue, 17 backwards).
//
// Count with no filter reads no message: it is the queue's ready count (a
// passive declaration), taken under the lock.
//
// Redrive publishes each selected dead letter, mandatory and persistent, to
// the default exchange with the work queue's name as the routing key (or
// RedriveOptions.Destination, also a queue name, which must exist and be
// neither the dead-letter queue, the retry queue nor the lock queue; names
// are checked, UTF-8 and at most 255 bytes, before any broker call), so it
// arrives on that queue whatever the bindings. Headers do not choose where
// it writes: a dead letter whose x-queuekit-source (or x-death) names
// another queue, or none, is skipped with broker.ErrNoSource unless a
// Destination is given; its original routing key stays in
// x-queuekit-routing-key, so Message.Key is the producer's. The copy has
// the redrive headers (broker.RedriveHeader) and none of the reason
// headers, x-death, x-delivery-count, x-queuekit-deliveries and
// x-queuekit-dead-letter-id: it starts a fresh delivery budget. Its dead
// letter is acknowledged only once the broker confirmed the copy (up to 64
// copies in flight, 16 on a queue that rotates), so a crash or a lost
// connection leaves every dead letter not yet acknowledged in the queue; a
// second Redrive may send a message twice, never lose one (the crash test:
// 1,000 dead letters, the redriving process SIGKILLed half-way). A copy the
// broker returns (the queue does not exist) is skipped with
// broker.ErrNoSource, its dead letter kept.
//
// One operation at a time, across processes: two passes at once would each
// see only what the other does not hold. Each operation first takes the
// dead-letter queue's lock: it declares the exclusive queue
// "<dead-letter queue>.queuekit-lock" on its own connection. The broker
// refuses it to any other connection (RESOURCE_LOCKED) while it exists,
// and deletes it with the connection, so a crashed process frees the lock.
// An operation that finds the lock taken tries again, backing off, until
// its context ends, then returns an error wrapping ErrDeadLettersBusy. A
// dead-letter queue with consumers is refused with that error too: a
// consumer would take dead letters in the middle of a pass. (A quorum
// queue counts a channel whose basic.get messages are still being settled
// as a consumer, for a moment after a pass: an operation waits up to 2 s
// for the count to drop to 0.) The lock needs
// the configure permission on its name.
//
// Every operation is bounded by its context: when it ends while the
// operation waits on the broker, the connection's socket is closed and the
// broker gives back everything the pass held (on a queue that rotates, only
// 2 s later, see above). A DeadLetters always uses a connection of its own
// (with the Dialer of DeadLetterConfig.Conn or Config.Conn when that is
// set), so this never touches a connection that a Source or Publisher
// shares.
//
// # Concurrency
//
// Source, Publisher and Connection are safe for concurrent use: the runtime
// calls Receive from all its workers at once, and any number of goroutines
// may Publish on one Publisher. The event hook is called from a goroutine of
// the source, one event at a time and in order, and never after Close
// returned (but see Close on a shared Connection); a hook more than 64
// events behind misses events instead of delaying reconnection.
//
// # Errors
//
// Errors that reconnecting cannot fix are marked with broker.Fatal, so that
// a Supervisor stops instead of retrying forever: ACCESS_REFUSED (wrong
// credentials, no access to the vhost), PRECONDITION_FAILED (Strict
// declaration over an existing object that differs) and NOT_FOUND in
// Passive mode. Receive returns them; everything else is retried.
//
// Publish returns nil only when the broker confirmed every message; an
// error wrapping ErrReturned (a *ReturnError, with the broker's reason) for a
// mandatory message no queue took; ErrNacked when the broker refused one;
// the *amqp.Error (wrapped) when the broker closed the channel (404 for an
// exchange that does not exist); the context's error at the deadline; an
// error wrapping broker.ErrInvalidConfig for a message it cannot send (see
// Publishing: ErrMessageTooLarge for headers over the frame size, a nil
// message, names over 255 bytes), or when PublisherConfig.Inject panicked;
// and broker.ErrPublisherClosed after Close. After an error a message may or may
// not have arrived: publishing again is at-least-once.
//
// Passwords never appear in the errors and logs of this package: URLs show
// "xxxxx" in their place. RedactURL and RedactError do the same for a
// program's own messages.
package rabbitmq
