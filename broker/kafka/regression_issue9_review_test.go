package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// Regression tests for the review of issue 9 items 4–8. They run against the
// Kafka protocol (in-process kfake cluster) unless QUEUEKIT_KAFKA_BROKERS
// names a real cluster; those that need kfake's topic control are skipped
// there.

// topicN creates a fresh topic with n partitions and its dead-letter topic.
func (e *env) topicN(t testing.TB, name string, n int) string {
	t.Helper()
	topic := name + "-" + itoa(int(topicSeq.Add(1)))
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: n, ReplicationFactor: 1},
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
	return topic
}

// watchAccounting checks the source's per-partition bookkeeping every few
// milliseconds until the test ends and reports the first violation.
func watchAccounting(t *testing.T, src *kafka.Source) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	var first atomic.Pointer[error]
	go func() {
		defer close(done)
		for {
			if err := kafka.CheckAccounting(src); err != nil {
				first.CompareAndSwap(nil, &err)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		if err := first.Load(); err != nil {
			t.Errorf("bookkeeping: %v", *err)
		}
	})
}

func countPrefix(mu *sync.Mutex, seen map[string]bool, prefix string) int {
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for b := range seen {
		if strings.HasPrefix(b, prefix) {
			n++
		}
	}
	return n
}

// Issue 9 review, item 1 — Kafka protocol (in-process kfake cluster): a topic
// recreated while records of a partition wait for Receive (the only worker
// is busy; or the consumer was paused, and since issue 10 a paused Source
// fetches nothing, so the reset is found at Resume while the old records wait
// for the slow handler). The reset drops them; before the fix
// the records queued behind the dropped one on its lane were never taken
// off the partition's held count, so the partition got too little room,
// its fetcher was never woken, and it stopped for good (2 of 30 new records
// handled). The bookkeeping is checked throughout.
func TestIssue9ReviewTopicRecreatedWhileRecordsWaitForReceiveDoesNotStall(t *testing.T) {
	t.Run("worker busy on another partition", func(t *testing.T) {
		e := newEnv(t)
		e.needKfake(t)
		topic := e.topicN(t, "i9r-busy", 2)
		cfg := e.config(topic, "g-i9r-busy")
		cfg.MaxInFlight = 8
		reset := newLogWatch("beyond the end")
		cfg.Logger = slog.New(reset)
		var (
			mu               sync.Mutex
			seen             = map[string]bool{}
			once             sync.Once
			blocked, release = make(chan struct{}), make(chan struct{})
		)
		src := newSource(t, cfg)
		startMember(t, src, consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			if string(m.Body) == "p0-0" {
				once.Do(func() { close(blocked); <-release })
			}
			mu.Lock()
			seen[string(m.Body)] = true
			mu.Unlock()
			return nil
		}), consumer.WithConcurrency(1))
		watchAccounting(t, src)
		e.produceTo(t, topic, 0, 1, "p0-")
		<-blocked
		e.produceTo(t, topic, 1, 7, "p1-")
		time.Sleep(500 * time.Millisecond) // partition 1's records fetched, waiting for the busy worker
		if err := e.cluster.DeleteTopic(topic); err != nil {
			t.Fatal(err)
		}
		if err := e.cluster.CreateTopic(topic, 2, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reset.seen:
		case <-time.After(30 * time.Second):
			t.Fatal("the partitions were not reset after the topic was recreated")
		}
		time.Sleep(500 * time.Millisecond)
		close(release)
		e.produceTo(t, topic, 1, 30, "new1-")
		deadline := time.Now().Add(30 * time.Second)
		for countPrefix(&mu, seen, "new1-") < 30 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		n := countPrefix(&mu, seen, "new1-")
		t.Logf("partition 1 of the recreated topic: %d of 30 handled", n)
		if n != 30 {
			t.Errorf("partition 1 handled %d of 30 new records: it stalled", n)
		}
	})
	t.Run("consumer paused", func(t *testing.T) {
		e := newEnv(t)
		e.needKfake(t)
		topic := e.topicN(t, "i9r-paused", 1)
		e.produceTo(t, topic, 0, 20, "old-")
		cfg := e.config(topic, "g-i9r-paused")
		cfg.MaxInFlight = 8
		reset := newLogWatch("beyond the end")
		cfg.Logger = slog.New(reset)
		var (
			mu   sync.Mutex
			seen = map[string]bool{}
		)
		src := newSource(t, cfg)
		m := startMember(t, src, consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			if strings.HasPrefix(string(m.Body), "old2-") {
				// Slow, so that old records are still queued or out when
				// the fetcher finds the log reset after Resume.
				time.Sleep(100 * time.Millisecond)
			}
			mu.Lock()
			seen[string(m.Body)] = true
			mu.Unlock()
			return nil
		}), consumer.WithConcurrency(1))
		watchAccounting(t, src)
		waitFor(t, "the first 20 records", 30*time.Second, func() bool { return countPrefix(&mu, seen, "old-") == 20 })
		e.produceTo(t, topic, 0, 7, "old2-")
		time.Sleep(500 * time.Millisecond) // fetched; the first is out, the rest queued
		if err := m.c.Pause(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := e.cluster.DeleteTopic(topic); err != nil {
			t.Fatal(err)
		}
		if err := e.cluster.CreateTopic(topic, 1, nil); err != nil {
			t.Fatal(err)
		}
		// Since issue 10 a paused Source sends no fetch, so the fetcher finds
		// the log reset at its first fetch after Resume, while the old
		// records wait for Receive or for the slow handler.
		if err := m.c.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reset.seen:
		case <-time.After(30 * time.Second):
			t.Fatal("the partition was not reset after the topic was recreated")
		}
		e.produceTo(t, topic, 0, 30, "new-")
		deadline := time.Now().Add(30 * time.Second)
		for countPrefix(&mu, seen, "new-") < 30 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		n := countPrefix(&mu, seen, "new-")
		t.Logf("recreated topic: %d of 30 handled", n)
		if n != 30 {
			t.Errorf("handled %d of 30 new records: the partition stalled", n)
		}
		waitFor(t, "the commit of the new log's end", 30*time.Second, func() bool {
			return e.committedOf(t, "g-i9r-paused", topic, 1)[0] == 30
		})
	})
}

