package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Retry topics (Config.RetryTopics), on the Kafka protocol (in-process kfake
// cluster, one per test).

var errRetryMe = errors.New("fails on its first delivery")

// retryTopicSource makes a topic of its own, a Source for it with tiers,
// and declares its topology (the topic, its dead-letter topic and its
// retry topics).
func retryTopicSource(t *testing.T, e *env, name, group string, tiers []time.Duration) (string, kafka.Config) {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	cfg := e.config(topic, group)
	cfg.RetryTopics = tiers
	cfg.Topology = kafka.Topology{Partitions: partitions, ReplicationFactor: 1}
	src := newSource(t, cfg)
	if err := src.DeclareTopology(context.Background()); err != nil {
		t.Fatalf("DeclareTopology: %v", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return topic, cfg
}

// flowResult is what one run of the flow test measured.
type flowResult struct {
	p50, p99, max time.Duration // the others' handling latency (record time → handler start)
	back          time.Duration // failure → the failing record's second delivery
	attempt       int           // the failing record's Attempt when it came back
	elapsed       time.Duration
}

// runFlow produces 10,000 records of one key (so one partition), paced at
// 100 records every 20 ms, and, if fail, one more among them whose handler
// fails on its first delivery with retry.After(2s).
func runFlow(t *testing.T, tiers []time.Duration, fail bool) flowResult {
	e := newEnv(t)
	topic, cfg := retryTopicSource(t, e, "retry-flow", "g", tiers)
	const others, batch = 10000, 100
	var (
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, others)
		failedAt time.Time
		res      flowResult
		backCh   = make(chan struct{})
	)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		start := time.Now()
		if string(m.Body) == "fail" {
			mu.Lock()
			defer mu.Unlock()
			if m.Attempt == 1 {
				failedAt = start
				return retry.After(errRetryMe, 2*time.Second)
			}
			if res.attempt == 0 {
				res.back, res.attempt = start.Sub(failedAt), m.Attempt
				close(backCh)
			}
			return nil
		}
		mu.Lock()
		lat = append(lat, start.Sub(m.Time))
		mu.Unlock()
		return nil
	})
	var warm atomic.Bool
	startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Body) == "warm-up" {
			warm.Store(true)
			return nil
		}
		return h(ctx, m)
	}), consumer.WithConcurrency(4))

	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: topic, BatchSize: batch, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	// Measure from a running member: the group join is not handling latency.
	if err := p.Publish(context.Background(), topic, &broker.Message{Key: []byte("k"), Body: []byte("warm-up")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitFor(t, "the member running", 20*time.Second, warm.Load)
	began := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for b := range others / batch {
		now := time.Now()
		msgs := make([]*broker.Message, 0, batch+1)
		if fail && b == 5 {
			msgs = append(msgs, &broker.Message{Key: []byte("k"), Body: []byte("fail"), Time: now})
		}
		for i := range batch {
			msgs = append(msgs, &broker.Message{Key: []byte("k"), Body: []byte(strconv.Itoa(b*batch + i)), Time: now})
		}
		if err := p.Publish(context.Background(), topic, msgs...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		<-tick.C
	}
	waitFor(t, "the others handled", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lat) == others
	})
	if fail {
		select {
		case <-backCh:
		case <-time.After(30 * time.Second):
			t.Fatal("the failing record did not come back within 30 s")
		}
	}
	res.elapsed = time.Since(began)
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	res.p50, res.p99, res.max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	return res
}

// TestRetryTopicsDoNotHoldThePartition is issue 13's must-show: a record
// failing with retry.After(2s) while 10,000 others of the same partition
// flow. With retry topics the others are not held behind it (their
// latencies are logged with and without the failing record, and in the
// blocking mode for contrast; not asserted: timing claims belong in
// benchmarks); the failing record comes back no earlier than 2 s later,
// with Attempt 2 (asserted: a correctness bound).
func TestRetryTopicsDoNotHoldThePartition(t *testing.T) {
	tiers := []time.Duration{2 * time.Second, time.Second}
	base := runFlow(t, tiers, false)
	with := runFlow(t, tiers, true)
	blocking := runFlow(t, nil, true)
	t.Logf("Kafka protocol (in-process kfake cluster), 10,000 records of one partition at ~5,000/s, ByPartition, 4 workers")
	t.Logf("retry topics, no failing record:   others p50 %v p99 %v max %v", base.p50, base.p99, base.max)
	t.Logf("retry topics, one record retry.After(2s): others p50 %v p99 %v max %v; it came back after %v with Attempt %d",
		with.p50, with.p99, with.max, with.back, with.attempt)
	t.Logf("blocking mode (no RetryTopics), same failure: others p50 %v p99 %v max %v; it came back after %v with Attempt %d",
		blocking.p50, blocking.p99, blocking.max, blocking.back, blocking.attempt)
	for _, r := range []flowResult{with, blocking} {
		if r.back < 2*time.Second || r.attempt != 2 {
			t.Errorf("the failing record came back after %v with Attempt %d; want >= 2s and Attempt 2", r.back, r.attempt)
		}
	}
}

