package kafka_test

import (
	"context"
	"math"
	"strconv"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// Regression (review 2026-11-23): a committed offset beyond the end of the
// partition (log truncated, topic recreated) was never reset, so records
// produced below it were silently never handled (0 of 40). Now the source
// starts over as for a partition without a committed offset, and commits the
// new position.
func TestCommittedOffsetBeyondTheEndIsReset(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "rv-oor")
	group := "g-rv-oor"
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.OffsetCommit(context.Background(), &kafkago.OffsetCommitRequest{
		GroupID: group, GenerationID: -1,
		Topics: map[string][]kafkago.OffsetCommit{topic: {{Partition: 0, Offset: 1000}, {Partition: 1, Offset: 1000}, {Partition: 2, Offset: 1000}, {Partition: 3, Offset: 1000}}},
	})
	if err != nil {
		t.Fatalf("OffsetCommit: %v", err)
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				t.Fatalf("OffsetCommit partition %d: %v", p.Partition, p.Error)
			}
		}
	}
	t.Logf("committed before start: %v", e.committed(t, group, topic))
	e.produce(t, topic, 0, 40, func(i int) string { return "k" + strconv.Itoa(i) })
	l := newLedger()
	m := startMember(t, newSource(t, e.config(topic, group)), consumer.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
		l.add(msg.ID)
		return nil
	}))
	waitFor(t, "all 40 records", 20*time.Second, func() bool { return l.distinct() == 40 })
	m.stop(t)
	t.Logf("handled %d of 40 records; committed %v; end %v", l.distinct(), e.committed(t, group, topic), e.endOffsets(t, topic))
	if l.distinct() != 40 {
		t.Errorf("handled %d of 40 records produced after the offset went out of range", l.distinct())
	}
	for p, off := range e.committed(t, group, topic) {
		if off != 10 {
			t.Errorf("committed offset of partition %d = %d; want 10 (the new end), not the stale 1000", p, off)
		}
	}
}

// Regression (review 2026-11-23): a MaxBytes that kafka-go's Conn refuses on
// every fetch passed validation, leaving a source that never consumed.
func TestNewSourceRejectsMaxBytesKafkaGoRefuses(t *testing.T) {
	cfg := kafka.Config{Brokers: []string{"127.0.0.1:9092"}, Topic: "t", GroupID: "g", MaxBytes: math.MaxInt32}
	if _, err := kafka.NewSource(cfg); err == nil {
		t.Error("NewSource(MaxBytes = MaxInt32) = nil error; want ErrInvalidConfig")
	}
}
