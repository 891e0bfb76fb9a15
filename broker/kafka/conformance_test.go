package kafka_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/kafka"
)

// The public conformance suite, against the Kafka protocol (in-process kfake
// cluster, or QUEUEKIT_KAFKA_BROKERS). Capabilities: Kafka has no
// per-message nack, so requeues are redelivered in process and counted there
// (DeliveryCount, DelayedRequeue); a new member starts again at Attempt 1
// (no DurableDeliveryCount); MaxInFlight bounds a partition, not a source
// (no Prefetch). StaleDeliveries is covered by
// TestDeliveryOutlivingItsGenerationIsFencedAndNotCommitted instead. The
// publisher refuses a topic that does not exist (UnknownDestination); a
// record's ID is its topic/partition/offset, not one the producer sets (no
// PublishedID). The Source is a broker.DeadLetterSource, so the suite's
// dead-letter cases run too (list, redrive, purge, the redrive limit,
// unknown ids) on Source.DeadLetters.
func TestConformance(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	brokertest.Run(t, conformanceHarness(e, "conformance", nil))
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
			topic := e.topic(t, name)
			group := "g-" + name + "-" + itoa(int(groups.Add(1)))
			for _, d := range tiers {
				e.createTopic(t, kafka.RetryTopicName(topic, group, d), partitions)
			}
			return brokertest.Fixture{
				Destination:           topic,
				PublishDestination:    topic,
				UnknownDestination:    topic + ".missing",
				DeadLetterDestination: topic + ".dlt",
				NewPublisher: func(t *testing.T) broker.Publisher {
					pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, BatchTimeout: time.Millisecond})
					if err != nil {
						t.Fatalf("NewPublisher = %v", err)
					}
					return pub
				},
				NewSource: func(t *testing.T, prefetch int) broker.Source {
					cfg := e.config(topic, group)
					// The suite holds several deliveries at once (distinct
					// keys): per-key lanes let it, as a by-partition source
					// would block on a partition's first record.
					cfg.Ordering = kafka.ByKey
					cfg.MaxInFlight = max(prefetch, 1)
					cfg.RetryTopics = tiers
					return newSource(t, cfg)
				},
				DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
					r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: e.brokers, Topic: topic + ".dlt", Partition: 0, MaxWait: 100 * time.Millisecond})
					defer r.Close()
					var out []broker.Message
					for len(out) < n {
						m, err := r.FetchMessage(ctx)
						if err != nil {
							break
						}
						h := map[string]string{}
						for _, x := range m.Headers {
							h[x.Key] = string(x.Value)
						}
						out = append(out, broker.Message{Topic: m.Topic, Key: m.Key, Body: m.Value, Header: h, Time: m.Time})
					}
					return out
				},
			}
		},
	}
}
