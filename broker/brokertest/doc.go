// Package brokertest is the conformance suite of queuekit broker adapters,
// in the manner of testing/slogtest: an adapter plugs its broker into a
// Harness, and Run checks, case by case, that it keeps the contract of
// broker.Source, broker.Delivery, broker.Publisher and the optional
// capabilities that the runtime and its users rely on for their promises
// (at-least-once, nothing lost, never retried forever, a nil Publish means
// the broker has the messages).
//
// Every adapter of queuekit runs it: broker/memory in its own tests,
// broker/rabbitmq against a real server, broker/kafka against an in-process
// Kafka-protocol cluster. Third-party adapters should run it too.
//
// # Plugging in an adapter
//
// A Harness declares the adapter's Capabilities and a Setup function that
// creates a fresh, empty destination for each case and returns a Fixture:
// how to open a source on it, how to publish to it (a NewPublisher that
// returns the adapter's broker.Publisher, and the PublishDestination that
// reaches the fixture's sources; or a Publish function), how to read what
// was dead-lettered from it, and (optionally) how to make deliveries stale.
//
// The package example (Example_adapter) is a complete, compiled harness for
// broker/memory; its conformance_test.go runs it.
//
// # What is checked
//
// Each case is a subtest whose name states the contract, and whose failure
// messages say what was expected and why.
//
// The Source and Delivery contract, for every adapter: what is published is
// received with its body, key and headers; Receive returns its context's
// error when the context ends, and a cancelled Receive loses no message; a
// blocked Receive returns a message published while it waits; after Close,
// Receive returns broker.ErrSourceClosed and a second Close returns nil; an
// acked message is not delivered again; a requeued message is delivered
// again; Close gives unsettled deliveries back to a new source; Close with a
// context already cancelled returns within a second and leaves what was not
// settled to be delivered to a new source; DeadLetter moves a message to
// the dead-letter destination with the broker.Reason headers and its own
// headers; settling twice returns broker.ErrAlreadySettled and does not
// panic; 8 goroutines calling Receive at once lose and duplicate none of 500
// messages; and the runtime (consumer.New + Run) on the adapter handles
// every message once, dead-letters a failing message after the delivery
// budget and a permanent failure at once, and loses no message when its
// context is cancelled mid-stream.
//
// The Publisher contract, when the fixture has a NewPublisher: a batch
// arrives in order, each message with its key and headers (and its ID, with
// Capabilities.PublishedID), a message made by broker.NewJSON with its
// content type, and Publish leaves the messages it was given unchanged;
// after Close, Publish returns an error wrapping broker.ErrPublisherClosed;
// Publish returns an error wrapping its context's when the context is
// cancelled or past its deadline, returns soon after a deadline that passes
// during a large batch, and works as before afterwards; with
// Capabilities.UnknownDestination, Publish to Fixture.UnknownDestination
// returns an error and the publisher goes on working.
//
// The optional capabilities of a Source, each checked when the source
// implements it (a case whose source does not is skipped, naming the
// interface): broker.Pauser (while paused Receive hands out nothing, a
// delivery received before Pause can be settled, after Resume the rest
// arrive, none lost or twice); broker.StatusReporter (Connected once the
// source received, not connected with an Err after Close);
// broker.EventSource (the hook set before the first Receive gets
// EventConnected once the source subscribed, and no call after Close
// returned); broker.BacklogReporter (Messages reaches the number published,
// falls to 0 once they were consumed and acked, per-partition figures add
// up to it, Consumers is at least 1 or -1 for "unknown").
//
// The dead-letter cases, when the source implements broker.DeadLetterSource
// (skipped, naming it, when not), check its broker.DeadLetters with dead
// letters made by Delivery.DeadLetter: List shows each with a unique id, its
// reason (error text, attempts, source, time, permanent), its headers and a
// body preview cut to BodyLimit, and listing twice changes neither the count
// nor the order; pages followed by their cursor cover every dead letter
// exactly once; List and Count filter by reason text, source and ids;
// Redrive sends a dead letter back to its source where its next delivery
// has Attempt 1, without the reason headers and with
// broker.HeaderRedriven counting the redrives (1, then 2 after a second
// failure and redrive); a dead letter at the redrive limit is skipped with
// broker.ErrRedriveLimit and stays, and a higher MaxRedrives lets it go; a
// dead letter whose source does not exist is skipped with broker.ErrNoSource
// and stays, and goes to RedriveOptions.Destination when one is given;
// headers do not choose where a redrive writes: a dead letter whose reason
// names another destination that exists (a second fixture of the case, on
// the same broker) is skipped with broker.ErrNoSource, dry run or not, and
// nothing arrives there, until it is given as Destination; a Destination
// that does not exist, or the dead-letter destination itself
// (Fixture.DeadLetterDestination; skipped when empty), is refused with an
// error wrapping broker.ErrNoSource or broker.ErrInvalidConfig, dry run or
// not, and the dead letters stay; DryRun redrives and purges report every selected id and change nothing;
// Purge deletes exactly the selected dead letters (by id, the oldest with
// Max, All) and Count agrees; unknown ids are reported in Missing with
// broker.ErrDeadLetterNotFound and change nothing, while known ids given
// with them are handled; an empty selection is refused with
// broker.ErrEmptySelection. Effects are polled with Count up to
// Harness.Timeout, for brokers whose view of their dead letters lags
// (Kafka). The unknown id is "brokertest-no-such-dead-letter": an adapter
// must report an id it cannot parse as missing, not as invalid.
//
// Capabilities add cases or strengthen them: DeliveryCount (Attempt grows on
// requeue; needed for the delivery budget), DurableDeliveryCount (Attempt
// also grows on redelivery after Close or a stale delivery), Prefetch
// (Receive blocks at the bound), DelayedRequeue (broker.DelayedRequeuer),
// StaleDeliveries (Fixture.MakeStale; a stale delivery cannot be settled,
// and its message is redelivered), PublishedID and UnknownDestination. A case
// whose capability is not declared is skipped, naming the capability.
//
// # Timing
//
// The suite waits for what should happen at most Harness.Timeout (10s by
// default) and typically milliseconds; it waits Harness.Quiet (300ms by
// default) to be confident that something does not happen (a redelivery of
// an acked message, a Receive past the prefetch bound, a Receive on a
// paused source, a late event). A run of the whole suite against an
// in-process broker takes a few seconds. Two cases assert a bound, both
// generous, because the contract is one: Close with a cancelled context
// returns within 1s, and Publish returns within 1s of a deadline that passed.
//
// # Concurrency
//
// Cases run one after another (the suite calls no t.Parallel), so a Setup may
// share a connection between cases. Within a case the suite calls Receive from
// several goroutines at once, and runs consumers that do. Every goroutine the
// suite starts has exited when its case returns, so adapters can check for
// leaks with go.uber.org/goleak in TestMain.
package brokertest