// TestRetryTopicsAttemptSurvivesARestart: the consumer fails a record with
// retry.After(2s), is shut down once the record is in its retry topic, and
// a new Source in the same group gets it back with Attempt 2, its original
// topic and ID, and its origin in the headers — and never from the main
// topic again.
func TestRetryTopicsAttemptSurvivesARestart(t *testing.T) {
	e := newEnv(t)
	topic, cfg := retryTopicSource(t, e, "retry-restart", "g", []time.Duration{time.Second, 5 * time.Second})
	e.produce(t, topic, 0, 20, func(int) string { return "k" })
	e.produce(t, topic, 0, 1, func(int) string { return "fail" })

	var (
		failedAt atomic.Int64
		failID   atomic.Value
	)
	first := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Key) == "fail" {
			failID.Store(m.ID)
			failedAt.Store(time.Now().UnixNano())
			return retry.After(errRetryMe, 2*time.Second)
		}
		return nil
	}))
	waitFor(t, "the failing record's offset committed (it is in its retry topic)", 20*time.Second, func() bool {
		id, _ := failID.Load().(string)
		if id == "" {
			return false
		}
		p, off := idOffset(id)
		return e.committed(t, "g", topic)[p] > off
	})
	first.stop(t)

	type got struct {
		m   broker.Message
		at  time.Time
		hdr map[string]string
	}
	gotCh := make(chan got, 10)
	startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Key) == "fail" {
			gotCh <- got{m: *m, at: time.Now(), hdr: m.Header}
		}
		return nil
	}))
	var g got
	select {
	case g = <-gotCh:
	case <-time.After(30 * time.Second):
		t.Fatal("the retried record did not come back to the new Source within 30 s")
	}
	back := g.at.Sub(time.Unix(0, failedAt.Load()))
	id := failID.Load().(string)
	p, off := idOffset(id)
	t.Logf("after a restart between failure and retry: came back after %v with Attempt %d (ID %s, Topic %s)", back, g.m.Attempt, g.m.ID, g.m.Topic)
	if g.m.Attempt != 2 {
		t.Errorf("Attempt = %d after a restart; want 2", g.m.Attempt)
	}
	if back < 2*time.Second {
		t.Errorf("came back after %v; want >= 2s", back)
	}
	if g.m.Topic != topic || g.m.ID != id {
		t.Errorf("Topic, ID = %s, %s; want the original %s, %s", g.m.Topic, g.m.ID, topic, id)
	}
	if g.hdr[kafka.HeaderTopic] != topic || g.hdr[kafka.HeaderPartition] != strconv.Itoa(p) || g.hdr[kafka.HeaderOffset] != strconv.FormatInt(off, 10) {
		t.Errorf("origin headers = %s/%s/%s; want %s/%d/%d", g.hdr[kafka.HeaderTopic], g.hdr[kafka.HeaderPartition], g.hdr[kafka.HeaderOffset], topic, p, off)
	}
	select {
	case g2 := <-gotCh:
		t.Errorf("the record was handed out again (Attempt %d, Topic %s)", g2.m.Attempt, g2.m.Topic)
	case <-time.After(500 * time.Millisecond):
	}
	// Its offset in the retry topic is committed once handled, in the
	// tier's own group (2 s went to the 5 s tier).
	tier := kafka.RetryTopicName(topic, "g", 5*time.Second)
	waitFor(t, "the retry record's offset committed", 10*time.Second, func() bool {
		ends, done := e.endOffsets(t, tier), e.committed(t, "g.retry.5s", tier)
		n := 0
		for p, end := range ends {
			n += int(end)
			if end > 0 && done[p] != end {
				return false
			}
		}
		return n == 1
	})
}

