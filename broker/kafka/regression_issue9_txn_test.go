package kafka_test

import (
	"context"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// produceTransactions writes, with franz-go's transactional producer (as
// exactly-once producers do), three transactions of 10 records each over
// every partition: "c1-i" committed, "ab-i" aborted, "c3-i" committed, and
// their control records (transaction markers).
func (e *env) produceTransactions(t testing.TB, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID("i9-txn-"+topic), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		t.Fatalf("kgo.NewClient: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, txn := range []struct {
		prefix string
		commit kgo.TransactionEndTry
	}{{"c1-", kgo.TryCommit}, {"ab-", kgo.TryAbort}, {"c3-", kgo.TryCommit}} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatalf("BeginTransaction: %v", err)
		}
		for i := range 10 {
			if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(txn.prefix + itoa(i))}).FirstErr(); err != nil {
				t.Fatalf("ProduceSync: %v", err)
			}
		}
		if err := cl.EndTransaction(ctx, txn.commit); err != nil {
			t.Fatalf("EndTransaction(%v): %v", txn.commit, err)
		}
	}
}

// consumeAll runs a member on topic until want records were handled (and a
// second more, for extras to show), and returns the bodies handled, sorted.
func consumeAll(t *testing.T, e *env, cfg kafka.Config, want int) []string {
	t.Helper()
	var (
		mu     sync.Mutex
		bodies []string
	)
	m := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
		mu.Lock()
		bodies = append(bodies, string(msg.Body))
		mu.Unlock()
		return nil
	}))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(bodies)
		mu.Unlock()
		if n >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second) // records beyond want (markers, aborted ones) would show up now
	m.stop(t)
	// Markers and skipped records count as handled for the commit: the
	// committed offsets reach the end of every partition.
	end, committed := e.endOffsets(t, cfg.Topic), e.committed(t, cfg.GroupID, cfg.Topic)
	for p := range partitions {
		if committed[p] != end[p] {
			t.Errorf("partition %d: committed %d; want the end %d (past the transaction markers)", p, committed[p], end[p])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	sort.Strings(bodies)
	return bodies
}

func wantBodies(prefixes ...string) []string {
	var out []string
	for _, p := range prefixes {
		for i := range 10 {
			out = append(out, p+itoa(i))
		}
	}
	sort.Strings(out)
	return out
}

// Issue 9 item 5 — Kafka protocol (in-process kfake cluster): on a topic
// written by a transactional producer, handlers see exactly the records of
// committed transactions: neither the records of the aborted transaction
// nor the control records (transaction markers). Before the fix the fetch
// was read-uncommitted and markers were handed out as records.
func TestIssue9TransactionalTopicIsReadCommitted(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "i9-txn")
	e.produceTransactions(t, topic)
	got := consumeAll(t, e, e.config(topic, "g-i9-txn"), 20)
	want := wantBodies("c1-", "c3-")
	t.Logf("handled %d records: %q", len(got), got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("handled %q;\nwant %q (committed transactions only, no markers)", got, want)
	}
}

// Issue 9 item 5: Config.Isolation ReadUncommitted hands out the records
// of aborted transactions too — but never the control records.
func TestIssue9ReadUncommittedSeesAbortedRecordsButNoMarkers(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "i9-txnru")
	e.produceTransactions(t, topic)
	cfg := e.config(topic, "g-i9-txnru")
	cfg.Isolation = kafka.ReadUncommitted
	got := consumeAll(t, e, cfg, 30)
	want := wantBodies("ab-", "c1-", "c3-")
	t.Logf("handled %d records", len(got))
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("handled %q;\nwant %q (every data record, no markers)", got, want)
	}
}
