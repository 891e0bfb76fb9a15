package broker

import (
	"fmt"
	"time"
)

// EventKind says what happened to a source's connection or subscription.
type EventKind int

// Event kinds a source emits. The consumer runtime passes them on to its hooks
// as the consumer.Event kinds of the same names.
const (
	// EventConnected: the source (re)connected and subscribed.
	EventConnected EventKind = iota + 1
	// EventReconnecting: the source lost its connection (Event.Err) and is
	// reconnecting.
	EventReconnecting
	// EventCancelled: the broker cancelled the subscription (Event.Err).
	EventCancelled
	// EventRebalanced: a consumer-group generation ended (partitions were
	// revoked or reassigned); Event.Err says why.
	EventRebalanced
)

var eventKindNames = [...]string{
	EventConnected:    "connected",
	EventReconnecting: "reconnecting",
	EventCancelled:    "cancelled",
	EventRebalanced:   "rebalanced",
}

// String returns the kind's name, such as "connected".
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// An Event is something that happened to a source. Sources pass events to the
// hook installed with SetEventHook, by value.
type Event struct {
	Kind EventKind
	// Err is the error or reason, for the kinds that have one.
	Err error
	// Time is when it happened.
	Time time.Time
}
