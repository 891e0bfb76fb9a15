package brokertest_test

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/memory"
)

// An adapter's conformance test, here for broker/memory. Put it in the
// adapter's _test.go files as func TestConformance(t *testing.T); Setup gives
// each case a fresh queue, and the fixture's functions drive the adapter the
// way its users would.
func Example_adapter() {
	TestConformance := func(t *testing.T) {
		brokertest.Run(t, brokertest.Harness{
			// Declare only what the adapter really does: a case whose
			// capability is missing is skipped, naming it.
			Capabilities: brokertest.Capabilities{
				DeliveryCount:        true,
				DurableDeliveryCount: true,
				Prefetch:             true,
				DelayedRequeue:       true,
				StaleDeliveries:      true,
				PublishedID:          true,
				// Not UnknownDestination: queues are created on first use.
			},
			Setup: func(t *testing.T) brokertest.Fixture {
				b := memory.NewBroker()
				t.Cleanup(func() { b.Close() })
				const queue = "orders"
				return brokertest.Fixture{
					Destination: queue,
					// The adapter's broker.Publisher, and where it publishes
					// to reach the queue (RabbitMQ: an exchange bound to it).
					// The suite publishes its test messages with it too.
					NewPublisher:       func(t *testing.T) broker.Publisher { return b.Publisher() },
					PublishDestination: queue,
					NewSource: func(t *testing.T, prefetch int) broker.Source {
						src, err := b.Source(queue, memory.SourceConfig{Prefetch: prefetch})
						if err != nil {
							t.Fatal(err)
						}
						return src
					},
					DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
						// A real broker would consume its dead-letter queue here.
						for len(b.DeadLetters(queue)) < n && ctx.Err() == nil {
							time.Sleep(5 * time.Millisecond)
						}
						return b.DeadLetters(queue)
					},
					// For a network broker: close the connection under src.
					MakeStale: func(t *testing.T, src broker.Source) {
						src.(*memory.Source).DropConnection()
					},
				}
			},
		})
	}
	_ = TestConformance
}
