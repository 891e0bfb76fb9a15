package franz_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Retry topics (Config.RetryTopics), on the Kafka protocol (in-process kfake
// cluster, one per test): the kafka adapter's retry tests, ported.

var errRetryMe = errors.New("fails on its first delivery")

// retrySetup makes a topic of its own with parts partitions and a config
// for it with tiers, and declares its topology through a Source (the
// topic, its dead-letter topic and its retry topics, parts partitions
// each).
func retrySetup(t *testing.T, e *env, name, group string, parts int, tiers []time.Duration) (string, franz.Config) {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	cfg := e.config(topic, group)
	cfg.RetryTopics = tiers
	cfg.Topology = franz.Topology{Partitions: parts, ReplicationFactor: 1}
	declare(t, cfg)
	return topic, cfg
}

// declare declares the topology of cfg through a Source of its own.
func declare(t *testing.T, cfg franz.Config) {
	t.Helper()
	src, err := franz.NewSource(cfg)
	if err != nil {
		t.Fatalf("NewSource = %v", err)
	}
	if err := src.DeclareTopology(context.Background()); err != nil {
		t.Fatalf("DeclareTopology: %v", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// runner is a consumer runtime on a Source.
type runner struct {
	c    *consumer.Consumer
	done chan error
	once sync.Once
}

// runConsumer runs the consumer runtime with h on src until stop (or the
// test's end).
func runConsumer(t *testing.T, src broker.Source, h consumer.Handler, opts ...consumer.Option) *runner {
	t.Helper()
	opts = append([]consumer.Option{consumer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		consumer.WithDrainTimeout(5 * time.Second)}, opts...)
	c, err := consumer.New(src, h, opts...)
	if err != nil {
		t.Fatalf("consumer.New: %v", err)
	}
	r := &runner{c: c, done: make(chan error, 1)}
	go func() { r.done <- c.Run(context.Background()) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop shuts the runtime down gracefully.
func (r *runner) stop(t *testing.T) {
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := r.c.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-r.done:
			if err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
				t.Errorf("Run = %v; want ErrConsumerClosed", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return 20 s after Shutdown")
		}
	})
}

// waitUntil polls cond every 10 ms for up to limit.
func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so within %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// produceKeys writes n records with body from(i)... to topic, key key(i).
func produceKeys(t *testing.T, e *env, topic string, from, n int, key func(int) string) {
	t.Helper()
	e.produceN(t, topic, from, n, key)
}

// endOffsets returns the end offset of each partition of topic.
func (e *env) endOffsets(t testing.TB, topic string) map[int32]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lo, err := e.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("ListEndOffsets(%s): %v", topic, err)
	}
	out := map[int32]int64{}
	lo.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			out[o.Partition] = o.Offset
		}
	})
	return out
}

// recordsOf reads every record of topic written so far.
func (e *env) recordsOf(t testing.TB, topic string) []*kgo.Record {
	t.Helper()
	n := 0
	for _, end := range e.endOffsets(t, topic) {
		n += int(end)
	}
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.readAll(ctx, t, topic, n)
}

func headerMap(hs []kgo.RecordHeader) map[string]string {
	h := map[string]string{}
	for _, x := range hs {
		h[x.Key] = string(x.Value)
	}
	return h
}

// flowResult is what one run of the flow test measured.
type flowResult struct {
	p50, p99, max time.Duration // the others' latency (record time → handler start)
	back          time.Duration // failure → the failing record's second delivery
	attempt       int           // the failing record's Attempt when it came back
}

