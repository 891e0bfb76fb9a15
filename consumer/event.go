package consumer

import (
	"fmt"
	"time"
)

// EventKind says what happened.
type EventKind int

// Event kinds. Runners and sources emit the lifecycle kinds; the runtime emits
// the settlement kinds.
const (
	// EventStarting: a runner is being started (or restarted).
	EventStarting EventKind = iota + 1
	// EventRunning: a consumer's workers are taking deliveries.
	EventRunning
	// EventPaused: Pause paused the intake.
	EventPaused
	// EventResumed: Resume cleared the pause and the intake reopened;
	// while the kill switch is tripped (WithKillSwitch), the pause was
	// cleared but the intake stays stopped until EventProbing.
	EventResumed
	// EventDraining: intake stopped; in-flight handlers are finishing.
	EventDraining
	// EventDrained: the drain ended; Event.Drain has the counts.
	EventDrained
	// EventStopped: a runner returned and will not be restarted.
	EventStopped
	// EventFailed: a runner returned an error; Event.Err has it.
	EventFailed
	// EventRestarting: a failed runner will be restarted after Event.Delay.
	EventRestarting
	// EventConnected: a source (re)connected and subscribed.
	EventConnected
	// EventReconnecting: a source lost its connection (Event.Err) and is reconnecting.
	EventReconnecting
	// EventCancelled: the broker cancelled a source's subscription (Event.Err).
	EventCancelled
	// EventDeadLettered: a message was dead-lettered (Event.Err is the reason).
	EventDeadLettered
	// EventSettleFailed: acking, requeueing or dead-lettering failed
	// (Event.Err). A stale delivery is redelivered by the broker; any other
	// failure is tried again with backoff (see WithSettleTimeout).
	EventSettleFailed
	// EventRebalanced: a Kafka consumer group generation ended (partitions
	// were revoked or reassigned); Event.Err says why.
	EventRebalanced
	// EventTripped: the kill switch (WithKillSwitch) stopped intake;
	// Event.Err is the reason (the failure ratio and the last error),
	// Event.Delay the restart timeout before it probes (doubled by each
	// failed probe, see KillSwitch.MaxRestartTimeout).
	EventTripped
	// EventProbing: the restart timeout of a tripped kill switch passed;
	// intake reopened with KillSwitch.ProbeConcurrency handlers at once.
	// While the consumer is paused, the switch probes but the intake
	// reopens (with that concurrency) only at Resume.
	EventProbing
	// EventRecovered: the probes succeeded; the kill switch closed and the
	// consumer runs at full concurrency again.
	EventRecovered
)

var eventKindNames = [...]string{
	EventStarting:     "starting",
	EventRunning:      "running",
	EventPaused:       "paused",
	EventResumed:      "resumed",
	EventDraining:     "draining",
	EventDrained:      "drained",
	EventStopped:      "stopped",
	EventFailed:       "failed",
	EventRestarting:   "restarting",
	EventConnected:    "connected",
	EventReconnecting: "reconnecting",
	EventCancelled:    "cancelled",
	EventDeadLettered: "dead-lettered",
	EventSettleFailed: "settle-failed",
	EventRebalanced:   "rebalanced",
	EventTripped:      "tripped",
	EventProbing:      "probing",
	EventRecovered:    "recovered",
}

// String returns the kind's name, such as "drained".
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// An Event is something that happened to a runner, consumer or source. Events
// are passed to hooks by value; hooks must not block for long (a Supervisor
// queues events for its OnEvent hook so that a slow hook never stalls a
// consumer, and drops them when the queue is full).
type Event struct {
	Kind EventKind
	// Runner is the name the runner was added to a Supervisor with, or the
	// consumer's own name (WithName).
	Runner string
	Time   time.Time
	// Err is the error or reason, for the kinds that have one.
	Err error
	// Delay is the wait before a restart (EventRestarting), or before the
	// kill switch probes (EventTripped).
	Delay time.Duration
	// MessageID is set for per-message events (EventDeadLettered, EventSettleFailed).
	MessageID string
	// Drain has the outcome of a drain (EventDrained).
	Drain DrainReport
	// Restarts counts the restarts of the runner so far (EventRestarting).
	Restarts int
}

// DrainReport is the outcome of a drain.
type DrainReport struct {
	// Handled counts the in-flight handlers that finished during the drain
	// and had their message settled.
	Handled int
	// GivenBack counts deliveries given back to the broker unspent:
	// received but not started, or given back by their handler
	// (ErrNotHandled) or by a tripped kill switch.
	GivenBack int
	// Abandoned counts handlers still running at the drain deadline: their
	// contexts were cancelled with ErrDrainTimeout and their messages given
	// back to be redelivered.
	Abandoned int
	// Duration is how long the drain took.
	Duration time.Duration
}

// Settlement is what the runtime did with a delivery. An observer set with
// WithObserver receives one per settled delivery.
type Settlement int

// Settlements.
const (
	// SettledAck: the handler succeeded and the delivery was acknowledged.
	SettledAck Settlement = iota + 1
	// SettledRequeue: the handler failed within the budget; the message was
	// given back for another delivery.
	SettledRequeue
	// SettledDelayedRequeue: as SettledRequeue, after a retry.After delay.
	SettledDelayedRequeue
	// SettledDeadLetter: the message was dead-lettered (permanent error or
	// budget spent).
	SettledDeadLetter
	// SettledGiveBack: received after intake stopped, or its handler gave up
	// because the consumer was stopping (ErrNotHandled, a cancelled
	// context), or it failed while the kill switch was tripped; given back
	// without spending an attempt where the broker can (broker.Releaser).
	SettledGiveBack
	// SettledAbandon: its handler was still running at the drain deadline;
	// given back to be redelivered.
	SettledAbandon
)

var settlementNames = [...]string{
	SettledAck:            "ack",
	SettledRequeue:        "requeue",
	SettledDelayedRequeue: "delayed-requeue",
	SettledDeadLetter:     "dead-letter",
	SettledGiveBack:       "give-back",
	SettledAbandon:        "abandon",
}

// String returns the settlement's name, such as "dead-letter"; metrics use it as a label.
func (s Settlement) String() string {
	if s > 0 && int(s) < len(settlementNames) {
		return settlementNames[s]
	}
	return fmt.Sprintf("Settlement(%d)", int(s))
}
