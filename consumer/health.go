package consumer

import (
	"fmt"
	"time"
)

// State is the lifecycle state of a runner, as Health reports it.
type State int

// Runner states.
const (
	// StateStarting: added or being restarted, not yet taking deliveries.
	StateStarting State = iota
	// StateRunning: taking and handling deliveries.
	StateRunning
	// StatePaused: intake paused with Pause; in-flight handlers may still run.
	StatePaused
	// StateDraining: shutting down; in-flight handlers are finishing.
	StateDraining
	// StateReconnecting: the source lost its broker connection and is reconnecting.
	StateReconnecting
	// StateFailed: the runner failed and waits to be restarted, or failed fatally.
	StateFailed
	// StateStopped: the runner returned and will not run again.
	StateStopped
	// StateStalled: the consumer cannot settle a delivery (the broker does
	// not take its ack, requeue or dead letter): it keeps trying with
	// backoff, holding the delivery, and that worker takes nothing new
	// meanwhile. The EventSettleFailed events say why.
	StateStalled
	// StateTripped: the consumer's kill switch (WithKillSwitch) stopped its
	// intake because too many handlers failed; it probes again after the
	// restart timeout. RunnerHealth.Reason says why. The runner has not
	// failed: a Supervisor does not restart it.
	StateTripped
)

var stateNames = [...]string{
	StateStarting:     "starting",
	StateRunning:      "running",
	StatePaused:       "paused",
	StateDraining:     "draining",
	StateReconnecting: "reconnecting",
	StateFailed:       "failed",
	StateStopped:      "stopped",
	StateStalled:      "stalled",
	StateTripped:      "tripped",
}

// String returns the state's name, such as "draining".
func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// MarshalText encodes the state as its name, for JSON health reports.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a state from its name, so that a JSON health report
// can be read back.
func (s *State) UnmarshalText(b []byte) error {
	for i, name := range stateNames {
		if name == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("queuekit: unknown state %q", b)
}

// Health is a snapshot of a Supervisor's runners.
type Health struct {
	// Ready is true when there is at least one runner and every runner is
	// StateRunning. It is what a readiness probe should report.
	Ready bool `json:"ready"`
	// Runners has one entry per runner, in the order they were added.
	Runners []RunnerHealth `json:"runners"`
}

// RunnerHealth is the health of one runner.
type RunnerHealth struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	// Since is when the runner entered its current supervisor-level state;
	// for a consumer whose kill switch is tripped (StateTripped), when the
	// switch tripped.
	Since time.Time `json:"since"`
	// Restarts counts restarts after failures.
	Restarts int `json:"restarts"`
	// LastError is the text of the last failure, if any.
	LastError string `json:"last_error,omitempty"`
	// Reason says why a consumer's kill switch is tripped or probing
	// (Consumer.KillSwitch); empty otherwise.
	Reason string `json:"reason,omitempty"`
}