// runFlow produces 2,000 records of one key (so one partition), 100 every
// 20 ms, and, if fail, one more among them whose handler fails on its
// first delivery with retry.After(2s); the runtime runs 4 workers.
func runFlow(t *testing.T, tiers []time.Duration, fail bool) flowResult {
	e := newEnv(t)
	topic, cfg := retrySetup(t, e, "retry-flow", "g", partitions, tiers)
	const others, batch = 2000, 100
	var (
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, others)
		failedAt time.Time
		res      flowResult
		backCh   = make(chan struct{})
		warm     atomic.Bool
	)
	runConsumer(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		start := time.Now()
		switch string(m.Body) {
		case "warm-up":
			warm.Store(true)
			return nil
		case "fail":
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
	}), consumer.WithConcurrency(4))
	ctx := context.Background()
	rec := func(body string) *kgo.Record {
		return &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte(body)}
	}
	// Measure from a running member: the group join is not latency.
	if err := e.cl.ProduceSync(ctx, rec("warm-up")).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	waitUntil(t, "the member running", 20*time.Second, warm.Load)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for b := range others / batch {
		recs := make([]*kgo.Record, 0, batch+1)
		if fail && b == 5 {
			recs = append(recs, rec("fail"))
		}
		for i := range batch {
			recs = append(recs, rec(strconv.Itoa(b*batch+i)))
		}
		if err := e.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
		<-tick.C
	}
	waitUntil(t, "the others handled", 30*time.Second, func() bool {
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
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	res.p50, res.p99, res.max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	return res
}

// TestRetryTopicsDoNotHoldThePartition is the scale issue's must-show on
// this adapter: a record failing with retry.After(2s) while 2,000 others
// of the same partition flow. With retry topics the others are not held
// behind it (their latencies are logged with and without the failing
// record, and in the blocking mode for contrast; not asserted: timing
// claims belong in benchmarks); the failing record comes back no earlier
// than 2 s later, with Attempt 2 (asserted: a correctness bound).
func TestRetryTopicsDoNotHoldThePartition(t *testing.T) {
	t.Parallel()
	tiers := []time.Duration{2 * time.Second, time.Second}
	base := runFlow(t, tiers, false)
	with := runFlow(t, tiers, true)
	blocking := runFlow(t, nil, true)
	t.Logf("Kafka protocol (in-process kfake cluster), 2,000 records of one partition at ~5,000/s, ByPartition, 4 workers")
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
	t.Parallel()
	e := newEnv(t)
	topic, cfg := retrySetup(t, e, "retry-restart", "g", partitions, []time.Duration{time.Second, 5 * time.Second})
	produceKeys(t, e, topic, 0, 20, func(int) string { return "k" })
	produceKeys(t, e, topic, 20, 1, func(int) string { return "fail" })

	var (
		failedAt atomic.Int64
		failID   atomic.Value
	)
	first := runConsumer(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Key) == "fail" {
			failID.Store(m.ID)
			failedAt.Store(time.Now().UnixNano())
			return retry.After(errRetryMe, 2*time.Second)
		}
		return nil
	}))
	waitUntil(t, "the failing record's offset committed (it is in its retry topic)", 20*time.Second, func() bool {
		id, _ := failID.Load().(string)
		if id == "" {
			return false
		}
		p, off := partitionOf(t, id)
		return e.committed(t, "g", topic)[p] > off
	})
	first.stop(t)

	type got struct {
		m  broker.Message
		at time.Time
	}
	gotCh := make(chan got, 10)
	runConsumer(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Key) == "fail" {
			gotCh <- got{m: *m, at: time.Now()}
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
	p, off := partitionOf(t, id)
	t.Logf("Kafka protocol (in-process kfake cluster): after a restart between failure and retry, came back after %v with Attempt %d (ID %s, Topic %s)",
		back, g.m.Attempt, g.m.ID, g.m.Topic)
	if g.m.Attempt != 2 {
		t.Errorf("Attempt = %d after a restart; want 2", g.m.Attempt)
	}
	if back < 2*time.Second {
		t.Errorf("came back after %v; want >= 2s", back)
	}
	if g.m.Topic != topic || g.m.ID != id {
		t.Errorf("Topic, ID = %s, %s; want the original %s, %s", g.m.Topic, g.m.ID, topic, id)
	}
	h := g.m.Header
	if h[franz.HeaderTopic] != topic || h[franz.HeaderPartition] != strconv.Itoa(int(p)) || h[franz.HeaderOffset] != strconv.FormatInt(off, 10) {
		t.Errorf("origin headers = %s/%s/%s; want %s/%d/%d", h[franz.HeaderTopic], h[franz.HeaderPartition], h[franz.HeaderOffset], topic, p, off)
	}
	select {
	case g2 := <-gotCh:
		t.Errorf("the record was handed out again (Attempt %d, Topic %s)", g2.m.Attempt, g2.m.Topic)
	case <-time.After(500 * time.Millisecond):
	}
	// Its offset in the retry topic is committed once handled, in the
	// tier's own group (2 s went to the 5 s tier).
	tier := franz.RetryTopicName(topic, "g", 5*time.Second)
	waitUntil(t, "the retry record's offset committed", 10*time.Second, func() bool {
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
// through its retry topic (attempt 1 fails with a delay), is requeued from
// there (attempt 2 fails without one: attempt 3 counts on from the
// header), and once the runtime's budget is spent goes to the dead-letter
// topic with its original topic, partition and offset.
func TestRetryTopicsDeadLetterAfterTheBudget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := retrySetup(t, e, "retry-budget", "g", partitions, []time.Duration{100 * time.Millisecond, time.Second})
	produceKeys(t, e, topic, 0, 1, func(int) string { return "fail" })
	var (
		mu       sync.Mutex
		attempts []int
		ids      []string
		topics   []string
	)
	runConsumer(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		ids = append(ids, m.ID)
		topics = append(topics, m.Topic)
		mu.Unlock()
		if m.Attempt == 1 {
			return retry.After(errRetryMe, 200*time.Millisecond)
		}
		return errRetryMe
	}), consumer.WithMaxDeliveries(3))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dl := e.readAll(ctx, t, topic+".dlt", 1)
	if len(dl) == 0 {
		t.Fatal("no dead letter within 20 s")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Errorf("attempts = %v; want [1 2 3]", attempts)
	}
	p, off := partitionOf(t, ids[0])
	for i, id := range ids {
		if id != ids[0] || topics[i] != topic {
			t.Errorf("IDs = %v, Topics = %v; want the original's every time", ids, topics)
			break
		}
	}
	h := headerMap(dl[0].Headers)
	if len(dl) != 1 || h[franz.HeaderTopic] != topic || h[franz.HeaderPartition] != strconv.Itoa(int(p)) || h[franz.HeaderOffset] != strconv.FormatInt(off, 10) {
		t.Errorf("dead letters = %d, origin %s/%s/%s; want 1 from %s/%d/%d", len(dl), h[franz.HeaderTopic], h[franz.HeaderPartition], h[franz.HeaderOffset], topic, p, off)
	}
	if h[broker.HeaderAttempts] != "3" || h[broker.HeaderSource] != topic {
		t.Errorf("dead letter attempts %q, source %q; want 3, %s", h[broker.HeaderAttempts], h[broker.HeaderSource], topic)
	}
	for _, k := range []string{franz.HeaderDue, franz.HeaderAttempt, franz.HeaderGroup, franz.HeaderTime} {
		if _, ok := h[k]; ok {
			t.Errorf("the dead letter carries %s", k)
		}
	}
	t.Logf("Kafka protocol (in-process kfake cluster): attempts %v, dead letter from %s/%s/%s", attempts, h[franz.HeaderTopic], h[franz.HeaderPartition], h[franz.HeaderOffset])
}