// Issue 9 review, item 3 — Kafka protocol (in-process kfake cluster): the
// group's committed offset lies past the last stable offset (a
// read-uncommitted member committed past a transaction still open), and a
// read-committed member takes over. Before the fix the read-committed
// member took the LSO for the end of the log, the committed offset for one
// beyond it ("log truncated"), and started over at the first offset: it
// handled all 100 committed records again and moved the committed offset
// backwards.
func TestIssue9ReviewCommittedPastTheLastStableOffsetIsNotAReset(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topicN(t, "i9r-lso", 1)
	group := "g-" + topic
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e.produceTo(t, topic, 0, 100, "before-")
	tx, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID("i9r-lso-"+topic), kgo.TransactionTimeout(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := tx.ProduceSync(ctx, &kgo.Record{Value: []byte("open-" + itoa(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	e.produceTo(t, topic, 0, 5, "after-")

	var (
		mu   sync.Mutex
		seen = map[string]bool{}
	)
	handler := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		mu.Lock()
		seen[string(m.Body)] = true
		mu.Unlock()
		return nil
	})
	cfg := e.config(topic, group)
	cfg.Isolation = kafka.ReadUncommitted
	m := startMember(t, newSource(t, cfg), handler)
	waitFor(t, "the read-uncommitted member to handle 110 records", 30*time.Second, func() bool {
		return countPrefix(&mu, seen, "") == 110
	})
	waitFor(t, "the commit of offset 110", 30*time.Second, func() bool { return e.committedOf(t, group, topic, 1)[0] == 110 })
	m.stop(t)

	mu.Lock()
	clear(seen)
	mu.Unlock()
	cfg.Isolation = kafka.ReadCommitted
	m2 := startMember(t, newSource(t, cfg), handler)
	time.Sleep(3 * time.Second)
	committed := e.committedOf(t, group, topic, 1)[0]
	m2.stop(t)
	replayed := countPrefix(&mu, seen, "before-")
	mu.Lock()
	var other []string
	for b := range seen {
		if !strings.HasPrefix(b, "before-") {
			other = append(other, b)
		}
	}
	mu.Unlock()
	t.Logf("read-committed member: %d committed records handled again, others %v; committed offset %d", replayed, other, committed)
	if replayed != 0 || len(other) != 0 {
		t.Errorf("the read-committed member handled %d records again (and %v); want none", replayed, other)
	}
	if committed != 110 {
		t.Errorf("committed offset %d; want 110 (never backwards)", committed)
	}
	_ = tx.EndTransaction(ctx, kgo.TryAbort)
}

// Issue 9 review, item 4 — Kafka protocol (in-process kfake cluster): with a
// small MaxBytes an aborted transaction spans several fetch responses
// (commit 3, abort 10, commit 3 on one partition, MaxBytes 300). Before the
// fix the request-level MaxBytes equalled the partition's, so kfake stopped
// filling the response at the request's limit, on a path that skips the
// aborted-transactions lookup: the 10 aborted records reached the handler.
// The second case puts a record batch of 1 KB (over twice MaxBytes) after
// the aborted transaction's first records: a request limit of twice the
// partition's would still be crossed there.
func TestIssue9ReviewAbortedTransactionSpanningFetchResponsesIsSkipped(t *testing.T) {
	for _, c := range []struct {
		name string
		big  bool
	}{{"small records", false}, {"a batch over twice MaxBytes", true}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.needKfake(t)
			topic := e.topicN(t, "i9r-txnspan", 1)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(topic), kgo.TransactionalID("i9r-span-"+topic),
				kgo.ProducerBatchCompression(kgo.NoCompression())) // sizes as written
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			for _, tx := range []struct {
				prefix string
				n      int
				end    kgo.TransactionEndTry
			}{{"c1-", 3, kgo.TryCommit}, {"ab-", 10, kgo.TryAbort}, {"c2-", 3, kgo.TryCommit}} {
				if err := cl.BeginTransaction(); err != nil {
					t.Fatal(err)
				}
				for i := range tx.n {
					v := fmt.Sprint(tx.prefix, i)
					if c.big && tx.prefix == "ab-" && i == 2 {
						v += strings.Repeat("x", 1000)
					}
					// One record per batch: ProduceSync waits for each.
					if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(v)}).FirstErr(); err != nil {
						t.Fatal(err)
					}
				}
				if err := cl.EndTransaction(ctx, tx.end); err != nil {
					t.Fatal(err)
				}
			}
			cfg := e.config(topic, "g-"+topic)
			cfg.MaxBytes = 300
			var (
				mu  sync.Mutex
				got []string
			)
			m := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
				mu.Lock()
				got = append(got, string(msg.Body[:min(len(msg.Body), 8)]))
				mu.Unlock()
				return nil
			}))
			waitFor(t, "the 6 committed records", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 6 })
			time.Sleep(time.Second) // room for extras to show
			m.stop(t)
			mu.Lock()
			defer mu.Unlock()
			sort.Strings(got)
			want := []string{"c1-0", "c1-1", "c1-2", "c2-0", "c2-1", "c2-2"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("handled %v; want %v (the committed records, once each)", got, want)
			}
		})
	}
}

