package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// kafkaFixture starts an in-process Kafka cluster (kfake: the Kafka
// protocol, see KAFKA_TESTING.md) that the binary reaches at its addresses,
// with a topic and its dead-letter topic, and a real Source in a consumer
// group that dead-letters the seeds and takes what the redrives send back.
func kafkaFixture(t *testing.T) (fixture, string) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatalf("kfake.NewCluster: %v", err)
	}
	t.Cleanup(c.Close)
	brokers := c.ListenAddrs()
	topic := fmt.Sprintf("orders-%08x", rand.Uint32())
	tr := &kafkago.Transport{}
	defer tr.CloseIdleConnections()
	cli := &kafkago.Client{Addr: kafkago.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}
	resp, err := cli.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: 1, ReplicationFactor: 1},
		{Topic: topic + ".dlt", NumPartitions: 1, ReplicationFactor: 1},
	}})
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	for name, err := range resp.Errors {
		if err != nil {
			t.Fatalf("CreateTopics %s: %v", name, err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, err := kafka.NewSource(kafka.Config{
		Brokers: brokers, GroupID: topic + "-workers", Topic: topic,
		HeartbeatInterval: 100 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 3 * time.Second,
		RebalanceDrainTimeout: time.Second, JoinGroupBackoff: 100 * time.Millisecond, MaxWait: 100 * time.Millisecond,
		CommitInterval: 100 * time.Millisecond, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers, Topic: topic, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = pub.Close(ctx)
		_ = src.Close(ctx)
	})
	receive := func(ctx context.Context) (broker.Delivery, error) { return src.Receive(ctx) }
	f := fixture{
		name: "Kafka protocol (in-process kfake cluster)",
		run: func(t *testing.T, args ...string) result {
			t.Helper()
			return queuekit(t, []string{"KAFKA_BROKERS=" + strings.Join(brokers, ",")}, append(args, "--topic", topic)...)
		},
		deadLetter: func(t *testing.T, letters []seedLetter) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, l := range letters {
				if err := pub.Publish(ctx, topic, &broker.Message{Key: []byte("customer-1"), Body: []byte(l.body), Header: l.header}); err != nil {
					t.Fatal(err)
				}
				d, err := receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				reason := l.reason
				reason.Time = time.Now()
				if err := d.DeadLetter(ctx, reason); err != nil {
					t.Fatal(err)
				}
			}
		},
		arrived: func(t *testing.T) []string { return drain(t, receive) },
	}
	return f, topic
}

// The operator scenario against the Kafka protocol (in-process kfake
// cluster), through the binary.
func TestScenarioKafka(t *testing.T) {
	f, topic := kafkaFixture(t)
	runScenario(t, f, topic)
}

// A Kafka broker address where nothing listens: exit 3.
func TestKafkaConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r := queuekit(t, nil, "dlq", "list", "--topic", "orders", "--kafka-brokers", addr, "--timeout", "5s")
	wantCode(t, r, exitConnect)
	if !strings.Contains(r.stderr, "connection refused") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}
