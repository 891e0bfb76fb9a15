package kafka_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Regression tests for the review of the retry topics, on the Kafka
// protocol (in-process kfake cluster, one per test).

// declareFor declares the topology of cfg (its topic, dead-letter topic and
// retry topics).
func declareFor(t *testing.T, cfg kafka.Config) {
	t.Helper()
	src := newSource(t, cfg)
	if err := src.DeclareTopology(context.Background()); err != nil {
		t.Fatalf("DeclareTopology: %v", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestRetryTopicsBelongToTheGroup: two groups consume the same topic with
// retry topics; one fails a record once, the other handles it at once. The
// retry must reach the failing group only (it once reached both: the tier
// topics were shared).
func TestRetryTopicsBelongToTheGroup(t *testing.T) {
	e := newEnv(t)
	tiers := []time.Duration{100 * time.Millisecond}
	topic, billing := retryTopicSource(t, e, "retry-groups", "billing", tiers)
	shipping := billing
	shipping.GroupID = "shipping"
	declareFor(t, shipping)
	var bn, sn atomic.Int64
	startMember(t, newSource(t, billing), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if bn.Add(1) == 1 {
			return retry.After(errRetryMe, 100*time.Millisecond)
		}
		return nil
	}))
	startMember(t, newSource(t, shipping), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		sn.Add(1)
		return nil
	}))
	e.produce(t, topic, 0, 1, itoa)
	waitFor(t, "billing's retry and shipping's delivery", 20*time.Second, func() bool { return bn.Load() >= 2 && sn.Load() >= 1 })
	// Give a wrongly shared tier consumer of shipping the time to hand the
	// retry out too (it is due when billing got it).
	time.Sleep(500 * time.Millisecond)
	if b, s := bn.Load(), sn.Load(); b != 2 || s != 1 {
		t.Errorf("billing handled the record %d times, shipping %d; want 2 and 1", b, s)
	}
}
