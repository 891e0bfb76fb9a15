package memory_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/memory"
)

// TestConformance runs the public conformance suite against the memory
// broker, with every capability declared but UnknownDestination: queues are
// created on first use, so no destination is unknown.
func TestConformance(t *testing.T) {
	var n atomic.Int64
	brokertest.Run(t, brokertest.Harness{
		Capabilities: brokertest.Capabilities{
			DeliveryCount:        true,
			DurableDeliveryCount: true,
			Prefetch:             true,
			DelayedRequeue:       true,
			StaleDeliveries:      true,
			PublishedID:          true,
		},
		Setup: func(t *testing.T) brokertest.Fixture {
			b := caseBroker(t)
			queue := fmt.Sprintf("conformance-%d", n.Add(1))
			return brokertest.Fixture{
				Destination:           queue,
				DeadLetterDestination: memory.DeadLetterQueue(queue),
				NewPublisher:          func(t *testing.T) broker.Publisher { return b.Publisher() },
				PublishDestination:    queue,
				NewSource: func(t *testing.T, prefetch int) broker.Source {
					src, err := b.Source(queue, memory.SourceConfig{Prefetch: prefetch})
					if err != nil {
						t.Fatalf("Source(%q, prefetch %d) = %v", queue, prefetch, err)
					}
					return src
				},
				DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
					for {
						dead := b.DeadLetters(queue)
						if len(dead) >= n {
							return dead
						}
						select {
						case <-ctx.Done():
							return dead
						case <-time.After(5 * time.Millisecond):
						}
					}
				},
				MakeStale: func(t *testing.T, src broker.Source) {
					src.(*memory.Source).DropConnection()
				},
			}
		},
	})
}

var (
	caseBrokersMu sync.Mutex
	caseBrokers   = map[*testing.T]*memory.Broker{}
)

// caseBroker returns the broker of the case t, made on first use and closed
// when the case ends: the fixtures of one case are on the same broker, as
// brokertest.Harness.Setup requires.
func caseBroker(t *testing.T) *memory.Broker {
	caseBrokersMu.Lock()
	defer caseBrokersMu.Unlock()
	if b := caseBrokers[t]; b != nil {
		return b
	}
	b := memory.NewBroker()
	caseBrokers[t] = b
	t.Cleanup(func() {
		b.Close()
		caseBrokersMu.Lock()
		delete(caseBrokers, t)
		caseBrokersMu.Unlock()
	})
	return b
}
