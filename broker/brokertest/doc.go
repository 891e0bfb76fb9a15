// Package brokertest is the conformance suite of queuekit broker adapters,
// in the manner of testing/slogtest: an adapter plugs its broker into a
// Harness, and Run checks, case by case, that it keeps the contract of
// consumer.Source and consumer.Delivery that the runtime relies on for its
// promises (at-least-once, nothing lost, never retried forever).
//
// Every adapter of this module runs it: broker/memory in its own tests,
// broker/rabbitmq against a real server, broker/kafka against an in-process
// Kafka-protocol cluster. Third-party adapters should run it too.
//
// # Plugging in an adapter
//
// A Harness declares the adapter's Capabilities and a Setup function that
// creates a fresh, empty destination for each case and returns a Fixture:
// how to publish to it, how to open a source on it, how to read what was
// dead-lettered from it, and (optionally) how to make deliveries stale.
//
// The package example (Example_adapter) is a complete, compiled harness for
// broker/memory; its conformance_test.go runs it.
//
// # What is checked
//
// Each case is a subtest whose name states the contract, and whose failure
// messages say what was expected and why. Without any capability, the suite
// checks: what is published is received with its body, key and headers;
// Receive returns its context's error when the context ends, and a cancelled
// Receive loses no message; a blocked Receive returns a message published
// while it waits; after Close, Receive returns consumer.ErrSourceClosed and a
// second Close returns nil; an acked message is not delivered again; a
// requeued message is delivered again; Close gives unsettled deliveries back
// to a new source; DeadLetter moves a message to the dead-letter destination
// with the consumer.Reason headers and its own headers; settling twice returns
// consumer.ErrAlreadySettled and does not panic; 8 goroutines calling Receive
// at once lose and duplicate none of 500 messages; and the runtime
// (consumer.New + Run) on the adapter handles every message once, dead-letters
// a failing message after the delivery budget and a permanent failure at
// once, and loses no message when its context is cancelled mid-stream.
//
// Capabilities add cases or strengthen them: DeliveryCount (Attempt grows on
// requeue; needed for the delivery budget), DurableDeliveryCount (Attempt
// also grows on redelivery after Close or a stale delivery), Prefetch
// (Receive blocks at the bound), DelayedRequeue (consumer.DelayedRequeuer)
// and StaleDeliveries (Fixture.MakeStale; a stale delivery cannot be
// settled, and its message is redelivered). A case whose capability is not
// declared is skipped, naming the capability.
//
// # Timing
//
// The suite waits for what should happen at most Harness.Timeout (10s by
// default) and typically milliseconds; it waits Harness.Quiet (300ms by
// default) to be confident that something does not happen (a redelivery of
// an acked message, a Receive past the prefetch bound). A run of the whole
// suite against an in-process broker takes a few seconds; cases never assert
// that something is fast.
//
// # Concurrency
//
// Cases run one after another (the suite calls no t.Parallel), so a Setup may
// share a connection between cases. Within a case the suite calls Receive from
// several goroutines at once, and runs consumers that do. Every goroutine the
// suite starts has exited when its case returns, so adapters can check for
// leaks with go.uber.org/goleak in TestMain.
package brokertest
