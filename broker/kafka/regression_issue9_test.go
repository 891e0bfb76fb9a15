package kafka_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Regression tests for issue 9 (items 4–8), through the public API. They run
// against the Kafka protocol (in-process kfake cluster) unless
// QUEUEKIT_KAFKA_BROKERS names a real cluster; those that need kfake's fault
// injection are skipped there.

// produceTo writes n records with bodies prefix0…prefix(n-1) to one
// partition, through a fresh client (so that it sees partitions added a
// moment ago).
func (e *env) produceTo(t testing.TB, topic string, partition, n int, prefix string) {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	recs := make([]kafkago.Record, n)
	for i := range recs {
		recs[i] = kafkago.Record{Key: kafkago.NewBytes([]byte(prefix)), Value: kafkago.NewBytes([]byte(prefix + strconv.Itoa(i)))}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := cli.Produce(context.Background(), &kafkago.ProduceRequest{
			Topic: topic, Partition: partition, RequiredAcks: kafkago.RequireAll, Records: kafkago.NewRecordReader(recs...),
		})
		if err == nil && resp.Error == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Produce to %s/%d: %v / %v", topic, partition, err, resp)
		}
		time.Sleep(100 * time.Millisecond) // metadata of a new partition or topic settling
	}
}

// committedOf returns the group's committed offsets of partitions 0…n-1.
func (e *env) committedOf(t testing.TB, group, topic string, n int) map[int]int64 {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	ids := make([]int, n)
	for i := range ids {
		ids[i] = i
	}
	resp, err := cli.OffsetFetch(context.Background(), &kafkago.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err != nil {
		t.Fatalf("OffsetFetch: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// Issue 9 item 4 — Kafka protocol (in-process kfake cluster): partitions added
// to the topic while the group runs are consumed and committed without an
// unrelated rebalance. Before the fix they stayed unconsumed (lag grew) until
// some other member joined or left.
func TestIssue9PartitionsAddedWhileTheGroupRunsAreConsumed(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "i9-addparts")
	group := "g-i9-addparts"
	e.produce(t, topic, 0, 40, func(i int) string { return "k" + itoa(i) })
	var (
		mu     sync.Mutex
		bodies = map[string]bool{}
	)
	cfg := e.config(topic, group)
	startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		mu.Lock()
		bodies[string(m.Body)] = true
		mu.Unlock()
		return nil
	}))
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(bodies) }
	waitFor(t, "the first 40 records", 20*time.Second, func() bool { return count() == 40 })

	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.CreatePartitions(context.Background(), &kafkago.CreatePartitionsRequest{
		Topics: []kafkago.TopicPartitionsConfig{{Name: topic, Count: 2 * partitions}},
	})
	if err != nil {
		t.Fatalf("CreatePartitions: %v", err)
	}
	for name, err := range resp.Errors {
		if err != nil {
			t.Fatalf("CreatePartitions %s: %v", name, err)
		}
	}
	const perNew = 10
	for p := partitions; p < 2*partitions; p++ {
		e.produceTo(t, topic, p, perNew, "new"+itoa(p)+"-")
	}
	want := 40 + partitions*perNew
	// Generous: the membership notices new partitions within
	// PartitionWatchInterval (5 s by default) and rebalances.
	deadline := time.Now().Add(30 * time.Second)
	for count() < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	committed := map[int]int64{}
	for time.Now().Before(deadline) {
		committed = e.committedOf(t, group, topic, 2*partitions)
		done := true
		for p := partitions; p < 2*partitions; p++ {
			done = done && committed[p] == perNew
		}
		if done {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("handled %d of %d records; committed %v", count(), want, committed)
	if count() != want {
		t.Errorf("handled %d of %d records: the records of the added partitions were not consumed", count(), want)
	}
	for p := partitions; p < 2*partitions; p++ {
		if committed[p] != perNew {
			t.Errorf("added partition %d: committed offset %d; want %d", p, committed[p], perNew)
		}
	}
}

// failCommits makes the cluster answer the next len(fail) OffsetCommit
// requests with fail[i]: a Kafka error code for every partition, or, for 0,
// a closed connection (a network error). It reports how many it failed.
func (e *env) failCommits(fail ...int16) func() int {
	var (
		mu sync.Mutex
		n  int
	)
	e.cluster.ControlKey(kmsg.OffsetCommit.Int16(), func(r kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if n == len(fail) {
			return nil, nil, false
		}
		e.cluster.KeepControl()
		code := fail[n]
		n++
		if code == 0 {
			return nil, errors.New("injected: connection closed"), true
		}
		req := r.(*kmsg.OffsetCommitRequest)
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewOffsetCommitResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// Issue 9 item 7 — Kafka protocol (in-process kfake cluster): the commit at
// the end of a generation (here Close) is retried within the drain budget
// when the coordinator answers with a retriable error or the connection
// breaks, so the next owner does not handle again what was handled. Before
// the fix one failed final commit made the next member redo 50 of 50.
func TestIssue9FinalCommitIsRetriedOnRetriableErrors(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "i9-commit")
	group := "g-i9-commit"
	const n = 50
	e.produce(t, topic, 0, n, func(i int) string { return "k" + itoa(i) })
	cfg := e.config(topic, group)
	cfg.CommitInterval = time.Hour // only the final commit commits
	first := newLedger()
	a := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		first.add(m.ID)
		return nil
	}))
	waitFor(t, "the first member to handle every record", 20*time.Second, func() bool { return first.distinct() == n })
	failed := e.failCommits(int16(kerr.CoordinatorLoadInProgress.Code), int16(kerr.NotCoordinator.Code), 0,
		int16(kerr.RebalanceInProgress.Code))
	a.stop(t)
	committed := e.committed(t, group, topic)
	end := e.endOffsets(t, topic)
	t.Logf("injected %d failed commits at Close; committed %v; end %v", failed(), committed, end)

	second := newLedger()
	startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		second.add(m.ID)
		return nil
	}))
	// Nothing is expected; give a redelivery time to show up.
	time.Sleep(2 * time.Second)
	t.Logf("the next member handled %d of the %d records again", second.distinct(), n)
	if second.distinct() != 0 {
		t.Errorf("the next member handled %d of %d records again: the final commit was not retried", second.distinct(), n)
	}
	for p := range partitions {
		if committed[p] != end[p] {
			t.Errorf("partition %d: committed %d; want the end %d", p, committed[p], end[p])
		}
	}
}