// TestRetryTopicsDeadLetterAfterTheBudget: a record that keeps failing goes
// through its retry topic (attempt 1 fails with a delay), is requeued in
// process from there (attempt 2 fails without one: attempt 3 counts on from
// the header), and once the runtime's budget is spent goes to the
// dead-letter topic with its original topic, partition and offset.
func TestRetryTopicsDeadLetterAfterTheBudget(t *testing.T) {
	e := newEnv(t)
	topic, cfg := retryTopicSource(t, e, "retry-budget", "g", []time.Duration{100 * time.Millisecond, time.Second})
	e.produce(t, topic, 0, 1, func(int) string { return "fail" })
	var (
		mu       sync.Mutex
		attempts []int
		ids      []string
	)
	startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		ids = append(ids, m.ID)
		mu.Unlock()
		if m.Attempt == 1 {
			return retry.After(errRetryMe, 200*time.Millisecond)
		}
		// Requeued without a delay: in process, counting on from the
		// attempt in the retry record's header.
		return errRetryMe
	}), consumer.WithMaxDeliveries(3))

	var dl []kafkaMsg
	waitFor(t, "the dead letter", 20*time.Second, func() bool {
		dl = readAll(t, e, topic+".dlt", partitions)
		return len(dl) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Errorf("attempts = %v; want [1 2 3]", attempts)
	}
	p, off := idOffset(ids[0])
	for _, id := range ids {
		if id != ids[0] {
			t.Errorf("IDs = %v; want the original's every time", ids)
			break
		}
	}
	h := dl[0].hdr
	if len(dl) != 1 || h[kafka.HeaderTopic] != topic || h[kafka.HeaderPartition] != strconv.Itoa(p) || h[kafka.HeaderOffset] != strconv.FormatInt(off, 10) {
		t.Errorf("dead letters = %d, origin %s/%s/%s; want 1 from %s/%d/%d", len(dl), h[kafka.HeaderTopic], h[kafka.HeaderPartition], h[kafka.HeaderOffset], topic, p, off)
	}
	if h[broker.HeaderAttempts] != "3" || h[broker.HeaderSource] != topic {
		t.Errorf("dead letter attempts %q, source %q; want 3, %s", h[broker.HeaderAttempts], h[broker.HeaderSource], topic)
	}
	if _, ok := h[kafka.HeaderDue]; ok {
		t.Errorf("the dead letter carries %s", kafka.HeaderDue)
	}
}

type kafkaMsg struct {
	body string
	hdr  map[string]string
}

func readAll(t *testing.T, e *env, topic string, parts int) []kafkaMsg {
	var out []kafkaMsg
	for _, m := range e.readTopic(t, topic, parts) {
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		out = append(out, kafkaMsg{body: string(m.Value), hdr: h})
	}
	return out
}

func TestRetryTopicsConfig(t *testing.T) {
	long := strings.Repeat("t", 239) // + ".retry.g.1s": 250 characters
	for _, tc := range []struct {
		name  string
		topic string
		tiers []time.Duration
		dlt   string
		ok    bool
	}{
		{"tiers in any order are sorted", "orders", []time.Duration{30 * time.Second, time.Second}, "", true},
		{"a zero tier is refused", "orders", []time.Duration{0}, "", false},
		{"a negative tier is refused", "orders", []time.Duration{-time.Second}, "", false},
		{"a tier given twice is refused", "orders", []time.Duration{time.Second, time.Second}, "", false},
		{"a tier of a fraction of a millisecond is refused", "orders", []time.Duration{1500 * time.Microsecond}, "", false},
		{"a tier over a week is refused", "orders", []time.Duration{8 * 24 * time.Hour}, "", false},
		{"a retry topic name too long for Kafka is refused", long, []time.Duration{time.Second}, "d", false},
		{"a retry topic that is the dead-letter topic is refused", "orders", []time.Duration{time.Second}, "orders.retry.g.1s", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := kafka.NewSource(kafka.Config{Brokers: []string{"127.0.0.1:9092"}, GroupID: "g", Topic: tc.topic, DeadLetterTopic: tc.dlt, RetryTopics: tc.tiers})
			if err == nil {
				src.Close(context.Background())
			}
			switch {
			case tc.ok && err != nil:
				t.Errorf("NewSource(RetryTopics %v) = %v; want no error", tc.tiers, err)
			case !tc.ok && !errors.Is(err, broker.ErrInvalidConfig):
				t.Errorf("NewSource(RetryTopics %v) = %v; want an error wrapping ErrInvalidConfig", tc.tiers, err)
			}
			if err != nil {
				t.Logf("%v", err)
			}
		})
	}
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{time.Second, "orders.retry.billing.1s"}, {30 * time.Second, "orders.retry.billing.30s"}, {5 * time.Minute, "orders.retry.billing.5m"},
		{2 * time.Hour, "orders.retry.billing.2h"}, {1500 * time.Millisecond, "orders.retry.billing.1500ms"}} {
		if got := kafka.RetryTopicName("orders", "billing", tc.d); got != tc.want {
			t.Errorf("RetryTopicName(orders, billing, %v) = %s; want %s", tc.d, got, tc.want)
		}
	}
}

