// Package franz is queuekit's second Kafka adapter, on franz-go's
// kgo.Client (github.com/twmb/franz-go). It has the shape and the
// guarantees of the kafka-go adapter (package kafka): a Source that
// consumes one topic as a member of a consumer group, a Publisher, and the
// dead-letter operations (DeadLetters). A program switches between the two
// by changing its constructor call; both write the same formats (message
// IDs, dead-letter headers, retry-topic names), so they interoperate on one
// cluster and on one consumer group — provided the group's members share a
// balancer: kafka-go's members offer range and round-robin, and this
// adapter's default is cooperative-sticky alone, so a franz member joining a
// group that still has kafka-go members is refused
// (INCONSISTENT_GROUP_PROTOCOL, which Status explains) until
// Config.Balancers also has kgo.RangeBalancer(). See "Switching from the
// kafka-go adapter" for the rolling switch of a running group.
//
// Why a second adapter: kgo owns fetching, batching and the group protocol
// with far less CPU per record than kafka-go, and offers the cooperative
// (incremental) rebalancing that kafka-go lacks.
//
// # Lifecycle
//
// NewSource validates its Config (an error wrapping broker.ErrInvalidConfig)
// and does not connect. The first Receive (or ReceiveBatch) makes the
// group's kgo.Client, which joins the group and fetches; Close leaves it.
// A Source is used by the consumer runtime (consumer.New) like any
// broker.Source:
//
//	src, err := franz.NewSource(franz.Config{
//		Brokers: []string{"localhost:9092"}, GroupID: "billing", Topic: "orders",
//	})
//	...
//	c, err := consumer.New(src, handler, consumer.WithConcurrency(16))
//	...
//	err = c.Run(ctx)
//
// Close stops intake, fences what is still handed out, commits what was
// handled, leaves the group and waits for every goroutine of the Source,
// bounded by its ctx: when the ctx ends first, it gives up the commit and
// the leave and returns an error wrapping the ctx's. Nothing is lost that
// way; what was not committed is handled again by the partitions' next
// owner.
//
// # Acknowledgement
//
// Kafka keeps one offset per partition, not an acknowledgement per
// message. A delivery's Ack marks its record handled; the Source commits,
// per partition, the offset after the longest handled prefix (records
// handled out of order behind an unfinished one wait for it), every
// Config.CommitInterval or once Config.CommitBatch records were settled,
// and a last time before a partition is given up (a rebalance, Close). A
// crash loses no record: what was not committed is delivered again, so
// handlers must be idempotent (at-least-once).
//
// Kafka has no per-message nack: Requeue hands the record out again in
// this process, before anything after it in its lane, with Attempt + 1;
// RequeueAfter does the same after a delay, holding the record's lane (its
// partition with ByPartition, its key with ByKey) meanwhile — unless
// Config.RetryTopics is set (see Retry topics). Release gives
// back a record no handler saw, with the same Attempt. DeadLetter writes
// the record to Config.DeadLetterTopic (acknowledged by all in-sync
// replicas) with the reason (broker.Reason.Header) and its origin
// (HeaderTopic, HeaderPartition, HeaderOffset) in its headers, and only
// then marks it handled; a failed write returns an error and commits
// nothing.
//
// # Retry topics
//
// Config.RetryTopics turns on non-blocking retries with a delay, with the
// design, topic names, consumer groups and headers of the kafka adapter:
// its package documentation ("Retry topics" and "Attempts" in package
// github.com/queuekit/queuekit/broker/kafka) has the full rules, which
// hold here as they are. Members of both adapters can share a group and
// its retry topics (each tier group uses Config.Balancers, like the main
// group: a group mixing the adapters needs a balancer both support, such
// as kgo.RangeBalancer()). In short:
//
//   - RequeueAfter(delay) writes the record — key, value, its own headers
//     — to the tier topic RetryTopicName(Topic, GroupID, tier) of the
//     shortest tier at least as long as delay (the longest tier for a
//     longer delay), with HeaderAttempt (its next attempt), HeaderDue (the
//     failure's time plus delay, Unix milliseconds rounded up),
//     HeaderTopic, HeaderPartition and HeaderOffset (where it was first
//     consumed from, kept across retries), HeaderGroup and HeaderTime (the
//     original timestamp; the copy itself has the time of the write). The
//     write waits for all in-sync replicas; only then is the record marked
//     handled, so its partition moves on, by the gap-safe commit rules. A
//     failed write falls back to the in-process retry above (the record
//     holds its lane for the delay; the failure is logged): nothing is
//     lost. A deleted tier topic fails the write after a few metadata
//     answers (about a second at most on kfake), as a Publish to a missing
//     topic does. The write is bounded by RequeueAfter's ctx (and by Close's):
//     when ctx ends before the acknowledgement (a broker that stopped
//     answering), RequeueAfter falls back to the in-process retry too and
//     commits nothing past the record, and as kgo keeps a record it has
//     taken, the copy may still reach the tier topic later: the record may
//     then be delivered twice (at-least-once), never lost.
//   - The Source consumes each tier topic in a consumer group of its own,
//     GroupID + ".retry." + the tier (a kgo.Client per tier, with the
//     Config's balancers), and hands a retry record out through the same
//     Receive (and ReceiveBatch, in a batch of its own) before the main
//     topic's records, once HeaderDue has passed and never earlier, as
//     the original record: Message.Topic the original topic, Message.ID
//     the original "topic/partition/offset", Message.Time the original
//     timestamp, Message.Attempt from HeaderAttempt (so the runtime's
//     budget counts across restarts and members, and dead-letters the
//     record once spent, with the original coordinates). A record not
//     yet due is held by a timer at the head of its tier partition; one
//     due more than a tier length after its write (a delay longer than
//     the longest tier) is held only until its write time plus the tier's
//     length and then written again to the tail of its tier, so a tier
//     partition is never held longer than a tier length by one record.
//   - A record that went to a retry topic leaves its key's order; use no
//     RetryTopics when order matters more than throughput.
//   - DeclareTopology creates the tier topics; Pause and Resume pause the
//     tier consumers too; Close closes them, bounded by the same ctx.
//     Status reports a tier whose group is not joined (a missing tier
//     topic, a group the coordinator refuses; the refusals also emit
//     broker.EventReconnecting naming the tier group), and, looked for
//     once at the first Receive, retry topics of the group that
//     Config.RetryTopics no longer has but which still hold records.
//     Lag and Backlog report the main topic only.
//
// # Ordering and concurrency
//
// With ByPartition (the default) the records of a partition are handled
// one at a time, in offset order; with ByKey, records with the same key are
// handled in order and different keys of a partition concurrently.
// Config.MaxInFlight bounds, per partition, the records queued and not yet
// settled; records polled beyond it wait in the partition's backlog, and a
// partition whose backlog does not drain (a slow lane) stops being fetched
// (kgo's PauseFetchPartitions) until it does, while the others go on. The
// Source and its deliveries are safe for concurrent use; the runtime calls
// Receive from every worker at once. ReceiveBatch (broker.BatchReceiver)
// hands out runs of a lane, for consumer.NewBatch.
//
// # Rebalances
//
// The default balancer is kgo's cooperative-sticky one: a rebalance takes
// away only the partitions that move, and the others keep flowing while a
// member joins or leaves. A partition taken away is drained: nothing more
// of it is handed out, the Source waits up to Config.RebalanceDrainTimeout
// for the deliveries of it still out, commits its handled prefix, and
// only then lets kgo give it up. A delivery still out after that is
// fenced: its Ack, Requeue and DeadLetter return an error wrapping
// broker.ErrStaleDelivery and do nothing (the record is not committed, and
// the partition's next owner handles it), and its Lease context is
// cancelled, so the runtime cancels its handler with cause
// broker.ErrStaleDelivery. Partitions lost (the member was fenced by the
// coordinator: session expired) are fenced at once, without a commit. The
// Source emits broker.EventRebalanced (ErrRebalance) when partitions were
// taken away or, after its first assignment, given to it, and
// broker.EventReconnecting (ErrPartitionsLost) when they were lost.
// broker.EventConnected comes once, at the first assignment (and again
// after partitions were lost): a member stays connected through a
// rebalance, unlike the kafka-go adapter's, which ends its generation at
// every rebalance and connects again — a program that waits for its
// members to join should count a member that rebalanced as joined. An
// eager balancer (Config.Balancers) drains every partition at every
// rebalance instead.
//
// # Switching from the kafka-go adapter
//
// A group consumed by kafka-go members (package kafka) is switched to this
// adapter with two rolling deploys, as Kafka's KIP-429 upgrade path to
// cooperative rebalancing:
//
//  1. Deploy the franz members with
//     Balancers: []kgo.GroupBalancer{kgo.CooperativeStickyBalancer(), kgo.RangeBalancer()}.
//     The coordinator picks the first balancer every member supports: while
//     any kafka-go member is in the group, that is range, and the whole group
//     runs eager range rebalances (kgo follows the balancer the coordinator
//     chose: a franz member then revokes all its partitions at every
//     rebalance, as the kafka-go members do). Once the last kafka-go member
//     has left, the next rebalance picks cooperative-sticky, and the group
//     is cooperative.
//  2. Once no kafka-go member is left, deploy again with the default
//     Balancers (cooperative-sticky alone), so that a kafka-go member
//     started by mistake is refused rather than turning the group back to
//     eager rebalances.
//
// The offsets, dead letters and retry topics carry over (the same formats);
// a record handled but not committed when its partition moved is handled
// again (at-least-once), as in any rebalance. Without step 1 (the default
// Balancers from the start), the franz members stay unjoined
// (Status: INCONSISTENT_GROUP_PROTOCOL) until every kafka-go member is
// gone: nothing is lost, but the group runs on the old members alone. The
// tier groups of RetryTopics use Config.Balancers too, so the same holds
// for them.
//
// Known defect: while both kinds of members share the group, a kafka-go
// member that takes partitions from a franz member can be handed a few
// records the franz member had already acknowledged (duplicates, never a
// loss); bench's TestKafkaAdaptersInterop reproduces it with
// QUEUEKIT_KAFKA_INTEROP_STRICT=1. Where duplicates matter more than a
// pause, stop every kafka-go member before starting the franz ones: a group
// handed over that way handles nothing twice.
//
// # Transactions
//
// Config.Isolation is ReadCommitted by default: records of aborted
// transactions are never handed out, records of open ones not until they
// commit. Transaction markers (control records) are never handed out; the
// Source commits past them, so the group's lag reaches 0 on a
// transactional topic. ReadUncommitted hands out the data records of
// aborted transactions too.
//
// Lag and Backlog count from the partitions' end offsets (high
// watermarks), not their last stable offsets: with ReadCommitted, the
// records of a transaction still open, and every record written behind
// it, are counted although none of them can be handed out until the
// transaction ends (nothing reports the partition as held at its last
// stable offset).
//
// # Pause
//
// Pause (broker.Pauser) stops fetching the topic (kgo's PauseFetchTopics)
// and handing out records, and keeps the membership: heartbeats go on, no
// rebalance happens. Resume starts again where it stopped.
//
// # Errors
//
// Settling a delivery twice returns broker.ErrAlreadySettled; settling a
// fenced one (every time, while it was never settled), an error wrapping
// broker.ErrStaleDelivery. Receive after Close returns
// broker.ErrSourceClosed; Receive with a ctx already done returns ctx's
// error. Fetch errors kgo reports (a missing topic, an authorization
// failure), group errors and failed dials are logged (fetch errors at most
// once a second) and shown by Status (Connected false) while current; kgo
// retries them. A topic deleted and recreated while a Source consumes it
// fails its fetches (UNKNOWN_TOPIC_ID: kgo keeps the old topic ID) until
// the Source is closed and made again. Config.Logger receives the
// Source's lifecycle logs and kgo's warnings and errors; no log line or
// error carries credentials (broker addresses are validated as host:port
// and never echoed when refused).
//
// # Operations
//
// Status (broker.StatusReporter) says whether the Source is a member with
// partitions; Lag and Backlog (broker.BacklogReporter) read the group's
// committed offsets and the partitions' end offsets from the cluster (kadm);
// DeclareTopology (broker.TopologyDeclarer) creates the topic, its
// dead-letter topic and its retry topics. DeadLetters lists, redrives and purges the dead
// letters (see DeadLetters).
//
// # Testing
//
// The package's tests run against the Kafka protocol served in process by
// kfake (github.com/twmb/franz-go/pkg/kfake), including the public
// conformance suite (broker/brokertest); the runnable examples do too.
package franz
