package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/broker/kafka"
)

// A member is a group member's Source: what the runtime consumes from, and
// the group's lag (Backlog).
type member interface {
	broker.Source
	broker.BacklogReporter
}

// deadLetters is the dead-letter API of either adapter (kafka.DeadLetters,
// franz.DeadLetters): no Source, no group member.
type deadLetters interface {
	broker.DeadLetters
	Close(ctx context.Context) error
}

// client is the Kafka adapter the example runs on (-client). Only these
// constructors name one: the rest of the program sees broker.Source,
// broker.Publisher and broker.DeadLetters. The two adapters take the same
// settings and share their formats (dead letters, keys' partitions).
type client struct {
	name         string // as -client names it
	pkg          string // the adapter's package: kafka or franz
	newMember    func(brokers []string, group, topic string, logger *slog.Logger) (member, error)
	newLagReader func(brokers []string, group, topic string) (member, error)
	newPublisher func(brokers []string) (broker.Publisher, error)
	newDLs       func(brokers []string, topic string, logger *slog.Logger) (deadLetters, error)
	// doneSuffix names the topic that keeps a redrive's progress when it
	// had to mark dead letters done out of order (the same on both).
	doneSuffix string
}

// Group settings of a member: faster group operations than the defaults,
// within what Apache Kafka accepts (group.min.session.timeout.ms is 6 s); a
// member learns of a rebalance on its next heartbeat.
const (
	heartbeat      = 250 * time.Millisecond
	sessionTimeout = 6 * time.Second
	rebalanceTime  = 6 * time.Second // RebalanceDrainTimeout defaults to a third of it
	// At most 32 events per partition queued or running. With ByKey one
	// event per key among them runs at a time (here a partition holds 3
	// accounts, so at most 3), and at most WithConcurrency in all.
	maxInFlight = 32
)

// clientNamed returns the adapter named by -client: "kafka-go" (broker/kafka)
// or "franz" (broker/franz, on franz-go).
func clientNamed(name string) (client, error) {
	switch name {
	case "", "kafka-go":
		return client{
			name: "kafka-go",
			pkg:  "kafka",
			newMember: func(brokers []string, group, topic string, logger *slog.Logger) (member, error) {
				return kafka.NewSource(kafka.Config{
					Brokers: brokers, GroupID: group, Topic: topic,
					Ordering:          kafka.ByKey, // one lane per key within a partition
					MaxInFlight:       maxInFlight,
					HeartbeatInterval: heartbeat,
					SessionTimeout:    sessionTimeout,
					RebalanceTimeout:  rebalanceTime,
					JoinGroupBackoff:  heartbeat,
					Logger:            logger,
				})
			},
			newLagReader: func(brokers []string, group, topic string) (member, error) {
				return kafka.NewSource(kafka.Config{Brokers: brokers, GroupID: group, Topic: topic})
			},
			newPublisher: func(brokers []string) (broker.Publisher, error) {
				return kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers})
			},
			newDLs: func(brokers []string, topic string, logger *slog.Logger) (deadLetters, error) {
				return kafka.NewDeadLetters(kafka.DeadLetterConfig{Brokers: brokers, Topic: topic, Logger: logger})
			},
			doneSuffix: kafka.DeadLetterDoneSuffix,
		}, nil
	case "franz":
		return client{
			name: "franz",
			pkg:  "franz",
			newMember: func(brokers []string, group, topic string, logger *slog.Logger) (member, error) {
				return franz.NewSource(franz.Config{
					Brokers: brokers, GroupID: group, Topic: topic,
					Ordering:          franz.ByKey, // one lane per key within a partition
					MaxInFlight:       maxInFlight,
					HeartbeatInterval: heartbeat,
					SessionTimeout:    sessionTimeout,
					RebalanceTimeout:  rebalanceTime,
					Logger:            logger,
				})
			},
			newLagReader: func(brokers []string, group, topic string) (member, error) {
				return franz.NewSource(franz.Config{Brokers: brokers, GroupID: group, Topic: topic})
			},
			newPublisher: func(brokers []string) (broker.Publisher, error) {
				return franz.NewPublisher(franz.PublisherConfig{Brokers: brokers})
			},
			newDLs: func(brokers []string, topic string, logger *slog.Logger) (deadLetters, error) {
				return franz.NewDeadLetters(franz.DeadLetterConfig{Brokers: brokers, Topic: topic, Logger: logger})
			},
			doneSuffix: franz.DeadLetterDoneSuffix,
		}, nil
	}
	return client{}, fmt.Errorf("-client must be kafka-go or franz, not %q", name)
}
