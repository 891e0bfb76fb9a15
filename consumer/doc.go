// Package consumer is what handler authors and operators use: a Consumer
// takes deliveries from a broker.Source, runs a Handler on each with bounded
// concurrency, and settles every delivery for you; a Supervisor runs many
// consumers tied to one context, restarts the ones that fail, reports their
// health and backlog, and stops them gracefully.
//
// It has two parts:
//
//   - Handler and HandlerFunc, Middleware and Chain, JSON: what users write.
//     A handler is one method, Handle(ctx, *broker.Message) error, like
//     net/http's.
//   - Consumer and Supervisor, their options and events: the runtime.
//
// What a broker adapter implements — Source, Delivery, Publisher and the
// optional capabilities — is package broker, the way database/sql/driver is
// separate from database/sql; the adapters are broker/memory,
// broker/rabbitmq, broker/kafka, or your own, checked by broker/brokertest.
//
// # Acknowledgement
//
// Settlement is the runtime's job, never the handler's. When Handle returns:
//
//   - nil: the delivery is acknowledged.
//   - an error marked with retry.Permanent (for example a body that JSON could
//     not decode): the message is dead-lettered at once, with the reason.
//   - any other error: the message is given back to the broker and delivered
//     again, until it has had WithMaxDeliveries deliveries (default 5); then it
//     is dead-lettered with the error text, the number of attempts and its
//     source in headers (broker.HeaderError, HeaderAttempts, HeaderSource…).
//     An error from retry.After is requeued after its delay where the broker
//     supports it.
//   - anything, after the consumer began to stop and cancelled the handler's
//     context: an error is not held against the message; it is given back.
//   - an error wrapping ErrNotHandled, once the intake the message came in
//     under has stopped (see Giving a message back): given back unspent.
//   - a failure that the kill switch counts, of a message received before
//     it tripped (in flight at the trip, or the one that tripped it; see
//     Kill switch): given back unspent. A failed probe is settled as above.
//
// A panic in a handler is recovered and counts as an error of that message
// only. A delivery is never acknowledged before its handler returned nil:
// whatever stops the consumer — shutdown, crash, lost connection — the
// broker keeps every unfinished message and delivers it again (at-least-once).
// Settlement runs on a context of its own, bounded by WithSettleTimeout, never
// on the cancelled run context.
//
// A settlement the broker does not take (a timeout, a lost connection that
// has not yet made the delivery stale) is tried again with backoff until it
// succeeds or the drain deadline passes; meanwhile the consumer reports
// StateStalled and is not ready, and each failure is an EventSettleFailed.
//
// Message.Attempt counts deliveries, as the broker counts them. A message
// received just as the consumer paused or stopped, which no handler saw, is
// given back with Release where the delivery implements broker.Releaser (memory,
// RabbitMQ): it keeps its place and spends no attempt. A message cut off at
// the drain deadline was seen by its handler, and counts.
//
// The runtime calls into values users made — the handler's error (its
// Error, Unwrap and As methods), the observer, event hooks, decoders — only
// under recover: a typed nil error whose Error method panics is described in
// the dead-letter reason instead of crashing the process (see ErrorText), and
// a panicking hook loses its own call, nothing else.
//
// # Lifecycle
//
// Run blocks until its context is done, Shutdown or Close is called, or the
// source fails. A context that is already done takes nothing: Run closes the
// source and returns at once.
//
// Stopping is in phases, within one drain budget: (1) intake stops and
// readiness turns false; deliveries received but not started are given back;
// in-flight handlers keep their contexts. (2) When the budget ends, the
// handlers still running are cancelled with cause ErrDrainTimeout and their
// messages given back. (3) The source is closed (a Kafka source commits what
// was handled and leaves its group). Settlements still in progress and the
// source's Close get 100 ms more once the budget has ended, then give up;
// what they did not finish the broker delivers again. The outcome (handled,
// given back, abandoned) is logged and reported as an EventDrained.
//
// The budget is the context given to Shutdown, like net/http's
// Server.Shutdown: Shutdown(ctx) returns about 100 ms after ctx ends at the
// latest, whatever the handlers and the broker do, so that a Kubernetes
// grace period is never overrun. When Run's own context ends instead, the
// budget is WithDrainTimeout (default 30 s), counted from that moment. Close
// has none: it abandons at once.
//
// A Supervisor does the same for all its runners when its context is done,
// and returns only when they have all returned. queuekit installs no signal
// handlers: use signal.NotifyContext and pass the context to Supervisor.Run.
//
// # Concurrency
//
// WithConcurrency(n) runs n worker goroutines; each takes one delivery, runs
// the handler, settles, and takes the next. Goroutines and in-flight messages
// are bounded by n (and the broker's prefetch), never by the queue length.
// Handlers run concurrently with each other and must be safe for that; each
// Message is seen by one handler at a time.
//
// Fewer than n may be allowed at once: the consumer's current limit
// (Stats.Limit), which the kill switch lowers to
// KillSwitch.ProbeConcurrency while it probes (0 while tripped) and
// WithAdaptiveConcurrency moves within its bounds, is a count of slots. A
// worker takes a slot before it calls Receive and gives it back once the
// message is settled; any free worker may take a free slot, and one that
// finds none takes nothing, not even a Receive, until a slot frees, the
// limit rises or the consumer stops. Handlers already running when the
// limit drops keep their slots: no new one starts until fewer than the
// limit run, so that once they finished at most limit run at once. While
// the kill switch probes, only the probes count against the probe
// concurrency: a handler still running from before the trip does not hold
// the probe up.
//
// WithAdaptiveConcurrency(Adaptive{}) lets the limit adapt between
// Adaptive.Min and n: it shrinks when a window's mean handler latency rises
// clearly above Tolerance times its unloaded latency, or when most results
// of a window fail, and grows back by one per window; Stats.Limit shows it.
// It helps when a dependency is overloaded (fewer calls at once, the same
// throughput, less waiting); a dependency that is merely slower for
// everyone costs a few windows at a lower limit. docs/adaptive-concurrency.png
// in the repository shows both cases against a fixed concurrency.
//
// # Batches
//
// NewBatch makes a Consumer whose handler is a BatchHandler: each worker
// collects up to Batch.MaxSize messages, or what arrived within
// Batch.MaxWait of the first, and hands them over in one call, for one bulk
// insert instead of a round trip per message. It is a Consumer like any
// other (Supervisor, health, Pause, the kill switch, the drain, events and
// Stats, which count messages); while the kill switch probes, a batch holds
// one message, so that a failed probe spends one message's attempt. The
// handler fails single messages with BatchFailures: those are settled alone,
// as a Handler's failed message is, and the rest are acknowledged; a plain
// error or a panic fails the whole batch, and so does a BatchError joined
// with another error. Failure indexes refer to the handler's msgs as it left
// them: the slice is the handler's own (sorting it is fine), and the runtime
// settles the messages it received, whatever the handler did to it. On a
// source with ordered lanes (Kafka's partitions, or keys), the messages of a
// lane after a failed one in the same batch are given back unhandled, so
// that they come again after it. A batch cut short by the intake stopping is
// given back whole; one running at the drain deadline is given back whole.
// MaxSize is at most 65,536; memory is bounded by MaxSize × concurrency
// messages, and a RabbitMQ or memory source fills batches only with a
// prefetch of at least that.
//
// # Giving a message back
//
// Stopping intake — Pause, a kill-switch trip, the drain — does not cancel
// the handlers in flight: they finish their work. A handler (or middleware)
// that has not begun its work yet, because it waits for something (a rate
// limiter's token, a lock, a slot), should not hold the message through a
// Pause or a drain. IntakeStopped(ctx) is a channel closed when the intake
// its message came in under stops; a handler that gives up on it returns an
// error wrapping ErrNotHandled, and the runtime gives the message back with
// Release: it keeps its place and its attempt (Stats.GivenBack counts it,
// Stats.Failed does not). ErrNotHandled returned while that intake is still
// open is an ordinary failure that spends an attempt, so that no message
// can loop on it.
//
// # Kill switch
//
// When a dependency every handler calls is down (a database, an API),
// every message fails, is retried through its delivery budget and lands in
// the dead-letter queue. WithKillSwitch stops that: when the ratio of
// failures over a sliding window crosses a threshold, the consumer trips.
// Its intake stops as with Pause (a Pauser source is paused too, so that a
// RabbitMQ prefetch goes back to the queue), the handlers in flight finish,
// and their failures, like the one that tripped it, are given back unspent.
// Health reports StateTripped with the reason (RunnerHealth.Reason,
// Consumer.KillSwitch), readiness turns false, and EventTripped is
// emitted; the Supervisor does not restart the consumer, which has not
// failed. After KillSwitch.RestartTimeout it probes (EventProbing) with
// KillSwitch.ProbeConcurrency handlers at once: KillSwitch.ProbeMessages
// successes close it (EventRecovered); a counted failure trips it again,
// doubling the restart timeout (up to KillSwitch.MaxRestartTimeout, reset
// when it closes), and the failed probe message is settled as any failure:
// requeued, or dead-lettered once its budget is spent. So a message that
// fails for a reason of its own cannot keep the switch open for ever, and
// an outage spends one attempt of each probe message per failed probe —
// with the defaults, an outage must last over 12.5 minutes before a message
// that entered the probes at Attempt 1 is dead-lettered (WithKillSwitch has
// the arithmetic).
//
// Only errors KillSwitch.Counts accepts count (by default every error that
// is not permanent); name the dependency's errors there, so that a message
// that fails for a reason of its own is retried and dead-lettered as
// usual. The failures before the trip spend their attempts as usual: keep
// KillSwitch.MinMessages well below WithConcurrency × (WithMaxDeliveries - 1).
// Pause and Resume stay the operator's: the intake is open only when the
// consumer is neither paused nor tripped. Shutdown drains a tripped
// consumer as any other. The switch costs the message path a few atomic
// operations and no allocation.
//
// # Errors
//
// Constructors return errors wrapping broker.ErrInvalidConfig; a Supervisor
// does not restart a runner failing with such an error, nor one marked with
// broker.Fatal. The
// lifecycle errors are ErrConsumerClosed (Run after Shutdown or Close, like
// net/http's ErrServerClosed) and ErrDrainTimeout (the cause of a handler
// context cancelled at the drain deadline). Adapters return
// broker.ErrStaleDelivery when asked to settle a delivery that outlived its
// connection.
package consumer