// logWatch is a slog.Handler that reports when a message containing a
// given text was logged.
type logWatch struct {
	text  string
	level slog.Level // the least level that counts; zero: any
	seen  chan struct{}
	once  *sync.Once
}

func newLogWatch(text string) *logWatch {
	return &logWatch{text: text, level: slog.LevelDebug, seen: make(chan struct{}), once: new(sync.Once)}
}

func (w *logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (w *logWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= w.level && strings.Contains(r.Message, w.text) {
		w.once.Do(func() { close(w.seen) })
	}
	return nil
}
func (w *logWatch) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *logWatch) WithGroup(string) slog.Handler      { return w }

// Issue 9 item 8 — Kafka protocol (in-process kfake cluster): a topic deleted
// and recreated while a record is being handled. The partition starts over
// at the new log's first offset; the records of the new incarnation have
// offsets at or below those of the old one still tracked. Before the fix the
// old offset tracker was kept while work was pending, so the new records
// below the old offsets were dropped as duplicates (and committed past).
// Now the reset starts a new tracker and fences the old incarnation's
// in-flight record: settling it does not touch the new tracker.
func TestIssue9TopicRecreatedWhileARecordIsInFlightLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "i9-recreate")
	group := "g-i9-recreate"
	const old, fresh = 20, 30
	e.produce(t, topic, 0, old, func(int) string { return "same" }) // one partition
	cfg := e.config(topic, group)
	reset := newLogWatch("beyond the end")
	cfg.Logger = slog.New(reset)
	var (
		mu       sync.Mutex
		newSeen  = map[string]bool{}
		oldSeen  int
		blocked  = make(chan struct{})
		release  = make(chan struct{})
		once     sync.Once
		staleErr error
	)
	obs := consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, err error) {
		if err != nil && errors.Is(err, broker.ErrStaleDelivery) {
			mu.Lock()
			staleErr = err
			mu.Unlock()
		}
	})
	src := newSource(t, cfg)
	startMember(t, src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		first := false
		once.Do(func() { first = true })
		if first {
			close(blocked)
			<-release
		}
		mu.Lock()
		defer mu.Unlock()
		if b := string(m.Body); strings.HasPrefix(b, "new-") {
			newSeen[b] = true
		} else {
			oldSeen++
		}
		return nil
	}), obs)
	watchAccounting(t, src) // the reset keeps held == lanes + queued (review of item 8)
	<-blocked
	if err := e.cluster.DeleteTopic(topic); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	if err := e.cluster.CreateTopic(topic, partitions, nil); err != nil {
		t.Fatalf("CreateTopic: %v", err)
	}
	select {
	case <-reset.seen: // the fetcher saw its offset beyond the new log's end
	case <-time.After(20 * time.Second):
		t.Fatal("the source did not notice that the topic was recreated")
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: topic, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	for i := range fresh {
		if err := pub.Publish(context.Background(), "", &broker.Message{Key: []byte("same"), Body: []byte("new-" + itoa(i))}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	time.Sleep(300 * time.Millisecond) // let the new records be fetched while the old one is still in flight
	close(release)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(newSeen) }
	deadline := time.Now().Add(20 * time.Second)
	for count() < fresh && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("new incarnation: %d of %d records handled; old incarnation records handled: %d; stale settlement: %v",
		len(newSeen), fresh, oldSeen, staleErr)
	if len(newSeen) != fresh {
		var missing []string
		for i := range fresh {
			if !newSeen["new-"+itoa(i)] {
				missing = append(missing, itoa(i))
			}
		}
		t.Errorf("handled %d of the %d records of the recreated topic; missing %v", len(newSeen), fresh, missing)
	}
	mu.Unlock()
	defer mu.Lock()
	var committed, end map[int]int64
	for time.Now().Before(deadline.Add(5 * time.Second)) {
		committed, end = e.committed(t, group, topic), e.endOffsets(t, topic)
		ok := true
		for p, off := range end {
			ok = ok && (off == 0 || committed[p] == off)
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("committed %v; want the new log's end %v on every partition that has records", committed, end)
}

// bigTopic creates a topic (4 partitions) that accepts records up to 8 MiB
// and its dead-letter topic, which accepts records up to dltMax bytes
// (kfake's default, about 1 MiB, when empty).
func (e *env) bigTopic(t testing.TB, name, dltMax string) string {
	t.Helper()
	topic := name + "-" + itoa(int(topicSeq.Add(1)))
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	big := []kafkago.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(8 << 20)}}
	dlt := kafkago.TopicConfig{Topic: topic + ".dlt", NumPartitions: 1, ReplicationFactor: 1}
	if dltMax != "" {
		dlt.ConfigEntries = []kafkago.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: dltMax}}
	}
	resp, err := cli.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: big}, dlt,
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

