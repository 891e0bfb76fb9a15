package franz_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/franz"
)

// The public conformance suite, against the Kafka protocol (in-process kfake
// cluster). Capabilities as the kafka adapter's: Kafka has no per-message
// nack, so requeues are redelivered in process and counted there
// (DeliveryCount, DelayedRequeue); a new member starts again at Attempt 1
// (no DurableDeliveryCount); MaxInFlight bounds a partition, not a source
// (no Prefetch). StaleDeliveries is covered by fence_test.go instead. The
// publisher refuses a topic that does not exist (UnknownDestination); a
// record's ID is its topic/partition/offset, not one the producer sets (no
// PublishedID). The Source is a broker.DeadLetterSource, so the suite's
// dead-letter cases run too.
func TestConformance(t *testing.T) {
	brokertest.Run(t, conformanceHarness(newEnv(t), "conformance", nil))
}

// conformanceHarness is the suite's harness on e: each case a topic and a
// group of its own named after name, and a Source with the retry topics of
// tiers (created for each case) when there are any.
func conformanceHarness(e *env, name string, tiers []time.Duration) brokertest.Harness {
	var groups atomic.Int64
	return brokertest.Harness{
		Capabilities: brokertest.Capabilities{DeliveryCount: true, DelayedRequeue: true, UnknownDestination: true},
		Quiet:        500 * time.Millisecond,
		Setup: func(t *testing.T) brokertest.Fixture {
			topic := e.topic(t, name, partitions)
			group := "g-" + name + "-" + strconv.Itoa(int(groups.Add(1)))
			for _, d := range tiers {
				e.createTopic(t, franz.RetryTopicName(topic, group, d), partitions)
			}
			return brokertest.Fixture{
				Destination:           topic,
				DeadLetterDestination: topic + ".dlt",
				PublishDestination:    topic,
				UnknownDestination:    topic + ".missing",
				NewPublisher: func(t *testing.T) broker.Publisher {
					p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: e.brokers})
					if err != nil {
						t.Fatalf("NewPublisher = %v", err)
					}
					return p
				},
				NewSource: func(t *testing.T, prefetch int) broker.Source {
					cfg := e.config(topic, group)
					// The suite holds several deliveries at once (distinct
					// keys): per-key lanes let it, as a by-partition source
					// would block on a partition's first record.
					cfg.Ordering = franz.ByKey
					cfg.MaxInFlight = max(prefetch, 1)
					cfg.RetryTopics = tiers
					return newSource(t, cfg)
				},
				DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
					var out []broker.Message
					for _, r := range e.readAll(ctx, t, topic+".dlt", n) {
						h := map[string]string{}
						for _, x := range r.Headers {
							h[x.Key] = string(x.Value)
						}
						out = append(out, broker.Message{Topic: r.Topic, Key: r.Key, Body: r.Value, Header: h, Time: r.Timestamp})
					}
					return out
				},
			}
		},
	}
}