// TestRetryTopicsWriteFailureLosesNothing: the broker refuses every write to
// the retry topic (kfake's request control answers the Produce with an
// error); the record is then retried in process, and nothing is lost.
func TestRetryTopicsWriteFailureLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic, cfg := retryTopicSource(t, e, "retry-fail", "g", []time.Duration{time.Second})
	tierTopic := kafka.RetryTopicName(topic, "g", time.Second)
	var refused atomic.Int64
	e.cluster.ControlKey(int16(kmsg.Produce), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		req := kr.(*kmsg.ProduceRequest)
		for _, rt := range req.Topics {
			if rt.Topic != tierTopic {
				return nil, nil, false
			}
		}
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		resp.Version = req.Version
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.TopicAuthorizationFailed.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		refused.Add(1)
		return resp, nil, true
	})
	const n = 200
	e.produce(t, topic, 0, n, itoa)
	l := newLedger()
	var (
		mu       sync.Mutex
		failedAt time.Time
		back     time.Duration
		attempt  int
	)
	startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Body) == "7" {
			mu.Lock()
			defer mu.Unlock()
			if m.Attempt == 1 {
				failedAt = time.Now()
				return retry.After(errRetryMe, 300*time.Millisecond)
			}
			back, attempt = time.Since(failedAt), m.Attempt
		}
		l.add(string(m.Body))
		return nil
	}))
	waitFor(t, "every record handled", 30*time.Second, func() bool { return l.distinct() == n })
	mu.Lock()
	defer mu.Unlock()
	t.Logf("retry write refused %d time(s); the record came back in process after %v with Attempt %d", refused.Load(), back, attempt)
	if refused.Load() == 0 {
		t.Fatal("no write to the retry topic was refused: the test tested nothing")
	}
	if attempt != 2 || back < 300*time.Millisecond {
		t.Errorf("came back after %v with Attempt %d; want >= 300ms and Attempt 2", back, attempt)
	}
	if got := readAll(t, e, tierTopic, partitions); len(got) != 0 {
		t.Errorf("the retry topic holds %d records; want none", len(got))
	}
}

// TestConformanceWithRetryTopics runs the public conformance suite on a
// Source with retry topics: its delayed requeues go through them (the
// suite's DelayedRequeue cases: not before the delay, Attempt one higher).
// Plain requeues stay in process, so a new member still starts a record
// that was not delay-requeued at Attempt 1 (no DurableDeliveryCount).
func TestConformanceWithRetryTopics(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	brokertest.Run(t, conformanceHarness(e, "conformance-retry", []time.Duration{100 * time.Millisecond, time.Second}))
}

// TestRetryTopicsPauseHoldsRetryRecords: a paused Source hands out no retry
// record, due or not; after Resume the record comes, with Attempt 2, from
// the Source's own Receive (no runtime in between).
func TestRetryTopicsPauseHoldsRetryRecords(t *testing.T) {
	e := newEnv(t)
	topic, cfg := retryTopicSource(t, e, "retry-pause", "g", []time.Duration{100 * time.Millisecond})
	e.produce(t, topic, 0, 1, itoa)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	id := d.Message().ID
	if err := d.(broker.DelayedRequeuer).RequeueAfter(ctx, 100*time.Millisecond); err != nil {
		t.Fatalf("RequeueAfter: %v", err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 700*time.Millisecond)
	if d, err := src.Receive(short); err == nil {
		t.Errorf("a paused Source handed out %s (Attempt %d)", d.Message().ID, d.Message().Attempt)
	}
	cancelShort()
	if err := src.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	d, err = src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive after Resume: %v", err)
	}
	if m := d.Message(); m.ID != id || m.Attempt != 2 || m.Topic != topic {
		t.Errorf("after Resume: %s %s Attempt %d; want %s %s Attempt 2", m.Topic, m.ID, m.Attempt, topic, id)
	}
	if err := d.Ack(ctx); err != nil {
		t.Errorf("Ack: %v", err)
	}
}
