package kafka_test

import (
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/internal/kafkatest"
)

// The Kafka scenarios both Kafka adapters are held to (internal/kafkatest):
// two members with one shut down mid-run, a member that vanishes, a restart
// from the committed offsets, poison records, per-key and per-partition
// order under concurrency. They run against the Kafka protocol (in-process
// kfake cluster, one per scenario), or against QUEUEKIT_KAFKA_BROKERS.
func TestScenarios(t *testing.T) {
	kafkatest.RunScenarios(t, kafkaGoAdapter)
}

// kafkaGoAdapter maps the scenarios' SourceConfig to kafka.Config.
var kafkaGoAdapter = kafkatest.Adapter{
	Name: "kafka-go",
	NewSource: func(t testing.TB, c kafkatest.SourceConfig) broker.Source {
		t.Helper()
		cfg := kafka.Config{
			Brokers:               c.Brokers,
			GroupID:               c.Group,
			Topic:                 c.Topic,
			MaxInFlight:           c.MaxInFlight,
			CommitBatch:           c.CommitBatch,
			CommitInterval:        c.CommitInterval,
			HeartbeatInterval:     c.HeartbeatInterval,
			SessionTimeout:        c.SessionTimeout,
			RebalanceTimeout:      c.RebalanceTimeout,
			RebalanceDrainTimeout: c.RebalanceDrainTimeout,
			JoinGroupBackoff:      100 * time.Millisecond,
			MaxWait:               c.MaxWait,
			Logger:                c.Logger,
		}
		switch c.Ordering {
		case kafkatest.ByPartition:
			cfg.Ordering = kafka.ByPartition
		case kafkatest.ByKey:
			cfg.Ordering = kafka.ByKey
		default:
			t.Fatalf("kafkatest.Ordering %d has no kafka.Ordering", c.Ordering)
		}
		return newSource(t, cfg)
	},
	ErrRebalance:      kafka.ErrRebalance,
	ErrCommitTimedOut: kafkago.RequestTimedOut,
	Baseline:          twoRawReaders,
}
