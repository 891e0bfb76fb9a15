package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

func TestSourceHandlesEveryRecordOnceAndCommitsEndOffsets(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "basic")
	const n = 2000
	e.produce(t, topic, 0, n, func(i int) string { return "k" + itoa(i%50) })

	l := newLedger()
	src := newSource(t, e.config(topic, "g-basic"))
	m := startMember(t, src, consumer.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
		l.add(msg.ID)
		return nil
	}), consumer.WithConcurrency(8))
	waitFor(t, "every record handled", 30*time.Second, func() bool { return l.distinct() == n })
	m.stop(t)

	if d := l.duplicates(); d != 0 {
		t.Errorf("duplicates = %d; want 0", d)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-basic", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}
