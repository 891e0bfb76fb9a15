package kafkatest_test

import (
	"strconv"
	"testing"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/internal/kafkatest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The helpers the scenarios check adapters with, checked on their own
// against the Kafka protocol (in-process kfake cluster): a fresh topic has
// Partitions partitions and a dead-letter topic; Produce writes n records
// partitioned by key; a group that never committed has -1 everywhere; Read
// returns the records of partition 0 with their bodies.
func TestClusterHelpers(t *testing.T) {
	c := kafkatest.NewCluster(t)
	t.Logf("running against %s", c.What)
	topic := c.Topic(t, "helpers")
	const n = 100
	c.Produce(t, topic, 0, n, func(i int) string { return "k" + strconv.Itoa(i%10) })
	end := c.EndOffsets(t, topic)
	total := int64(0)
	for p := range kafkatest.Partitions {
		total += end[p]
	}
	if len(end) != kafkatest.Partitions || total != n {
		t.Errorf("EndOffsets(%s) = %v; want %d partitions totalling %d", topic, end, kafkatest.Partitions, n)
	}
	for p, off := range c.Committed(t, "nobody", topic) {
		if off != -1 {
			t.Errorf("Committed(nobody) partition %d = %d; want -1", p, off)
		}
	}
	c.Produce(t, topic+".dlt", 0, 3, func(int) string { return "k" })
	got := c.Read(t, topic+".dlt", func(r []kafkatest.Record) bool { return len(r) >= 3 })
	for i, r := range got {
		if r.Body != strconv.Itoa(i) || r.Offset != int64(i) || r.Key != "k" {
			t.Errorf("Read record %d = %+v; want body %d at offset %d, key k", i, r, i, i)
		}
	}
}