// produceBig writes, with one key (so one partition): small-0, a 2 MiB
// record whose body starts with "big", then small-2 … small-9.
func (e *env) produceBig(t testing.TB, topic string) {
	t.Helper()
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: topic, BatchSize: 1, BatchBytes: 8 << 20, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	body := []byte("big" + strings.Repeat("x", 2<<20))
	for i := range 10 {
		m := &broker.Message{Key: []byte("one"), Body: []byte("small-" + itoa(i))}
		if i == 1 {
			m.Body = body
		}
		if err := p.Publish(context.Background(), "", m); err != nil {
			t.Fatalf("Publish record %d (%d bytes): %v", i, len(m.Body), err)
		}
	}
}

// bigPoison fails the big record for good and counts the others.
func bigPoison(mu *sync.Mutex, small map[string]bool) consumer.Handler {
	return consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if strings.HasPrefix(string(m.Body), "big") {
			return retry.Permanent(errors.New("cannot handle this record"))
		}
		mu.Lock()
		small[string(m.Body)] = true
		mu.Unlock()
		return nil
	})
}

// Issue 9 item 6 — Kafka protocol (in-process kfake cluster): a permanently
// failing 2 MiB record, fetched with MaxBytes 4 MiB, is dead-lettered and its
// partition goes on. Before the fix the dead-letter writer kept kafka-go's
// 1 MiB batch limit: the write failed every time, the runtime retried it
// forever and the partition never moved (nor committed) again.
func TestIssue9RecordLargerThanOneMiBIsDeadLetteredAndThePartitionGoesOn(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t) // topic configs of kfake; a real cluster may differ
	topic := e.bigTopic(t, "i9-bigdlt", strconv.Itoa(8<<20))
	e.produceBig(t, topic)
	cfg := e.config(topic, "g-i9-bigdlt")
	cfg.MaxBytes = 4 << 20
	var mu sync.Mutex
	small := map[string]bool{}
	startMember(t, newSource(t, cfg), bigPoison(&mu, small))
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(small) }
	deadline := time.Now().Add(20 * time.Second)
	for count() < 9 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	dltEnd := e.endOffsets(t, topic+".dlt")[0]
	t.Logf("handled %d of the 9 small records around the 2 MiB one; dead-letter topic holds %d records", count(), dltEnd)
	if count() != 9 {
		t.Errorf("handled %d of 9 records: the partition stalled behind the 2 MiB record", count())
	}
	if dltEnd != 1 {
		t.Errorf("dead-letter topic holds %d records; want the 2 MiB one", dltEnd)
	}
}