// oneTier declares a topic of one partition with one retry tier of its own
// (one partition too) and returns it and its config.
func oneTier(t *testing.T, e *env, name string, tier time.Duration) (string, franz.Config) {
	t.Helper()
	return retrySetup(t, e, name, "g", 1, []time.Duration{tier})
}

// requeue requeues d with delay.
func requeue(t *testing.T, d broker.Delivery, delay time.Duration) {
	t.Helper()
	if err := d.(broker.DelayedRequeuer).RequeueAfter(context.Background(), delay); err != nil {
		t.Fatalf("RequeueAfter: %v", err)
	}
}

// TestRetryLongDelayDoesNotHoldTheTier: a record requeued with a delay far
// longer than the longest tier (an hour, in a tier of 100 ms) is the head
// of its tier partition; a record requeued after it with 100 ms must come
// back within a few tier lengths, not after the hour.
func TestRetryLongDelayDoesNotHoldTheTier(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-long", 100*time.Millisecond)
	src := newSource(t, cfg)
	produceKeys(t, e, topic, 0, 2, func(int) string { return "k" })
	for _, delay := range []time.Duration{time.Hour, 100 * time.Millisecond} {
		requeue(t, receive(t, src), delay)
	}
	failed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("the record requeued for 100 ms behind one requeued for an hour did not come back within 5 s: %v", err)
	}
	if m := d.Message(); string(m.Body) != "1" || m.Attempt != 2 {
		t.Errorf("got %s@%d; want 1@2", m.Body, m.Attempt)
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	t.Logf("Kafka protocol (in-process kfake cluster): the 100 ms retry came back %v after its failure, behind an hour-long one in a tier of 100 ms", time.Since(failed))
}

