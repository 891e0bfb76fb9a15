package kafkatest

import (
	"log/slog"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Ordering is the record ordering a scenario asks of a Source; each adapter
// maps it to its own Ordering type.
type Ordering int

const (
	// ByPartition runs a partition's records one at a time, in offset order
	// (both adapters' default).
	ByPartition Ordering = iota
	// ByKey runs records of different keys of one partition concurrently,
	// those of one key one at a time, in offset order.
	ByKey
)

// SourceConfig is what a scenario asks of a Source, in the adapters' common
// terms. A zero MaxInFlight or CommitBatch means the adapter's default; the
// durations are always set (Timings).
type SourceConfig struct {
	Brokers []string
	Topic   string
	Group   string

	Ordering    Ordering
	MaxInFlight int
	CommitBatch int

	CommitInterval        time.Duration
	HeartbeatInterval     time.Duration
	SessionTimeout        time.Duration
	RebalanceTimeout      time.Duration
	RebalanceDrainTimeout time.Duration
	MaxWait               time.Duration

	Logger *slog.Logger
}

// Timings returns c with the fast group timings every scenario starts from:
// heartbeat 100ms, session timeout 2s, rebalance timeout 3s, drain budget
// 1s, fetch wait 100ms, commit interval 100ms. With the clients' defaults a
// rebalance takes seconds (see KAFKA_TESTING.md).
func (c SourceConfig) Timings() SourceConfig {
	c.HeartbeatInterval = 100 * time.Millisecond
	c.SessionTimeout = 2 * time.Second
	c.RebalanceTimeout = 3 * time.Second
	c.RebalanceDrainTimeout = time.Second
	c.MaxWait = 100 * time.Millisecond
	c.CommitInterval = 100 * time.Millisecond
	return c
}

// An Adapter is the Kafka adapter under test, as the scenarios see it.
type Adapter struct {
	// Name names the adapter in logs ("kafka-go", "franz-go").
	Name string

	// NewSource returns a consumer group Source for c, failing t if it
	// cannot. The scenarios close it (through the consumer runtime or
	// directly).
	NewSource func(t testing.TB, c SourceConfig) broker.Source

	// ErrRebalance is the error the Err of a broker.EventRebalanced event
	// wraps when a group generation ends.
	ErrRebalance error

	// ErrCommitTimedOut is the error a Source's Close wraps when its final
	// offset commit is answered REQUEST_TIMED_OUT for every partition (a
	// member that vanished from the coordinator).
	ErrCommitTimedOut error

	// Baseline, if set, runs the two-members scenario with the adapter's
	// raw client in the same test run (n records on a topic of its own),
	// so that its log can set queuekit's duplicates next to the client's.
	// It reports the client's duplicates and the rebalances it saw.
	Baseline func(t *testing.T, c *Cluster, n int) (duplicates, rebalances int)
}
