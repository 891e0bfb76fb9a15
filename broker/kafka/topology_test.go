package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// partitionCounts returns the partition count of each topic that exists.
func (e *env) partitionCounts(t testing.TB, topics ...string) map[string]int {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	md, err := cli.Metadata(context.Background(), &kafkago.MetadataRequest{Topics: topics})
	if err != nil {
		t.Fatalf("Metadata: %v", err)
	}
	out := map[string]int{}
	for _, tp := range md.Topics {
		if tp.Error == nil {
			out[tp.Name] = len(tp.Partitions)
		}
	}
	return out
}

// Issue 10 item 3 (Kafka protocol, in-process kfake cluster):
// DeclareTopology creates the topic and its dead-letter topic with the
// partitions of Config.Topology, a second call is a no-op, and the Source
// consumes from the topic it declared.
func TestDeclareTopologyCreatesTheTopicAndItsDeadLetterTopic(t *testing.T) {
	e := newEnv(t)
	topic := fmt.Sprintf("declared-%d-%d", os.Getpid(), topicSeq.Add(1))
	cfg := e.config(topic, "declared")
	cfg.Topology = kafka.Topology{Partitions: 3, ReplicationFactor: 1}
	src := newSource(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := src.DeclareTopology(ctx); err != nil {
		t.Fatalf("DeclareTopology: %v", err)
	}
	got := e.partitionCounts(t, topic, topic+".dlt")
	if got[topic] != 3 || got[topic+".dlt"] != 3 {
		t.Errorf("after DeclareTopology: partitions %v; want 3 for %s and %s.dlt", got, topic, topic)
	}
	if err := src.DeclareTopology(ctx); err != nil {
		t.Errorf("second DeclareTopology = %v; want nil (idempotent)", err)
	}
	e.produce(t, topic, 0, 30, func(i int) string { return itoa(i) })
	seen := newLedger()
	startMember(t, src, consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		seen.add(m.ID)
		return nil
	}))
	waitFor(t, "the 30 records", 20*time.Second, func() bool { return seen.distinct() == 30 })
}

// A Topology the broker could not take is invalid configuration.
func TestTopologyIsValidated(t *testing.T) {
	for _, tp := range []kafka.Topology{{Partitions: -1}, {ReplicationFactor: -2}, {ReplicationFactor: 1 << 16}} {
		cfg := kafka.Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t", Topology: tp}
		if _, err := kafka.NewSource(cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewSource(Topology %+v) = %v; want ErrInvalidConfig", tp, err)
		}
	}
}

// Issue 10 item 2 (Kafka protocol, in-process kfake cluster): a Publish to a
// topic that does not exist creates nothing and says which topic is missing.
func TestPublishToAnUnknownTopicIsAClearError(t *testing.T) {
	e := newEnv(t)
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, BatchTimeout: time.Millisecond, WriteTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	missing := fmt.Sprintf("missing-%d-%d", os.Getpid(), topicSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.Publish(ctx, missing, &broker.Message{Body: []byte("x")})
	if !errors.Is(err, kafkago.UnknownTopicOrPartition) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Publish to a missing topic = %v; want an error wrapping UnknownTopicOrPartition that names %s", err, missing)
	}
	if n := e.partitionCounts(t, missing); n[missing] != 0 {
		t.Errorf("the missing topic was created (%d partitions); want it left missing", n[missing])
	}
}

// Issue 10 item 2: Publish with no topic and no default is refused, and
// publishing nothing is a no-op.
func TestPublishNeedsATopic(t *testing.T) {
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: []string{"localhost:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if err := p.Publish(context.Background(), "", &broker.Message{Body: []byte("x")}); err == nil {
		t.Error(`Publish(ctx, "", msg) with no default Topic = nil; want an error`)
	}
	if err := p.Publish(context.Background(), "t"); err != nil {
		t.Errorf("Publish of no messages = %v; want nil", err)
	}
}
