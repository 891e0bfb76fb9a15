// Package kafka is the queuekit adapter for Apache Kafka, over
// github.com/segmentio/kafka-go (imported as kafkago): a consumer.Source that
// consumes a topic as a member of a consumer group, and a Publisher.
//
// It is built on kafka-go's ConsumerGroup and Generation API, not on the
// group Reader, because the Reader cannot finish and commit work before its
// partitions are taken away (kafka-go #674, #1398) and lets a stale member
// commit (kafka-go #1308). Each assigned partition is fetched with Fetch
// requests of its own, through kafka-go's protocol package, not through a
// kafkago.Reader or kafkago.Conn: a fetch response is queued a chunk of
// records at a time under one lock instead of record by record through a
// channel, the end of a generation cancels a pending fetch at once, and the
// response's producer ids, control batches and aborted-transactions list —
// which the Reader and Conn hide — are what read-committed consumption
// needs (see Transactions).
//
// # Lifecycle
//
// NewSource validates the Config and returns an error wrapping
// consumer.ErrInvalidConfig instead of panicking. The first Receive joins
// the group. Each generation of the group (a new set of assignments after a
// member joined or left) starts one fetcher per assigned partition and one
// committer. When the generation ends, the Source drains it:
//
//  1. it stops handing out records of its partitions (records fetched but
//     not handed out are dropped, uncommitted);
//  2. it waits up to Config.DrainTimeout for the records already handed out
//     to be settled;
//  3. it fences the generation: settling a record still out returns an error
//     wrapping consumer.ErrStaleDelivery and is never committed;
//  4. it commits what was handled, and only then lets kafka-go rejoin (or
//     leave, on Close) and give the partitions up. A commit that fails for a
//     reason retrying can fix (the coordinator loading, moving or
//     rebalancing; a broken connection or a timeout) is retried with backoff
//     through a fresh connection to the group's coordinator, until
//     DrainTimeout after the drain began and for at least DrainTimeout/2
//     after the first failure. Only then is the failure logged as an error:
//     the next owner handles again what was handled since the last commit.
//
// So a record handled before a rebalance is committed before the next owner
// reads the offsets, and is not handled twice. DrainTimeout must be below the
// session and rebalance timeouts, because kafka-go stops heartbeating when a
// generation ends. Close drains and commits the same way, then leaves the
// group; it waits for every goroutine of the Source. A generation's end
// cancels its pending fetches, so neither Close nor a rebalance waits for a
// pending fetch (Config.MaxWait, 250 ms by default, bounds how long a fetch
// waits for new records); the connection of kafka-go's transport that
// carried a cancelled fetch is closed when the broker answers it, at most
// MaxWait after Close returned.
//
// Partitions added to the topic while the group runs are picked up: every
// Config.PartitionWatchInterval (5 s by default) the member compares the
// topic's partition count with the one its generation's assignment is based
// on; when it grew, the generation ends (drained and committed as above)
// and the next one assigns the new partitions too. A topic that does not
// exist — not created yet, or deleted while the group runs — never ends a
// generation: the member stays in the group with nothing (or nothing
// readable) assigned, Status().Err says the topic is missing, and when the
// topic appears it is compared like any count (a topic recreated with the
// same count goes on without a rebalance; see Acknowledgement for its
// offsets).
//
// # Acknowledgement
//
// Kafka has no per-message acknowledgement: a consumer group stores one
// offset per partition, meaning "everything before this was handled". The
// Source therefore tracks, per partition, which fetched records were
// settled, and commits only the offset after the longest settled prefix:
// a record still running holds the commit back even if later records are
// done, so a crash never skips it (at-least-once). Commits are batched by
// Config.CommitBatch records and Config.CommitInterval; a commit per record
// is about 20 times slower.
//
// Kafka has no per-message nack either, so:
//
//   - Requeue hands the same record out again in this process, with Attempt
//     one higher, before anything after it in its lane (see Concurrency). The
//     consumer runtime's delivery budget bounds these retries.
//   - RequeueAfter does the same after a delay, holding the lane but not a
//     worker (consumer.DelayedRequeuer).
//   - DeadLetter writes the record to Config.DeadLetterTopic (default
//     Topic + ".dlt") with the consumer.Reason headers plus HeaderTopic,
//     HeaderPartition and HeaderOffset, and marks it handled only after the
//     write succeeded. If the write fails, the delivery stays unsettled and
//     nothing is committed: the runtime tries the dead letter again with
//     backoff, without running the handler again. Each dead letter is
//     written in a request of its own, sized from the record it carries:
//     the dead-letter topic's max.message.bytes is the only limit, unless
//     Config.DeadLetterMaxBytes sets one of the client's own. (MaxBytes
//     cannot bound a dead letter: Kafka returns a record batch up to the
//     consumed topic's max.message.bytes whole, whatever MaxBytes says.) A
//     write that retrying cannot fix — the dead letter is larger than the
//     dead-letter topic's max.message.bytes (or DeadLetterMaxBytes), or the
//     topic refuses it — returns an error wrapping ErrDeadLetterUnwritable
//     whose text names the limit or setting that refused it: the Source
//     logs it as an error and reports it in Status().Err, the runtime's
//     consumer.EventSettleFailed carries it, and the record keeps its
//     partition (it is not skipped, which would lose it) until an operator
//     fixes the cause and a retry succeeds.
//
// A partition whose log starts over — the topic was deleted and recreated,
// or the log truncated, so that the position lies beyond its end — is read
// again from StartOffset with a new offset tracker. "Beyond its end" means
// past the high-water mark, whatever the isolation: with ReadCommitted a
// position between the last stable offset and the high-water mark is valid,
// and the fetch waits there until the open transaction ends. Records of the
// old log not yet handed out are dropped (and leave the partition's
// MaxInFlight room at once); settling one still out returns an error
// wrapping consumer.ErrStaleDelivery and commits nothing, so the old log's
// offsets never hide records of the new one.
//
// Attempt counts deliveries within this process only: a record redelivered
// to another member, or after a restart, starts again at 1.
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
// that bound, a partition's fetcher holds at most two fetch responses: the
// rest of the one it is queueing and the next one, fetched ahead so that
// handlers do not wait for it. Each is at most Config.MaxBytes, except that
// Kafka always returns the first record batch whole, however large the
// producer made it.
//
// Who owns what: one fetcher goroutine per assigned partition owns that
// partition's fetch position and its fetched-but-not-queued records (a
// goroutine of its own carries each request it sends ahead, and hands the
// response over on a channel); one
// committer goroutine per generation commits and runs the drain; every
// other piece of state (lanes, the ready queue, offset trackers, counters)
// is guarded by one mutex of the Source, held only for short non-blocking
// sections: a fetcher takes it once per chunk of records, Receive and each
// settlement once per record.
//
// # Transactions
//
// Topics written by transactional (exactly-once) producers are read with
// read-committed semantics by default (Config.Isolation ReadCommitted): a
// fetch stops at the partition's last stable offset, so nothing of an open
// transaction is handed out; the records of aborted transactions are
// skipped, found as Kafka's own consumers find them (the aborted
// transactions a fetch response lists, matched by producer id up to the
// producer's abort marker). ReadUncommitted hands out every data record,
// aborted ones included, as soon as it is written. With either, transaction
// markers (control records) are never handed out. Records skipped count as
// handled for the commit, so the committed offset moves past them and the
// lag of a fully consumed partition is 0.
//
// # Errors
//
// Settling a record of an ended generation returns an error wrapping
// consumer.ErrStaleDelivery; the record goes to the partition's next owner.
// So does settling a record of a partition log that started over while it
// was out (see Acknowledgement). Settling twice returns
// consumer.ErrAlreadySettled. A dead letter that retrying cannot write
// returns an error wrapping ErrDeadLetterUnwritable, which Status reports
// until the record is settled; one refused by Config.DeadLetterMaxBytes
// (when set) wraps ErrDeadLetterTooLarge too. While the topic does not exist
// Status().Err says so (Connected stays true: the member is in its group).
// Receive returns
// consumer.ErrSourceClosed after Close. Failures to join the group are
// retried by kafka-go; the Source reports them through Status and a
// consumer.EventReconnecting event, and keeps Receive blocked meanwhile. The
// end of a generation (a rebalance) emits consumer.EventRebalanced with an
// error wrapping ErrRebalance, after the drain and its commit, and
// consumer.EventConnected when the next generation starts. Close ends the
// last generation without an event.
//
// # Operations
//
// Source.Lag reports, per partition, the high-water mark minus the group's
// committed offset, read from the brokers, for metrics and health checks;
// Source.LagByPartition returns the same as a map, which makes a Source the
// LagSource of middleware/prometheus's lag collector.
// TLS and SASL are set on Config.Dialer (kafkago.Dialer's TLS and
// SASLMechanism) and apply to every connection the Source makes.
//
// # Testing
//
// The package's tests run against the Kafka wire protocol served by an
// in-process cluster (github.com/twmb/franz-go/pkg/kfake) with 4 partitions:
// a protocol-level stand-in, not Apache Kafka. Set
// QUEUEKIT_KAFKA_BROKERS=host:port to run them against a real cluster.
package kafka
