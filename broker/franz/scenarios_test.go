package franz_test

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/internal/kafkatest"
)

// The Kafka scenarios both Kafka adapters are held to (internal/kafkatest):
// two members with one shut down mid-run, a member that vanishes, a restart
// from the committed offsets, poison records, per-key and per-partition
// order under concurrency. They run against the Kafka protocol (in-process
// kfake cluster, one per scenario), or against QUEUEKIT_KAFKA_BROKERS.
func TestScenarios(t *testing.T) {
	kafkatest.RunScenarios(t, franzAdapter)
}

// franzAdapter maps the scenarios' SourceConfig to franz.Config.
var franzAdapter = kafkatest.Adapter{
	Name: "franz-go",
	NewSource: func(t testing.TB, c kafkatest.SourceConfig) broker.Source {
		t.Helper()
		cfg := franz.Config{
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
			MaxWait:               c.MaxWait,
			Logger:                c.Logger,
		}
		switch c.Ordering {
		case kafkatest.ByPartition:
			cfg.Ordering = franz.ByPartition
		case kafkatest.ByKey:
			cfg.Ordering = franz.ByKey
		default:
			t.Fatalf("kafkatest.Ordering %d has no franz.Ordering", c.Ordering)
		}
		src, err := franz.NewSource(cfg)
		if err != nil {
			t.Fatalf("NewSource: %v", err)
		}
		return src
	},
	ErrRebalance:      franz.ErrRebalance,
	ErrCommitTimedOut: kerr.RequestTimedOut,
}