// Issue 9 review, item 5 — Kafka protocol (in-process kfake cluster): with the
// default MaxBytes (1 MB) and DeadLetterMaxBytes, a permanently failing
// 2 MiB record — which Kafka returns whole whatever MaxBytes — is
// dead-lettered, and its partition goes on (topic and dead-letter topic
// accept 8 MiB). Before the fix the dead-letter writer's own limit was
// MaxBytes + 1 MiB: the write failed every time and the partition was held
// behind the record.
func TestIssue9ReviewLargeRecordIsDeadLetteredWithTheDefaults(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.bigTopic(t, "i9r-bigdefault", strconv.Itoa(8<<20))
	e.produceBig(t, topic)
	cfg := e.config(topic, "g-"+topic) // MaxBytes and DeadLetterMaxBytes: the defaults
	var mu sync.Mutex
	small := map[string]bool{}
	src := newSource(t, cfg)
	startMember(t, src, bigPoison(&mu, small))
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(small) }
	deadline := time.Now().Add(30 * time.Second)
	for count() < 9 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	dltEnd := e.endOffsets(t, topic+".dlt")[0]
	t.Logf("handled %d of the 9 small records around the 2 MiB one; dead-letter topic holds %d records; Status() = %+v",
		count(), dltEnd, src.Status())
	if count() != 9 {
		t.Errorf("handled %d of 9 records: the partition is held behind the 2 MiB record", count())
	}
	if dltEnd != 1 {
		t.Errorf("dead-letter topic holds %d records; want the 2 MiB one", dltEnd)
	}
}

