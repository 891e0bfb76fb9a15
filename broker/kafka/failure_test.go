package kafka_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// The restart and poison-record scenarios are shared with the franz-go
// adapter: internal/kafkatest, run by TestScenarios (scenarios_test.go).

// When the dead-letter write fails, the record is not committed: it is
// delivered again and dead-lettered once the topic accepts it.
func TestFailedDeadLetterWriteIsNotCommittedAndIsRetried(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "dltfail")
	e.produce(t, topic, 0, 5, func(int) string { return "k" })
	cfg := e.config(topic, "g-dltfail")
	cfg.DeadLetterTopic = topic + ".missing" // does not exist (yet)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	err = d.DeadLetter(wctx, broker.Reason{Err: "boom", Attempts: 1})
	wcancel()
	if err == nil {
		t.Fatal("DeadLetter to a missing topic = nil; want an error")
	}
	p, off := idOffset(d.Message().ID)
	if c := e.committed(t, "g-dltfail", topic)[p]; c > off {
		t.Errorf("committed %d after a failed dead-letter write; want nothing past %d", c, off)
	}
	// The lane stays held: nothing of the same key is handed out meanwhile.
	rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if again, err := src.Receive(rctx); err == nil {
		t.Errorf("Receive handed out %s while %s waits to be dead-lettered; want its lane held", again.Message().ID, d.Message().ID)
	}
	rcancel()

	// The dead-letter topic appears; the runtime's next try succeeds, on the
	// same delivery, without the handler running again.
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	if _, err := cli.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: cfg.DeadLetterTopic, NumPartitions: 1, ReplicationFactor: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead letter to be written", 10*time.Second, func() bool {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		defer wcancel()
		return d.DeadLetter(wctx, broker.Reason{Err: "boom", Attempts: 1}) == nil
	})
	if err := src.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := e.committed(t, "g-dltfail", topic)[p]; c != off+1 {
		t.Errorf("committed %d after the dead letter was written; want %d", c, off+1)
	}
}

func TestNewSourceRejectsInvalidConfigWithoutPanicking(t *testing.T) {
	ok := kafka.Config{Brokers: []string{"127.0.0.1:9092"}, GroupID: "g", Topic: "t"}
	tests := []struct {
		name   string
		mutate func(*kafka.Config)
		secret string
	}{
		{"no brokers", func(c *kafka.Config) { c.Brokers = nil }, ""},
		{"a URL with credentials as broker", func(c *kafka.Config) { c.Brokers = []string{"kafka://user:hunter2@h:9092"} }, "hunter2"},
		{"a broker without port", func(c *kafka.Config) { c.Brokers = []string{"localhost"} }, ""},
		{"no group", func(c *kafka.Config) { c.GroupID = "" }, ""},
		{"no topic", func(c *kafka.Config) { c.Topic = "" }, ""},
		{"dead-letter topic equal to topic", func(c *kafka.Config) { c.DeadLetterTopic = "t" }, ""},
		{"negative MaxInFlight", func(c *kafka.Config) { c.MaxInFlight = -1 }, ""},
		{"unknown ordering", func(c *kafka.Config) { c.Ordering = 7 }, ""},
		{"negative session timeout", func(c *kafka.Config) { c.SessionTimeout = -time.Second }, ""},
		{"heartbeat not below session timeout", func(c *kafka.Config) { c.HeartbeatInterval = time.Minute }, ""},
		{"drain budget not below the session timeout", func(c *kafka.Config) { c.RebalanceDrainTimeout = time.Minute }, ""},
		{"MinBytes above MaxBytes", func(c *kafka.Config) { c.MinBytes, c.MaxBytes = 10, 5 }, ""},
		{"StartOffset not first or last", func(c *kafka.Config) { c.StartOffset = 42 }, ""},
		{"MaxWait not below the drain budget", func(c *kafka.Config) { c.MaxWait = time.Hour }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mutate(&cfg)
			src, err := kafka.NewSource(cfg)
			if !errors.Is(err, broker.ErrInvalidConfig) {
				if src != nil {
					src.Close(context.Background())
				}
				t.Fatalf("NewSource(%s) = %v; want an error wrapping ErrInvalidConfig", tt.name, err)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q shows the credentials", err)
			}
		})
	}
	src, err := kafka.NewSource(ok)
	if err != nil {
		t.Fatalf("NewSource(minimal config) = %v; want nil", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Errorf("Close of a source that never joined = %v", err)
	}
	if _, err := src.Receive(context.Background()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Receive after Close = %v; want ErrSourceClosed", err)
	}
	if _, err := kafka.NewPublisher(kafka.PublisherConfig{}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewPublisher(no brokers) = %v; want ErrInvalidConfig", err)
	}
}

// Lag is the committed offset's distance to the high-water mark, per
// partition, read from the brokers.
func TestLagReportsHighWatermarkMinusCommitted(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "lag")
	const n = 400
	e.produce(t, topic, 0, n, func(i int) string { return strconv.Itoa(i) })
	src := newSource(t, e.config(topic, "g-lag"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lag, err := src.Lag(ctx)
	if err != nil {
		t.Fatalf("Lag before any commit: %v", err)
	}
	total := int64(0)
	for _, l := range lag {
		total += l.Lag
		if l.Committed != -1 {
			t.Errorf("partition %d: Committed = %d before any commit; want -1", l.Partition, l.Committed)
		}
	}
	if len(lag) != partitions || total != n {
		t.Fatalf("Lag() before consuming = %v (total %d); want %d partitions totalling %d", lag, total, partitions, n)
	}
	// Handle 100 records, then close (final commit).
	for range 100 {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	src2 := newSource(t, e.config(topic, "g-lag"))
	defer src2.Close(context.Background())
	lag, err = src2.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	end, committed := e.endOffsets(t, topic), e.committed(t, "g-lag", topic)
	total = 0
	for _, l := range lag {
		total += l.Lag
		if l.HighWatermark != end[l.Partition] || l.Lag != end[l.Partition]-max(committed[l.Partition], 0) {
			t.Errorf("partition %d: %+v; want high-water mark %d and lag %d", l.Partition, l, end[l.Partition], end[l.Partition]-max(committed[l.Partition], 0))
		}
	}
	t.Logf("after 100 acks: lag %v (total %d)", lag, total)
	if total != n-100 {
		t.Errorf("total lag = %d; want %d", total, n-100)
	}

	// Backlog (broker.BacklogReporter) reports the same: the total, each
	// partition's lag, and Consumers -1 (Kafka does not say).
	b, err := src2.Backlog(ctx)
	if err != nil {
		t.Fatalf("Backlog: %v", err)
	}
	if b.Messages != total || b.Consumers != -1 || len(b.Partitions) != partitions {
		t.Errorf("Backlog = %+v; want Messages %d, Consumers -1, %d partitions", b, total, partitions)
	}
	for _, l := range lag {
		if got, ok := b.Partitions[l.Partition]; !ok || got != l.Lag {
			t.Errorf("Backlog.Partitions[%d] = %d, %v; want %d as Lag reports", l.Partition, got, ok, l.Lag)
		}
	}
}
