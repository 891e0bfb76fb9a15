package kafka_test

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/kafka"
)

// TestKillSwitchOutage is issue 14's outage test against the Kafka protocol
// (in-process kfake cluster, or QUEUEKIT_KAFKA_BROKERS), with
// brokertest.RunOutage: a dependency the handler calls fails every call for
// a stretch in the middle of the run. With the consumer's kill switch
// nothing reaches the dead-letter topic and every record is handled once the
// dependency is back; without it, the same outage's dead letters are
// counted. Each run has a topic (4 partitions, ByKey so that 8 handlers run
// at once), a dead-letter topic and a group of its own.
//
// The default size keeps CI short: 2,000 records, a 2 s outage, both runs at
// once. QUEUEKIT_FULL=1 runs the figures of the issue: 10,000 records, a
// 10 s outage, one run after the other:
//
//	QUEUEKIT_FULL=1 go test -count=1 -run TestKillSwitchOutage -v ./broker/kafka
func TestKillSwitchOutage(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	var groups atomic.Int64
	o := brokertest.Outage{
		Name:     "kafka",
		Parallel: true,
		Setup: func(t *testing.T) brokertest.Fixture {
			topic := e.topic(t, "outage")
			group := "g-outage-" + itoa(int(groups.Add(1)))
			return brokertest.Fixture{
				Destination:        topic,
				PublishDestination: topic,
				NewPublisher: func(t *testing.T) broker.Publisher {
					pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, BatchSize: 500, BatchTimeout: time.Millisecond})
					if err != nil {
						t.Fatalf("NewPublisher = %v", err)
					}
					return pub
				},
				NewSource: func(t *testing.T, prefetch int) broker.Source {
					cfg := e.config(topic, group)
					cfg.Ordering = kafka.ByKey
					cfg.MaxInFlight = prefetch
					return newSource(t, cfg)
				},
				DeadLetterDestination: topic + ".dlt",
				DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
					return readDeadLetterTopic(ctx, e, topic+".dlt", n)
				},
			}
		},
	}
	if os.Getenv("QUEUEKIT_FULL") == "1" && !testing.Short() {
		o.Messages, o.Duration, o.Parallel, o.WantDeadLettersWithout = 10000, 10*time.Second, false, true
	}
	brokertest.RunOutage(t, o)
}

// readDeadLetterTopic reads the dead-letter topic (one partition) from its
// start until it has n records or ctx is done.
func readDeadLetterTopic(ctx context.Context, e *env, dlt string, n int) []broker.Message {
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: e.brokers, Topic: dlt, Partition: 0, MaxWait: 100 * time.Millisecond})
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
}
