// Package kafka is the queuekit adapter for Apache Kafka, over
// github.com/segmentio/kafka-go (imported as kafkago). A Source consumes a
// topic as a member of a consumer group and implements broker.Source; a
// Publisher writes records and implements broker.Publisher. Hand a Source to
// consumer.New, and the consumer runtime does the rest:
//
//	src, err := kafka.NewSource(kafka.Config{Brokers: brokers, GroupID: "billing", Topic: "orders"})
//	…
//	c, err := consumer.New(src, handler)
//
// # Lifecycle
//
// NewSource validates the Config and returns an error wrapping
// broker.ErrInvalidConfig instead of panicking; it does not connect. The
// first Receive joins the group. Each generation of the group (a new set of
// assignments after a member joined or left) hands the Source its
// partitions. When the generation ends, the Source drains it before it lets
// the partitions go:
//
//  1. it stops handing out records of its partitions (records fetched but
//     not handed out are dropped, uncommitted: the next owner reads them);
//  2. it waits up to Config.RebalanceDrainTimeout for the records already
//     handed out to be settled;
//  3. it fences the generation: settling a record still out returns an error
//     wrapping broker.ErrStaleDelivery and is never committed, and the
//     handler's context ends with that cause;
//  4. it commits what was handled, retrying a commit that fails for a reason
//     retrying can fix within the same budget, and only then rejoins (or
//     leaves, on Close).
//
// So a record handled before a rebalance is committed before the next owner
// reads the offsets, and is not handled twice. RebalanceDrainTimeout must be
// below the session and rebalance timeouts: a member does not heartbeat
// while it drains.
//
// Partitions added to the topic while the group runs are picked up within
// Config.PartitionWatchInterval (the generation ends, drained as above, and
// the next one assigns them). A topic that does not exist — not created yet,
// or deleted — never ends a generation: Status().Err says it is missing
// until it appears. DeclareTopology creates the topic, its dead-letter
// topic and its retry topics (see Config.Topology); the Source never
// creates topics by itself.
//
// # Shutdown
//
// Close stops intake, ends the last generation as above but without waiting
// for handlers (the consumer runtime calls Close once every delivery was
// settled or abandoned: a record still out is fenced at once), commits,
// leaves the group and waits for every goroutine of the Source. It is bounded by
// its context, like net/http's Server.Shutdown: when the context ends,
// Close skips (or stops retrying) the final commit, skips the group leave, closes the Source's connections and returns, within about 100 ms,
// an error wrapping the context's. Nothing is lost that way: what was not
// committed is delivered again to the partitions' next owner, once the
// group coordinator declared this member gone (after Config.SessionTimeout,
// since it did not leave). consumer.Consumer.Shutdown(ctx) passes its ctx
// on, so ctx alone bounds a consumer's shutdown, whatever the broker does.
// When the final commit fails for good (after its retries), Close still
// leaves the group and releases everything, and returns an error that says
// so, wrapping the commit's: what was handled since the last commit will
// be handled again. Lag, Backlog and DeclareTopology calls in progress are
// waited for (and cancelled when the context ends); after Close they
// return an error wrapping broker.ErrSourceClosed.
//
// Worst cases, for a Kubernetes grace period or a systemd TimeoutStopSec:
//
//   - Close(ctx) returns at most about 100 ms after ctx ends.
//   - With a context that never ends, Close can take the final commit's
//     retries (up to RebalanceDrainTimeout, each try up to Timeout) plus
//     the leave (a dial, up to the Dialer's Timeout, and Timeout) — and
//     while the member is joining, a pending join adds up to Timeout +
//     RebalanceTimeout. With the defaults that can pass 35 s: always give
//     Close (or Shutdown) a deadline below the grace period.
//
// Publisher.Close is bounded the same way: when its context ends, the
// writes still waiting for their acks are cut short (they may or may not
// have arrived) and Close returns an error wrapping the context's.
//
// # Acknowledgement
//
// Kafka has no per-message acknowledgement: a consumer group stores one
// offset per partition, meaning "everything before this was handled". The
// Source tracks, per partition, which fetched records were settled, and
// commits only the offset after the longest settled prefix: a record still
// running holds the commit back even if later records are done, so a crash
// never skips it (at-least-once). Commits are batched by Config.CommitBatch
// records and Config.CommitInterval.
//
// Kafka has no per-message nack either, so:
//
//   - Requeue hands the same record out again in this process, with Attempt
//     one higher, before anything after it in its lane (see Concurrency). The
//     consumer runtime's delivery budget bounds these retries.
//   - RequeueAfter (broker.DelayedRequeuer) does the same after a delay,
//     holding the lane but not a worker — unless Config.RetryTopics is
//     set: the record then goes to a retry topic and its partition moves
//     on at once (see Retry topics).
//   - Release (broker.Releaser) gives back a record no handler saw — one
//     received as the consumer paused or stopped — with the same Attempt,
//     first in line.
//   - DeadLetter writes the record to Config.DeadLetterTopic (default
//     Topic + ".dlt") with the broker.Reason headers plus HeaderTopic,
//     HeaderPartition and HeaderOffset, and marks it handled only after the
//     write succeeded. If the write fails, the delivery stays unsettled and
//     nothing is committed: the runtime tries again with backoff, without
//     running the handler again. A write that retrying cannot fix — the
//     dead letter is larger than the dead-letter topic's max.message.bytes
//     (or Config.DeadLetterMaxBytes), or the topic refuses it — returns an
//     error wrapping ErrDeadLetterUnwritable whose text names the limit or
//     setting that refused it; the record keeps its partition (skipping it
//     would lose it) until an operator fixes the cause.
//
// A partition whose log starts over — the topic was deleted and recreated,
// or the log truncated, so that the position lies past the high-water
// mark — is read again from Config.StartOffset. Records of the old log not
// yet handed out are dropped; settling one still out returns an error
// wrapping broker.ErrStaleDelivery and commits nothing, so the old log's
// offsets never hide records of the new one.
//
// # Attempts
//
// Message.Attempt is the number of the delivery. What it can count:
//
//   - Requeue, Release and RequeueAfter without retry topics count in this
//     process: Kafka keeps no delivery count, and a record handed out
//     again by another member, or after a restart or a rebalance (it was
//     not committed), starts again at 1. A record that crashes its
//     process every time is therefore never dead-lettered by the budget.
//   - With Config.RetryTopics, a record requeued with a delay carries its
//     next attempt number in HeaderAttempt: the count survives restarts
//     and moves between members, and the consumer runtime's budget
//     (consumer.WithMaxDeliveries) dead-letters it when spent. Requeues and
//     releases of a retry record count on from its header, in process.
//   - It cannot count what never reached a retry topic: a crash, a
//     rebalance fence or a lost connection before the retry write was
//     acknowledged leaves the record uncommitted where it was, and it
//     comes again with the attempt it had there (1 on the main topic,
//     its header's in a retry topic). A retry write that succeeded just
//     before the member lost its partition (the settle then returns
//     broker.ErrStaleDelivery) means the record comes twice: from the
//     partition's next owner and from the retry topic.
//
// # Retry topics
//
// Config.RetryTopics turns on non-blocking retries with a delay, as
// Spring Kafka's @RetryableTopic does. It is off by default: it needs
// topics of its own (one per tier and consumer group, Topic + ".retry." +
// GroupID + "." + the tier, e.g. "orders.retry.billing.1s" and
// "orders.retry.billing.30s"; DeclareTopology creates them)
// and the write access to them, and it gives up per-key order for the
// retried records (below), which a Source that was upgraded must not do
// behind its users' backs. Without it a delayed requeue holds its lane:
// that "blocking" mode keeps order, at the cost of everything behind the
// record waiting for its delay.
//
// With retry topics, RequeueAfter(delay) writes the record — key, value,
// its own headers — to the tier topic of the shortest tier at least as long
// as delay (the longest tier for a longer delay), with these headers:
//
//   - HeaderAttempt: the attempt number of its next delivery;
//   - HeaderDue: when it may be handed out, in Unix milliseconds (the
//     time of the failure plus delay);
//   - HeaderTopic, HeaderPartition, HeaderOffset: where it was first
//     consumed from (kept as they were when a retry record is retried);
//   - HeaderGroup: the consumer group that wrote it;
//   - HeaderTime: the original record's timestamp (Unix milliseconds).
//     The copy itself is written with the time of the failure, so that
//     the tier topic's time-based retention (retention.ms) and
//     message.timestamp.* limits count from then; the retry record is
//     handed out with the original Message.Time.
//
// The retry topics belong to the group: two groups (two applications)
// consuming the same topic each retry their own failures in their own
// retry topics, and neither handles the other's. So a GroupID used with
// RetryTopics must be valid in a topic name (NewSource refuses one that is
// not), and a tier consumer commits past a record whose HeaderGroup names
// another group without handing it out.
//
// The write waits for all in-sync replicas (acks=all); only then is the
// record marked handled, so that its offset is committed with the gap-safe
// rules above and its partition moves on. When the write fails, the record
// is retried in process instead, holding its lane for the delay, as
// without retry topics, and the failure is logged: nothing is lost. (A
// write cut short by its context may still have reached the tier topic;
// the record then comes back twice: at least once, as everywhere.)
//
// The Source consumes every tier topic, each in a consumer group of its own
// (GroupID + ".retry." + the tier, e.g. "billing.retry.30s", so that a
// member of one never makes the main topic's group rebalance; these names
// share the cluster's name space of consumer groups: give no other
// consumer one of them), and hands a
// retry record out through the same Receive once HeaderDue has passed —
// never earlier — before the main topic's ready records. It hands it out as
// the original record: Message.Topic is the original topic, Message.ID the
// original "topic/partition/offset", Message.Attempt from HeaderAttempt;
// the headers above are in Message.Header. Nothing sleeps on the main
// topic's partitions: a tier record not yet due is held by a timer, and
// while it is held the tier partition behind it waits (the tier consumer
// runs ByPartition). Since the records of a tier were written with delays
// of at most that tier, a record waits behind an earlier one by at most
// the tier's length minus its own delay; choose tiers close to the delays
// you use. A delay longer than the longest tier goes to the longest tier.
// Such a record — due later than its write time (the copy's Kafka
// timestamp) plus the tier's length — is held at the head of its tier
// partition only until its write time plus the tier's length, and then
// written again to the tail of the same tier, as it is (same attempt, due
// time and origin, with the current time; acks=all, then its offset is
// committed); the last copy, due within a tier length of its write, is
// held until due. The bound: a tier record written at w keeps its tier
// partition at most until w + the tier's length (or until it is written
// again), so a record written at r, behind any number of records written
// before it, reaches the head by r + the tier's length, and a retry with
// delay d comes back at most the tier's length minus d late, plus the
// time of the writes of the records ahead of it that are written again
// (one acks=all write each) — when the tier consumer keeps up, and with
// the members' clocks synchronized. A timestamp in the future of the
// reading member's clock counts from when the record reached the head (it
// holds the partition one tier length at most); a missing or older one
// makes it written again at once. The cost: a delay longer than the
// longest tier is written to its tier once per tier length until it is
// due within a tier length (a one-day delay in a one-minute tier: 1,440
// writes) — keep the longest tier at least as long as the delays you use.
// HeaderDue is the writer's wall-clock time: a member whose clock
// runs ahead of the writer's hands a record out early by the difference,
// so keep the members' clocks synchronized (NTP). A retry record's offset
// in its tier topic is committed by the
// same gap-safe rules once it was settled; settling it with a delay again
// writes it to a tier again, with the next attempt. Dead-lettering it
// writes the original topic, partition and offset in HeaderTopic,
// HeaderPartition and HeaderOffset (not the tier's), and the original
// timestamp, without HeaderAttempt, HeaderDue, HeaderGroup and HeaderTime.
//
// Order: a record that went to a retry topic leaves its key's order — the
// records after it in its partition (with ByKey, of its key) are handled
// before it comes back, as with Spring's retry topics; use the blocking
// mode (no RetryTopics) when order matters more than throughput. Retries
// of one key in one tier keep their order among themselves. Requeue
// without a delay and Release stay in process, in order, as above.
//
// Source.Lag and Backlog report the main topic only; the tier topics are
// in their groups' lag.
//
// Changing the tiers: a Source consumes only the tiers of its config. The
// records of a tier that is removed from Config.RetryTopics (or of every
// tier, when RetryTopics is turned off) stay in its topic, and nothing
// hands them out. To retire a tier, first stop using delays that go to it,
// keep it configured until its group's lag (GroupID + ".retry." + the
// tier) is 0, and only then remove it. At its first Receive a Source looks
// once for retry topics of its topic and group that its config does not
// have and that still hold records past their tier group's committed
// offsets; it logs a warning naming them, and Status().Err reports them
// until the Source is closed.
//
// # Concurrency
//
// A Source is safe for concurrent use; the runtime calls Receive from all its
// workers. Records are handed out by lane, and a lane never has more than one
// record out: with Ordering ByPartition (the default) a lane is a partition,
// so each partition's records are handled one at a time in offset order; with
// ByKey a lane is a key within a partition, so records with the same key keep
// their order and different keys run concurrently. Config.MaxInFlight bounds
// the records a partition holds queued and not yet settled; at the bound the
// partition is not fetched until records settle (backpressure). On top of
// that bound, a partition holds at most two fetch responses (each at most
// Config.MaxBytes, except that Kafka always returns the first record batch
// whole, however large the producer made it).
//
// # Pause
//
// Pause (broker.Pauser; consumer.Consumer.Pause calls it) stops fetching
// and handing out, and keeps the group membership: heartbeats go on, the
// partitions stay assigned, no rebalance happens — as the Java consumer's
// pause does. Records already fetched are kept, in order, and handed out
// after Resume.
//
// # Transactions
//
// Topics written by transactional (exactly-once) producers are read with
// read-committed semantics by default (Config.Isolation ReadCommitted): a
// fetch stops at the partition's last stable offset, so nothing of an open
// transaction is handed out, and the records of aborted transactions are
// skipped, as Kafka's own consumers skip them. ReadUncommitted hands out
// every data record, aborted ones included, as soon as it is written. With
// either, transaction markers (control records) are never handed out.
// Records skipped count as handled for the commit, so the committed offset
// moves past them and the lag of a fully consumed partition is 0.
//
// # Errors
//
// Settling a record of an ended generation returns an error wrapping
// broker.ErrStaleDelivery; the record goes to the partition's next owner.
// So does settling a record of a partition log that started over while it
// was out. Settling twice returns broker.ErrAlreadySettled. A dead letter
// that retrying cannot write returns an error wrapping
// ErrDeadLetterUnwritable, which Status reports until the record is
// settled; one refused by Config.DeadLetterMaxBytes (when set) wraps
// ErrDeadLetterTooLarge too. While the topic does not exist Status().Err
// says so (Connected stays true: the member is in its group). Receive
// returns broker.ErrSourceClosed after Close. Failures to join the group
// are retried; the Source reports them through Status and a
// broker.EventReconnecting event, and keeps Receive blocked meanwhile. The
// end of a generation (a rebalance) emits broker.EventRebalanced with an
// error wrapping ErrRebalance, after the drain and its commit, and
// broker.EventConnected when the next generation starts. Close ends the
// last generation without an event, and returns an error wrapping its
// context's when the context cut it short, or wrapping the final commit's
// when that commit failed.
//
// Publish returns nil once every record was acknowledged as
// PublisherConfig.RequiredAcks asks; an error (a kafkago.WriteErrors value
// says which records failed) means some may have been written. A topic that
// does not exist is not created: Publish returns an error naming it and
// wrapping kafkago.UnknownTopicOrPartition; a name Kafka refuses is
// refused before anything is sent, with an error wrapping
// kafkago.InvalidTopic (NewSource and NewPublisher refuse such names in
// their configs, and unknown compression codecs, with an error wrapping
// broker.ErrInvalidConfig). After Close, Publish returns an error wrapping
// broker.ErrPublisherClosed.
//
// # Operations
//
// Source.Backlog (broker.BacklogReporter) reports the group's lag: in total
// and per partition, the high-water mark minus the committed offset, read
// from the brokers, so it covers partitions owned by other members too.
// Source.Lag reports each partition's committed offset and high-water mark
// as well. TLS and SASL are set on Config.Dialer (kafkago.Dialer's TLS and
// SASLMechanism) and apply to every connection the Source makes.
//
// # Dead letters
//
// Source.DeadLetters (broker.DeadLetterSource), or NewDeadLetters for a
// topic without a Source, returns the dead letters of the topic: the
// records in its dead-letter topic, to list, count, redrive and purge
// (broker.DeadLetters). A dead letter's ID is "<partition>:<offset>" of the
// record in the dead-letter topic; Partition and Offset are where the
// failed record was consumed from (HeaderPartition, HeaderOffset).
//
// List and Count read the dead-letter topic by offset, with Fetch requests
// of their own and no consumer group: nothing is consumed or moved, and a
// listing is the same twice. A List cursor is opaque (it encodes the
// partition and offset to go on from).
//
// Kafka cannot delete one record, so Redrive and Purge record which dead
// letters are done (redriven or purged) next to the topic, in Kafka itself,
// where every process and every later call finds it, in the compacted topic
// DeadLetterTopic + ".queuekit-done" (one partition; created on first use):
//
//   - progress markers, keyed "progress:<partition>:<offset>": every dead
//     letter of the partition before the offset is done. A Redrive or Purge
//     that handles the oldest dead letters — All, or a filter that happens
//     to select them — only writes a new one. The progress of a partition
//     is its highest marker. Each marker has a key of its own, so a lower
//     marker written last by a slower concurrent call does not replace a
//     higher one (compaction keeps both), and a call deletes a marker
//     (a tombstone) only below a higher one it read: the progress never
//     moves back. Its value is "<redriven|purged> <time> <fingerprint>",
//     the fingerprint of the record just before the offset (see below);
//   - done markers, keyed "<partition>:<offset>", valued "redriven <time>
//     <fingerprint>" or "purged <time> <fingerprint>", for a dead letter
//     done past the progress — selected by id or by a filter, while an
//     older one stays. The fingerprint is a hash of the dead letter's
//     timestamp, key and value: a marker left from a dead-letter topic that
//     was deleted and recreated does not hide the record now at its offset,
//     and a record without one (not written by DeadLetters) hides nothing.
//     Once the progress moves past such markers, they are deleted, so the
//     topic stays as small as the set of dead letters done out of order.
//
// The consumer group DeadLetterTopic + ".queuekit" also gets the progress
// as its committed offsets (committed as a simple consumer, without
// joining: the group never has members), for the tools that show a group's
// lag; a call starts from the higher of the two. A commit is not a
// compare-and-set, so two calls at once may leave the group's offset lower
// than the markers; the markers decide.
//
// The done topic must keep its markers: its cleanup.policy must be
// "compact" alone. One created by someone else with deletion by retention
// ("delete", or "compact,delete") would lose its markers as they age, and
// the dead letters they mark would come back. So, once per DeadLetters,
// before the first read or write of a done topic it did not create, a call
// reads the topic's cleanup.policy (DescribeConfigs) and refuses with an
// error wrapping broker.ErrInvalidConfig when it is not "compact": alter
// the topic's config, or delete the topic and let the adapter create it.
// When the broker does not allow the config to be read (topic or cluster
// authorization failed), the call logs a warning to Logger and goes on.
//
// A call cut short (its context ended, the connection lost) while writing
// its markers does not know whether they reached the broker: its error
// names the dead letters whose outcome is unknown (a Purge's "may have been
// purged; list again"), and they are not in Done. A redriven dead letter
// whose markers were lost is sent again by the next Redrive.
//
// Every call reads the progress (the group's offsets and the done topic)
// before the end offsets of the dead-letter topic. Progress is only
// recorded up to an end a call read, and an end only grows, so a progress
// past the end read after it means that the log started over (the topic
// was deleted and recreated, or truncated), not that another call recorded
// progress meanwhile; such a partition is read once more before its
// progress is dropped (its markers deleted, the group's offset set back to
// the log start). A topic recreated and refilled past its old progress
// cannot be told from the old one by offsets, and kafka-go does not expose
// the topic ID of newer Metadata versions; so a progress marker also holds
// the fingerprint of the record just before its offset, and a call reads
// that record: when it is not the same one, the log started over, and the
// progress is dropped as above. (Kafka deletes a group's offsets of a
// deleted topic; the done topic is not deleted with it.) A record before
// the progress that retention already deleted cannot be checked.
//
// A Redrive handles the selected dead letters in batches of up to 256, by
// partition and offset. For each batch it first writes the copies and
// waits until the brokers acknowledged them (acks=all); only then does it
// write the markers (acks=all) and commit the offset. A crash or a
// cancelled ctx between the two leaves those dead letters in place: the
// next Redrive sends them again. So a dead letter is redriven at least
// once, sometimes twice, never lost. Two Redrives at once may both send a
// dead letter. Copies are written in requests of up to 512 KiB; a request
// the destination refuses as too large (its max.message.bytes) is split in
// halves and written again, down to a single copy, which is then skipped
// with an error wrapping kafkago.MessageSizeTooLarge: its dead letter stays.
// A request answered Not Leader For Partition is sent again a few times
// (within ctx) after kafka-go has refreshed its metadata.
//
// A copy goes to the topic these dead letters belong to (Topic of the
// DeadLetterConfig, Config.Topic of a Source), or to
// RedriveOptions.Destination. Headers do not choose it: a dead letter
// whose reason names another topic (HeaderSource, else HeaderTopic), or
// none, is skipped with an error wrapping broker.ErrNoSource unless a
// Destination is given. The dead-letter topic and done topics (names
// ending in ".queuekit-done") are refused as Destination with an error
// wrapping broker.ErrInvalidConfig: a copy in a done topic would read as a
// marker. The copy has the dead letter's key, body and headers, minus the
// reason headers and HeaderTopic, HeaderPartition and HeaderOffset, plus
// broker.HeaderRedriven (one more), HeaderRedrivenAt and
// HeaderRedrivenFrom (the dead letter's ID); its timestamp is the time of
// the redrive. Back in its own topic it goes to the partition it came from
// (HeaderPartition) when that partition exists, so that it keeps its place
// in its key's order whatever partitioner produced it; otherwise it goes
// where its key hashes (kafkago.Hash). Its consumer sees it as a new
// record, at Attempt 1. A topic that does not exist is not created: the
// dead letter is skipped with an error wrapping broker.ErrNoSource and
// stays, as do those of a topic deleted while the Redrive runs (a
// copy of theirs may have been written before).
//
// A purged dead letter stays in the dead-letter topic until the topic's
// retention deletes it, but List, Count and Redrive no longer show it.
// DeadLetterSelection.Max counts the dead letters selected, those skipped
// included.
//
// The client needs to read the dead-letter topic, write to the source
// topic, commit offsets for the group, and create, read and write the done
// topic. DeadLetters holds no connection between calls: each call dials
// its own and closes them before it returns, bounded by its ctx. Close
// with no call in progress returns nil at once.
//
// # Testing
//
// The package's tests run against the Kafka wire protocol served by an
// in-process cluster (github.com/twmb/franz-go/pkg/kfake) with 4 partitions:
// a protocol-level stand-in, not Apache Kafka. Set
// QUEUEKIT_KAFKA_BROKERS=host:port to run them against a real cluster.
package kafka
