package kafka_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// A restart resumes exactly at the committed offsets: the second member's
// first record on each partition is the committed offset, it receives
// every record from there to the end, and the work the first member handled
// beyond a gap (uncommitted) is delivered again.
func TestRestartResumesAtCommittedOffsetsAndRedeliversUncommittedWork(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "restart")
	const n = 1200
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%60) })

	// First run: ByKey, and one record of partition 0 (its 50th) never
	// finishes, so later records of other keys on partition 0 are handled
	// but cannot be committed past it.
	cfg := e.config(topic, "g-restart")
	cfg.Ordering = kafka.ByKey
	cfg.MaxInFlight = 64
	var (
		mu       sync.Mutex
		first    = map[string]bool{}
		stuckID  string
		handled1 int
	)
	h1 := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		p, off := idOffset(m.ID)
		if p == 0 && off == 50 {
			mu.Lock()
			stuckID = m.ID
			mu.Unlock()
			<-ctx.Done() // until the drain deadline
			return ctx.Err()
		}
		mu.Lock()
		first[m.ID] = true
		handled1++
		mu.Unlock()
		return nil
	})
	m1 := startMember(t, newSource(t, cfg), h1, consumer.WithConcurrency(16), consumer.WithDrainTimeout(300*time.Millisecond))
	m1.abandons = true // the stuck handler runs until the drain deadline
	waitFor(t, "first run to handle most records", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled1 >= n/2 && stuckID != ""
	})
	time.Sleep(300 * time.Millisecond) // let a commit happen
	m1.stop(t)
	committed := e.committed(t, "g-restart", topic)
	if committed[0] > 50 {
		t.Fatalf("partition 0 committed %d, past the unfinished offset 50", committed[0])
	}

	// Second run: the same group, fresh process state.
	var (
		seen     = map[int][]int64{}
		handled2 int
	)
	h2 := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		p, off := idOffset(m.ID)
		mu.Lock()
		seen[p] = append(seen[p], off)
		handled2++
		mu.Unlock()
		return nil
	})
	cfg2 := e.config(topic, "g-restart")
	end := e.endOffsets(t, topic)
	want := 0
	for p := range partitions {
		want += int(end[p] - max(committed[p], 0))
	}
	m2 := startMember(t, newSource(t, cfg2), h2, consumer.WithConcurrency(4))
	waitFor(t, "second run to handle the rest", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return handled2 >= want })
	time.Sleep(200 * time.Millisecond) // anything extra would show up now
	m2.stop(t)

	mu.Lock()
	defer mu.Unlock()
	redelivered := 0
	for p := range partitions {
		offs := seen[p]
		start := max(committed[p], 0)
		if int64(len(offs)) != end[p]-start {
			t.Errorf("partition %d: second run got %d records; want %d (committed %d to end %d)", p, len(offs), end[p]-start, start, end[p])
			continue
		}
		for i, off := range offs {
			if off != start+int64(i) {
				t.Errorf("partition %d: record %d of the second run has offset %d; want %d", p, i, off, start+int64(i))
				break
			}
			if first[topic+"/"+strconv.Itoa(p)+"/"+strconv.FormatInt(off, 10)] {
				redelivered++
			}
		}
	}
	t.Logf("first run handled %d records (one stuck at %s); committed %v; second run resumed there and got %d records, %d of them handled-but-uncommitted by the first run",
		handled1, stuckID, committed, handled2, redelivered)
	if redelivered == 0 {
		t.Error("no uncommitted work was redelivered; the test did not create any")
	}
}

// A poison record (permanent error) and a record that fails every attempt
// go to the dead-letter topic with the failure headers, and the partition
// moves on past them.
func TestPoisonRecordGoesToDeadLetterTopicWithHeadersAndPartitionMovesOn(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "poison")
	const n = 200
	e.produce(t, topic, 0, n, func(int) string { return "same-key" }) // one partition
	var (
		mu    sync.Mutex
		after int // records handled after the poison on its partition
		tries = map[string]int{}
	)
	h := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		tries[string(m.Body)]++
		switch string(m.Body) {
		case "10":
			return retry.Permanent(errors.New("bad payload"))
		case "20":
			return errors.New("flaky dependency down")
		}
		if i, _ := strconv.Atoi(string(m.Body)); i > 20 {
			after++
		}
		return nil
	})
	cfg := e.config(topic, "g-poison")
	m := startMember(t, newSource(t, cfg), h, consumer.WithMaxDeliveries(3))
	waitFor(t, "records after the poison handled", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return after == n-21 })
	m.stop(t)

	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: e.brokers, Topic: cfg.Topic + ".dlt", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := map[string]map[string]string{}
	for len(got) < 2 {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("reading the dead-letter topic: %v (got %d records)", err, len(got))
		}
		h := map[string]string{}
		for _, x := range msg.Headers {
			h[x.Key] = string(x.Value)
		}
		got[string(msg.Value)] = h
	}
	if tries["10"] != 1 || tries["20"] != 3 {
		t.Errorf("attempts: poison %d, failing %d; want 1 and 3", tries["10"], tries["20"])
	}
	for body, want := range map[string]map[string]string{
		"10": {broker.HeaderError: "bad payload", broker.HeaderAttempts: "1", broker.HeaderPermanent: "true"},
		"20": {broker.HeaderError: "flaky dependency down", broker.HeaderAttempts: "3", broker.HeaderPermanent: "false"},
	} {
		h := got[body]
		want[broker.HeaderSource] = topic
		want[kafka.HeaderTopic] = topic
		want[kafka.HeaderOffset] = body // one partition: offset == index
		for k, v := range want {
			if h[k] != v {
				t.Errorf("dead-lettered %s: header %s = %q; want %q", body, k, h[k], v)
			}
		}
		if h[kafka.HeaderPartition] == "" || h[broker.HeaderFailedAt] == "" {
			t.Errorf("dead-lettered %s: headers %v lack partition or failed-at", body, h)
		}
		t.Logf("dead-lettered %s with headers %v", body, h)
	}
	end, committed := e.endOffsets(t, topic), e.committed(t, "g-poison", topic)
	for p := range partitions {
		if committed[p] != end[p] && end[p] > 0 {
			t.Errorf("partition %d: committed %d; want end offset %d (moved past the dead-lettered records)", p, committed[p], end[p])
		}
	}
}

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