// Issue 9 item 6 — Kafka protocol (in-process kfake cluster): when a dead
// letter cannot be written for a reason retrying cannot fix (here the
// dead-letter topic refuses records over 1 MiB: MESSAGE_TOO_LARGE), the
// source says so loudly: an error log, EventSettleFailed with an error that
// says retrying cannot fix it, and Status().Err — instead of a warning
// per retry that looks like a transient failure.
func TestIssue9DeadLetterThatCannotBeWrittenIsLoud(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.bigTopic(t, "i9-dltloud", "")
	e.produceBig(t, topic)
	cfg := e.config(topic, "g-i9-dltloud")
	cfg.MaxBytes = 4 << 20
	loud := newLogWatch("dead letter")
	loud.level = slog.LevelError
	cfg.Logger = slog.New(loud)
	var (
		mu     sync.Mutex
		small  = map[string]bool{}
		events []error
	)
	src := newSource(t, cfg)
	// The big record's dead letter is never written: its settlement never
	// ends, and Shutdown abandons it (ctx bounds it).
	m := startMember(t, src, bigPoison(&mu, small), consumer.WithEventHook(func(ev consumer.Event) {
		if ev.Kind == consumer.EventSettleFailed && ev.Err != nil && strings.Contains(ev.Err.Error(), "retrying cannot fix") {
			mu.Lock()
			events = append(events, ev.Err)
			mu.Unlock()
		}
	}))
	m.abandons = true
	var status broker.Status
	waitFor(t, "the source to report the dead letter it cannot write", 20*time.Second, func() bool {
		status = src.Status()
		mu.Lock()
		defer mu.Unlock()
		return status.Err != nil && len(events) > 0
	})
	select {
	case <-loud.seen:
	case <-time.After(5 * time.Second):
		t.Error("no error-level log about the dead letter")
	}
	mu.Lock()
	t.Logf("Status() = %+v; first event error: %v", status, events[0])
	mu.Unlock()
	if !status.Connected {
		t.Errorf("Status().Connected = false; want true (the connection is fine)")
	}
	mu.Lock()
	defer mu.Unlock()
	if !errors.Is(status.Err, kafka.ErrDeadLetterUnwritable) || !errors.Is(events[0], kafka.ErrDeadLetterUnwritable) {
		t.Errorf("Status().Err = %v, event error %v; want both to wrap kafka.ErrDeadLetterUnwritable", status.Err, events[0])
	}
	if len(small) != 1 {
		t.Errorf("handled %d small records; want only the one before the big record (its partition is held, not skipped)", len(small))
	}
}