// Issue 9 review, item 5 — Kafka protocol (in-process kfake cluster): a dead
// letter that cannot be written says which limit refused it. Before the fix
// the text always asked to raise the dead-letter topic's max.message.bytes
// "or Config.DeadLetterMaxBytes", also when the writer's own limit (then
// MaxBytes + 1 MiB by default) refused it before any request.
func TestIssue9ReviewUnwritableDeadLetterNamesTheLimitThatRefusedIt(t *testing.T) {
	for _, c := range []struct {
		name, dltMax string
		clientMax    int
		want, not    string
	}{
		{"the dead-letter topic's max.message.bytes", "", 0, "max.message.bytes", "DeadLetterMaxBytes"},
		{"Config.DeadLetterMaxBytes", strconv.Itoa(8 << 20), 1 << 20, "Config.DeadLetterMaxBytes (1048576)", "max.message.bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.needKfake(t)
			topic := e.bigTopic(t, "i9r-dltlimit", c.dltMax)
			e.produceBig(t, topic)
			cfg := e.config(topic, "g-"+topic)
			cfg.DeadLetterMaxBytes = c.clientMax
			var mu sync.Mutex
			src := newSource(t, cfg)
			// The big record's dead letter is never written: its settlement
			// never ends, and Shutdown abandons it (ctx bounds it).
			m := startMember(t, src, bigPoison(&mu, map[string]bool{}))
			m.abandons = true
			var st broker.Status
			waitFor(t, "Status().Err to report the dead letter", 30*time.Second, func() bool {
				st = src.Status()
				return errors.Is(st.Err, kafka.ErrDeadLetterUnwritable)
			})
			msg := st.Err.Error()
			t.Logf("Status().Err = %v", msg)
			if !strings.Contains(msg, c.want) || strings.Contains(msg, c.not) {
				t.Errorf("Status().Err = %q; want it to name %q and not %q", msg, c.want, c.not)
			}
		})
	}
}

// Issue 9 review, item 2 — Kafka protocol (in-process kfake cluster): a topic
// that does not exist (never created, or deleted while the group runs) must
// not make the member end generation after generation. Before the fix the
// partition watcher (kafka-go's WatchPartitionChanges) returned when it
// could not read the topic's partitions, and kafka-go ends a generation as
// soon as any of its functions returns: about 650 JoinGroup/SyncGroup
// rounds a second. The missing topic shows in Status().Err instead, and a
// topic created later is consumed.
func TestIssue9ReviewMissingTopicDoesNotStormTheGroup(t *testing.T) {
	for _, deleted := range []bool{false, true} {
		name := map[bool]string{false: "never created", true: "deleted while running"}[deleted]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.needKfake(t)
			topic := "i9r-missing-" + itoa(int(topicSeq.Add(1)))
			if deleted {
				topic = e.topicN(t, "i9r-deleted", 2)
			}
			cfg := e.config(topic, "g-"+topic)
			var rebalances atomic.Int64
			var (
				mu   sync.Mutex
				seen = map[string]bool{}
			)
			src := newSource(t, cfg)
			startMember(t, src, consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
				mu.Lock()
				seen[string(m.Body)] = true
				mu.Unlock()
				return nil
			}), consumer.WithEventHook(func(ev consumer.Event) {
				if ev.Kind == consumer.EventRebalanced {
					rebalances.Add(1)
				}
			}))
			time.Sleep(time.Second) // joined
			if deleted {
				if err := e.cluster.DeleteTopic(topic); err != nil {
					t.Fatal(err)
				}
			}
			r0 := rebalances.Load()
			time.Sleep(3 * time.Second)
			n := rebalances.Load() - r0
			st := src.Status()
			t.Logf("rebalances in 3 s with the topic missing: %d; Status() = %+v", n, st)
			if n > 2 {
				t.Errorf("%d rebalances in 3 s while the topic is missing; want at most 2", n)
			}
			if st.Err == nil {
				t.Errorf("Status().Err = nil while the topic is missing; want an error naming it")
			}
			// The topic (re)appears: its records are consumed and the
			// status clears.
			if err := e.cluster.CreateTopic(topic, 2, nil); err != nil {
				t.Fatal(err)
			}
			e.produceTo(t, topic, 1, 10, "late-")
			deadline := time.Now().Add(40 * time.Second)
			for countPrefix(&mu, seen, "late-") < 10 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if got := countPrefix(&mu, seen, "late-"); got != 10 {
				t.Errorf("handled %d of 10 records of the topic created late", got)
			}
			waitFor(t, "Status().Err to clear", 20*time.Second, func() bool { return src.Status().Err == nil })
		})
	}
}