// TestRetryLongDelaysDoNotAddUpAtTheHead: k records requeued for a year in
// a tier of 100 ms, then one requeued for 50 ms. A record written at w
// holds the head at most until w + the tier, so the short one comes back
// about a tier length after its failure, not k tier lengths: the bound
// asserted is half of k × tier.
func TestRetryLongDelaysDoNotAddUpAtTheHead(t *testing.T) {
	t.Parallel()
	const k = 20
	tier := 100 * time.Millisecond
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-longk", tier)
	src := newSource(t, cfg)
	produceKeys(t, e, topic, 0, k+1, strconv.Itoa)
	for i := 0; i <= k; i++ {
		delay := 365 * 24 * time.Hour
		if i == k {
			delay = 50 * time.Millisecond
		}
		requeue(t, receive(t, src), delay)
	}
	failed := time.Now()
	limit := k * tier / 2
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("the record requeued for 50 ms behind %d requeued for a year (tier %v) did not come back within %v: %v", k, tier, limit, err)
	}
	back := time.Since(failed)
	if m := d.Message(); string(m.Body) != strconv.Itoa(k) || m.Attempt != 2 {
		t.Errorf("got %s@%d; want %d@2", m.Body, m.Attempt, k)
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	t.Logf("Kafka protocol (in-process kfake cluster): the 50 ms retry came back %v after its failure, behind %d year-long retries in a tier of %v", back, k, tier)
}

