package franz_test

import (
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/brokertest"
)

// TestConformanceWithRetryTopics runs the public conformance suite, against
// the Kafka protocol (in-process kfake cluster), on a Source with retry
// topics: its delayed requeues go through them (the suite's DelayedRequeue
// cases: not before the delay, Attempt one higher). Plain requeues stay in
// process, so a new member still starts a record that was not
// delay-requeued at Attempt 1 (no DurableDeliveryCount).
func TestConformanceWithRetryTopics(t *testing.T) {
	t.Parallel()
	brokertest.Run(t, conformanceHarness(newEnv(t), "conformance-retry", []time.Duration{100 * time.Millisecond, time.Second}))
}
