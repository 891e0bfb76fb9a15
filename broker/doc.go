// Package broker is the contract between the queuekit runtime and the broker
// adapters, the way database/sql/driver is the contract between database/sql
// and its drivers. Handler authors and operators use package consumer;
// adapter authors implement what this package declares, and check their
// adapter with package brokertest.
//
// # The contract
//
// An adapter implements Source (a stream of Deliveries, each settled exactly
// once by the runtime: Ack, Requeue or DeadLetter with a Reason) and, to send
// messages, Publisher. Message is the broker-neutral message both sides see:
// handlers receive a *Message, publishers send them.
//
// # Capabilities
//
// What only some brokers can do is a small optional interface, detected by
// the runtime with a type assertion: on a Delivery, DelayedRequeuer (give back
// after a delay), Releaser (give back without counting an attempt) and Leased
// (valid only while a consumer-group generation lasts); on a Source, Pauser
// (stop and resume intake without closing), StatusReporter (connection
// state), EventSource (connected, reconnecting, cancelled, rebalanced),
// BacklogReporter (queue depth or consumer lag, in one shape) and
// TopologyDeclarer (create the queue or topic, its dead-letter and retry
// destinations).
//
// # Lifecycle
//
// Source.Close and Publisher.Close are bounded by their context, like
// net/http's Server.Shutdown: when the context ends, they give up what
// remains and return. Nothing is lost that way: what was not settled is
// delivered again.
//
// # Errors
//
// Adapters return ErrInvalidConfig (wrapped) from constructors for bad
// configuration, ErrStaleDelivery when a delivery outlived its connection or
// generation, ErrAlreadySettled for a second settlement, ErrSourceClosed and
// ErrPublisherClosed after Close, and mark errors that restarting cannot fix
// with Fatal.
package broker