// TestRetryLongDelayLeavesNoBookkeeping: records requeued with a delay
// between one and two tier lengths are held a tier length, written again,
// then held the rest and handed out. Once they are all settled, the tier
// consumer keeps nothing of them.
func TestRetryLongDelayLeavesNoBookkeeping(t *testing.T) {
	t.Parallel()
	const n = 5
	tier := 100 * time.Millisecond
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-leak", tier)
	src := newSource(t, cfg)
	produceKeys(t, e, topic, 0, n, strconv.Itoa)
	for range n {
		requeue(t, receive(t, src), 190*time.Millisecond)
	}
	for range n {
		d := receive(t, src)
		if m := d.Message(); m.Attempt != 2 {
			t.Errorf("got %s@%d; want attempt 2", m.Body, m.Attempt)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	if got := franz.RetryBookkeeping(src); got != 0 {
		t.Errorf("the tier consumer keeps %d records after all %d retries were settled; want 0", got, n)
	}
}

// TestRetryTopicsWriteFailureLosesNothing: the broker refuses every write to
// the retry topic (kfake's request control answers the Produce with
// TOPIC_AUTHORIZATION_FAILED); the record is then retried in process, and
// nothing is lost.
func TestRetryTopicsWriteFailureLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := retrySetup(t, e, "retry-fail", "g", partitions, []time.Duration{time.Second})
	tierTopic := franz.RetryTopicName(topic, "g", time.Second)
	// Produce v13 names topics by ID.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tds, err := e.adm.ListTopics(ctx, tierTopic)
	if err != nil || tds[tierTopic].Err != nil {
		t.Fatalf("ListTopics(%s) = %v, %v", tierTopic, err, tds[tierTopic].Err)
	}
	tierID := [16]byte(tds[tierTopic].ID)
	var refused atomic.Int64
	e.cluster.ControlKey(int16(kmsg.Produce), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		req := kr.(*kmsg.ProduceRequest)
		for _, rt := range req.Topics {
			if rt.Topic != tierTopic && rt.TopicID != tierID {
				return nil, nil, false
			}
		}
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		resp.Version = req.Version
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
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
	const n = 50
	produceKeys(t, e, topic, 0, n, strconv.Itoa)
	var (
		mu       sync.Mutex
		seen     = map[string]bool{}
		failedAt time.Time
		back     time.Duration
		attempt  int
	)
	runConsumer(t, newSource(t, cfg), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if string(m.Body) == "7" {
			if m.Attempt == 1 {
				failedAt = time.Now()
				return retry.After(errRetryMe, 300*time.Millisecond)
			}
			back, attempt = time.Since(failedAt), m.Attempt
		}
		seen[string(m.Body)] = true
		return nil
	}))
	waitUntil(t, "every record handled", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("Kafka protocol (in-process kfake cluster): retry write refused %d time(s); the record came back in process after %v with Attempt %d", refused.Load(), back, attempt)
	if refused.Load() == 0 {
		t.Fatal("no write to the retry topic was refused: the test tested nothing")
	}
	if attempt != 2 || back < 300*time.Millisecond {
		t.Errorf("came back after %v with Attempt %d; want >= 300ms and Attempt 2", back, attempt)
	}
	if got := e.recordsOf(t, tierTopic); len(got) != 0 {
		t.Errorf("the retry topic holds %d records; want none", len(got))
	}
}

// TestRetryTopicsConfigAccepted: valid tiers, in any order, are accepted
// (they were refused as not yet supported), and a Source with them that
// never received closes at once.
func TestRetryTopicsConfigAccepted(t *testing.T) {
	t.Parallel()
	s, err := franz.NewSource(franz.Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "orders",
		RetryTopics: []time.Duration{30 * time.Second, time.Second}})
	if err != nil {
		t.Fatalf("NewSource(RetryTopics 30s, 1s) = %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("Close of a Source that never received = %v", err)
	}
}

// TestRetryTopicsCloseWithACancelledContext: Close, with a context already
// done, of a Source whose tier consumer holds a retry record not due yet
// and whose main topic has a record out, returns at once (an error
// wrapping context.Canceled, or nil), closing the tier consumers too
// (goleak checks the package for goroutines left); the next member gets
// both: the retry with Attempt 2, once due, and the unsettled record.
func TestRetryTopicsCloseWithACancelledContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := retrySetup(t, e, "retry-close", "g", 1, []time.Duration{100 * time.Millisecond, time.Second})
	produceKeys(t, e, topic, 0, 2, strconv.Itoa)
	a, err := franz.NewSource(cfg)
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	failed := time.Now()
	requeue(t, receive(t, a), 500*time.Millisecond) // to the 1 s tier, held there
	_ = receive(t, a)                               // left unsettled
	// A Close cut short skips the final commit: let the committer commit
	// the retried record's offset first, or it comes from the main topic
	// again too (at least once).
	waitUntil(t, "the retried record's offset committed", 10*time.Second, func() bool {
		return e.committed(t, "g", topic)[0] >= 1
	})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- a.Close(ctx) }()
	select {
	case err := <-done:
		t.Logf("Kafka protocol (in-process kfake cluster): Close with a cancelled context returned %v after %v", err, time.Since(start).Round(time.Millisecond))
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Close(cancelled) = %v; want nil or an error wrapping context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close with a cancelled context did not return within 5 s")
	}
	b := newSource(t, cfg)
	got := map[string]int{}
	for len(got) < 2 {
		d := receive(t, b)
		m := d.Message()
		if m.Body != nil && string(m.Body) == "0" && m.Attempt == 2 {
			if since := time.Since(failed); since < 500*time.Millisecond {
				t.Errorf("the retry came back %v after its failure; want >= 500ms", since)
			}
		}
		got[string(m.Body)] = max(got[string(m.Body)], m.Attempt)
		if err := d.Ack(t.Context()); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	if got["0"] != 2 || got["1"] != 1 {
		t.Errorf("the next member got %v; want 0 with Attempt 2 and 1 with Attempt 1", got)
	}
}
