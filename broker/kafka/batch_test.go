package kafka_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/internal/kafkatest"
)

// seenRecord is one message a batch handler got.
type seenRecord struct {
	id      string
	key     string
	body    int
	attempt int
	batch   int // index of the batch it came in
}

// batchTrace records what a batch handler got, in order.
type batchTrace struct {
	mu      sync.Mutex
	recs    []seenRecord
	batches int
	sizes   []int
}

func (bt *batchTrace) add(msgs []*broker.Message) int {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	b := bt.batches
	bt.batches++
	bt.sizes = append(bt.sizes, len(msgs))
	for _, m := range msgs {
		i, _ := strconv.Atoi(string(m.Body))
		bt.recs = append(bt.recs, seenRecord{id: m.ID, key: string(m.Key), body: i, attempt: m.Attempt, batch: b})
	}
	return b
}

func runKafkaBatch(t *testing.T, e *env, cfg kafka.Config, b consumer.Batch, h consumer.BatchHandler, opts ...consumer.Option) *kafka.Source {
	t.Helper()
	src := newSource(t, cfg)
	opts = append([]consumer.Option{consumer.WithLogger(quietLogger()), consumer.WithDrainTimeout(5 * time.Second)}, opts...)
	c, err := consumer.NewBatch(src, h, b, opts...)
	if err != nil {
		t.Fatalf("consumer.NewBatch: %v", err)
	}
	m := &member{c: c, src: src, done: make(chan error, 1)}
	go func() { m.done <- c.Run(context.Background()) }()
	t.Cleanup(func() { m.stop(t) })
	return src
}

// Issue 13, "Batch" on Kafka: batches fill with runs of consecutive
// records of a partition (not one record per partition), a record failed
// inside a batch is retried alone while the records of other lanes are
// acked (handled once), the later records of its lane in that batch come
// again after it, each lane's records are handled (for the last time) in
// offset order, and the commits reach the end of every partition. Kafka
// protocol (in-process kfake cluster).
func TestBatchFailureKeepsLaneOrder(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ordering kafka.Ordering
	}{
		{"ByPartition", kafka.ByPartition},
		{"ByKey", kafka.ByKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			t.Logf("running against %s", e.what)
			topic := e.topic(t, "batch-"+tc.name)
			const n, keys, failBody = 2000, 8, 500
			e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%keys) })

			var (
				trace     batchTrace
				mu        sync.Mutex
				failedID  string
				failBatch = -1
				done      = map[string]bool{}
			)
			lane := func(r seenRecord) string {
				p, _ := idOffset(r.id)
				if tc.ordering == kafka.ByKey {
					return strconv.Itoa(p) + "/" + r.key
				}
				return strconv.Itoa(p)
			}
			h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
				b := trace.add(msgs)
				mu.Lock()
				defer mu.Unlock()
				failed := map[int]error{}
				for i, m := range msgs {
					if string(m.Body) == strconv.Itoa(failBody) && m.Attempt == 1 {
						failed[i] = errors.New("row refused")
						failedID, failBatch = m.ID, b
						continue
					}
					done[m.ID] = true // as the handler saw it; the runtime may give it back
				}
				return consumer.BatchFailures(failed)
			})
			cfg := e.config(topic, "g-batch-"+tc.name)
			cfg.Ordering = tc.ordering
			cfg.MaxInFlight = 256
			src := runKafkaBatch(t, e, cfg, consumer.Batch{MaxSize: 200, MaxWait: 20 * time.Millisecond}, h,
				consumer.WithConcurrency(2))
			end := e.endOffsets(t, topic)
			waitFor(t, "every record committed", 60*time.Second, func() bool {
				got := e.committed(t, "g-batch-"+tc.name, topic)
				for p := range partitions {
					if got[p] != end[p] {
						return false
					}
				}
				return true
			})
			if err := kafka.CheckBatchAccounting(src); err != nil {
				t.Error(err)
			}

			trace.mu.Lock()
			defer trace.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if failedID == "" {
				t.Fatal("the record to fail was never handled")
			}
			// The failed record's lane after it in its batch: handled twice.
			var failedRec seenRecord
			twice := map[string]bool{}
			for _, r := range trace.recs {
				if r.batch != failBatch {
					continue
				}
				if r.id == failedID {
					failedRec = r
					twice[r.id] = true
					continue
				}
				if failedRec.id != "" && lane(r) == lane(failedRec) {
					twice[r.id] = true
				}
			}
			count := map[string]int{}
			attempts := map[string][]int{}
			for _, r := range trace.recs {
				count[r.id]++
				attempts[r.id] = append(attempts[r.id], r.attempt)
			}
			if len(count) != n {
				t.Fatalf("%d distinct records handled; want %d", len(count), n)
			}
			for id, k := range count {
				want := 1
				if twice[id] {
					want = 2
				}
				if k != want {
					t.Errorf("%s handled %d times (attempts %v); want %d", id, k, attempts[id], want)
				}
			}
			if got := attempts[failedID]; len(got) != 2 || got[1] != 2 {
				t.Errorf("failed record %s attempts %v; want [1 2]", failedID, got)
			}
			for id := range twice {
				if id != failedID && attempts[id][1] != 1 {
					t.Errorf("%s given back after the failure came with attempt %v; want [1 1] (no attempt spent)", id, attempts[id])
				}
			}
			// Each lane's last handlings come in offset order.
			last := map[string]int{}
			for i, r := range trace.recs {
				last[r.id] = i
			}
			prev := map[string]int64{}
			for i, r := range trace.recs {
				if last[r.id] != i {
					continue
				}
				_, off := idOffset(r.id)
				if p, ok := prev[lane(r)]; ok && off < p {
					t.Errorf("lane %s: offset %d handled for good after %d", lane(r), off, p)
				}
				prev[lane(r)] = off
			}
			maxSize := 0
			for _, s := range trace.sizes {
				maxSize = max(maxSize, s)
			}
			t.Logf("%d records in %d batches (largest %d); %d records given back behind the failed one",
				n, len(trace.sizes), maxSize, len(twice)-1)
			if maxSize <= partitions {
				t.Errorf("largest batch %d; want more than one record per partition (%d)", maxSize, partitions)
			}
			if len(twice) < 2 {
				t.Errorf("no record of the failed one's lane followed it in its batch; the test saw too little")
			}
		})
	}
}

// Source.ReceiveBatch keeps each lane in offset order however a batch is
// settled: the first record of a lane requeued while the later ones of its
// batch are still out is handed out again alone (nothing queued behind
// them jumps ahead), and the later ones, released out of order, come
// again in offset order with their attempt unspent. Seen failing with
// ReceiveBatch taking the queue of a lane that has records out, and with
// Release putting each record first in line (as it did before batches).
// Kafka protocol (in-process kfake cluster).
func TestReceiveBatchKeepsLaneOrderInAnySettleOrder(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "rbatch")
	const n = 400
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%16) })
	cfg := e.config(topic, "g-rbatch")
	cfg.MaxInFlight = 256
	src := newSource(t, cfg)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := src.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	recv := func(max int) []broker.Delivery {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ds, err := src.ReceiveBatch(ctx, max, 0)
		if err != nil {
			t.Fatalf("ReceiveBatch: %v", err)
		}
		if len(ds) == 0 || len(ds) > max {
			t.Fatalf("ReceiveBatch(%d) returned %d deliveries", max, len(ds))
		}
		if err := kafka.CheckBatchAccounting(src); err != nil {
			t.Fatal(err)
		}
		return ds
	}
	ctx := context.Background()
	seen := map[string]int{} // handled for good: acked
	ack := func(d broker.Delivery) {
		t.Helper()
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack %s: %v", d.Message().ID, err)
		}
		seen[d.Message().ID]++
	}

	// A batch with a run of at least 3 records of one partition.
	// Small, so that records of its lane stay queued behind it.
	var lane []broker.Delivery
	for lane == nil {
		ds := recv(5)
		byPart := map[int][]broker.Delivery{}
		for _, d := range ds {
			p, _ := idOffset(d.Message().ID)
			byPart[p] = append(byPart[p], d)
		}
		for _, run := range byPart {
			if lane == nil && len(run) >= 3 {
				lane = run
				continue
			}
			for _, d := range run {
				ack(d)
			}
		}
	}
	p, _ := idOffset(lane[0].Message().ID)
	for i := 1; i < len(lane); i++ {
		_, prev := idOffset(lane[i-1].Message().ID)
		_, off := idOffset(lane[i].Message().ID)
		if off != prev+1 {
			t.Fatalf("partition %d: offset %d follows %d in a batch; want consecutive records", p, off, prev)
		}
	}
	first := lane[0]
	if err := first.Requeue(ctx); err != nil {
		t.Fatal(err)
	}
	// The requeued record comes alone: the rest of its run is still out.
	var again broker.Delivery
	for again == nil {
		for _, d := range recv(n) {
			q, _ := idOffset(d.Message().ID)
			switch {
			case q != p:
				ack(d)
			case again != nil:
				t.Fatalf("partition %d: %s handed out with %s while the rest of its batch is out", p, d.Message().ID, again.Message().ID)
			default:
				again = d
			}
		}
	}
	if again.Message().ID != first.Message().ID || again.Message().Attempt != 2 {
		t.Fatalf("handed out %s attempt %d; want %s attempt 2", again.Message().ID, again.Message().Attempt, first.Message().ID)
	}
	// Released out of order: the last first, then the others forward.
	order := append([]int{len(lane) - 1}, make([]int, 0, len(lane))...)
	for i := 1; i < len(lane)-1; i++ {
		order = append(order, i)
	}
	for _, i := range order {
		if err := lane[i].(broker.Releaser).Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ack(again)

	// The rest of the partition comes in offset order, the released records
	// first, with attempt 1.
	_, next := idOffset(lane[1].Message().ID)
	for len(seen) < n {
		for _, d := range recv(n) {
			m := d.Message()
			if q, off := idOffset(m.ID); q == p {
				if off != next {
					t.Fatalf("partition %d: offset %d handed out; want %d", p, off, next)
				}
				if m.Attempt != 1 {
					t.Fatalf("%s attempt %d; want 1 (released, not failed)", m.ID, m.Attempt)
				}
				next++
			}
			ack(d)
		}
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s acked %d times", id, k)
		}
	}
	if len(seen) != n {
		t.Errorf("%d records acked; want %d", len(seen), n)
	}
}

// A plain error fails a whole batch: on Kafka the first record of each lane
// in it is failed (requeued, an attempt spent), the later ones of its lane
// are given back (attempt unspent) and come again after it, in order.
// Kafka protocol (in-process kfake cluster).
func TestBatchWholeFailureOnKafka(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "batch-whole")
	const n = 400
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%8) })
	var (
		trace  batchTrace
		mu     sync.Mutex
		failed bool
		good   = map[string]bool{}
	)
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		trace.add(msgs)
		mu.Lock()
		defer mu.Unlock()
		if !failed {
			failed = true
			return errors.New("database down")
		}
		for _, m := range msgs {
			good[m.ID] = true
		}
		return nil
	})
	cfg := e.config(topic, "g-batch-whole")
	runKafkaBatch(t, e, cfg, consumer.Batch{MaxSize: 50, MaxWait: 20 * time.Millisecond}, h)
	waitFor(t, "every record handled", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(good) == n })

	trace.mu.Lock()
	defer trace.mu.Unlock()
	firstOfLane := map[int]bool{}
	attempts := map[string][]int{}
	for _, r := range trace.recs {
		attempts[r.id] = append(attempts[r.id], r.attempt)
	}
	for _, r := range trace.recs {
		if r.batch != 0 {
			break
		}
		p, _ := idOffset(r.id)
		want := "[1 1]" // given back behind the first of its lane
		if !firstOfLane[p] {
			firstOfLane[p] = true
			want = "[1 2]"
		}
		if got := attempts[r.id]; fmtInts(got) != want {
			t.Errorf("%s of the failed batch: attempts %v; want %s", r.id, got, want)
		}
	}
	if trace.sizes[0] < 2 {
		t.Errorf("failed batch of %d; want more than one record", trace.sizes[0])
	}
}

func fmtInts(v []int) string {
	s := "["
	for i, x := range v {
		if i > 0 {
			s += " "
		}
		s += strconv.Itoa(x)
	}
	return s + "]"
}

// A batch whose records are fenced by a rebalance (a second member takes
// their partitions while the handler still runs past RebalanceDrainTimeout)
// sees its context cancelled with cause broker.ErrStaleDelivery, and its
// records are handled again by the partitions' owner, whatever the handler
// returned: nothing is lost. Kafka protocol (in-process kfake cluster).
func TestBatchFencedByRebalanceIsRedelivered(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "batch-fence")
	const n = 200
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%16) })
	var (
		mu     sync.Mutex
		good   = map[string]int{}
		causes []error
		once   sync.Once
		stuck  = make(chan struct{})
	)
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		blocked := false
		once.Do(func() { blocked = true })
		if blocked {
			close(stuck)
			<-ctx.Done() // held until the lease ends
			mu.Lock()
			causes = append(causes, context.Cause(ctx))
			mu.Unlock()
			return nil // as a careless handler would: still redelivered
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			good[m.ID]++
		}
		return nil
	})
	cfg := e.config(topic, "g-batch-fence")
	cfg.RebalanceDrainTimeout = 200 * time.Millisecond
	b := consumer.Batch{MaxSize: 500, MaxWait: 20 * time.Millisecond}
	runKafkaBatch(t, e, cfg, b, h, consumer.WithConcurrency(2))
	<-stuck
	runKafkaBatch(t, e, cfg, b, h, consumer.WithConcurrency(2))
	waitFor(t, "every record handled", 60*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(good) == n })
	mu.Lock()
	defer mu.Unlock()
	if len(causes) != 1 || !errors.Is(causes[0], broker.ErrStaleDelivery) {
		t.Errorf("the blocked batch's context ended with %v; want broker.ErrStaleDelivery", causes)
	}
}

// Under ByKey with 4 workers, batches of up to 64 and about one record in
// 23 failing on its first attempt: no commit passes a record whose handler
// has not succeeded, every record is handled, and each key's records are
// handled for the last time in offset order. Kafka protocol (in-process
// kfake cluster).
func TestBatchByKeyWithFailuresKeepsKeyOrderAndCommitsSafely(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t) // the commit check reads OffsetCommit requests
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "batch-bykey")
	const n, keys = 3000, 40
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%keys) })
	watch := kafkatest.WatchCommits(e.cluster, "g-batch-bykey", topic)
	var (
		trace batchTrace
		mu    sync.Mutex
		ok    = map[string]bool{}
	)
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		trace.add(msgs)
		failed := map[int]error{}
		mu.Lock()
		defer mu.Unlock()
		for i, m := range msgs {
			body, _ := strconv.Atoi(string(m.Body))
			if body%23 == 7 && m.Attempt == 1 {
				failed[i] = errors.New("refused once")
				continue
			}
			ok[m.ID] = true
			p, off := idOffset(m.ID)
			watch.Finish(p, off)
		}
		return consumer.BatchFailures(failed)
	})
	cfg := e.config(topic, "g-batch-bykey")
	cfg.Ordering = kafka.ByKey
	cfg.MaxInFlight = 64
	cfg.CommitBatch = 50 // many commits to check
	runKafkaBatch(t, e, cfg, consumer.Batch{MaxSize: 64, MaxWait: 5 * time.Millisecond}, h, consumer.WithConcurrency(4))
	end := e.endOffsets(t, topic)
	waitFor(t, "every record committed", 60*time.Second, func() bool {
		got := e.committed(t, "g-batch-bykey", topic)
		for p := range partitions {
			if got[p] != end[p] {
				return false
			}
		}
		return true
	})

	commits, violations := watch.Result()
	for _, v := range violations[:min(len(violations), 5)] {
		t.Error(v)
	}
	if commits < 5 {
		t.Errorf("only %d commits observed; the check saw too little", commits)
	}
	trace.mu.Lock()
	defer trace.mu.Unlock()
	last := map[string]int{}
	for i, r := range trace.recs {
		last[r.id] = i
	}
	if len(last) != n {
		t.Fatalf("%d distinct records handled; want %d", len(last), n)
	}
	prev := map[string]int64{}
	for i, r := range trace.recs {
		if last[r.id] != i {
			continue
		}
		p, off := idOffset(r.id)
		lane := strconv.Itoa(p) + "/" + r.key
		if q, seen := prev[lane]; seen && off < q {
			t.Errorf("key %s: offset %d handled for good after %d", lane, off, q)
		}
		prev[lane] = off
	}
	maxSize := 0
	for _, s := range trace.sizes {
		maxSize = max(maxSize, s)
	}
	t.Logf("%d records, %d keys: %d handlings in %d batches (largest %d), %d commits checked, %d violations",
		n, keys, len(trace.recs), len(trace.sizes), maxSize, commits, len(violations))
}

// A batch being collected when the intake stops is given back whole
// (Release), at a Pause and at the drain, and nothing of it is committed:
// the group's next member gets every record from the start. A batch that
// waits for more records gets none of a partition it already holds: those
// wait for the next batch. Kafka protocol (in-process kfake cluster).
func TestBatchCollectingGivenBackOnPauseAndDrain(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "batch-pause")
	const n = 100
	e.produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%16) })
	var calls atomic.Int64
	a := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		calls.Add(1)
		return nil
	})
	cfg := e.config(topic, "g-batch-pause")
	src := newSource(t, cfg)
	// One more than there is, and an hour to wait: the batch is collected
	// and never complete.
	c, err := consumer.NewBatch(src, a, consumer.Batch{MaxSize: n + 1, MaxWait: time.Hour},
		consumer.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	m := &member{c: c, src: src, done: make(chan error, 1)}
	go func() { m.done <- c.Run(context.Background()) }()
	waitFor(t, "every record collected", 20*time.Second, func() bool { return kafka.OutCount(src) == n })
	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the collected records given back", 20*time.Second, func() bool { return kafka.OutCount(src) == 0 })
	if err := c.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every record collected again", 20*time.Second, func() bool { return kafka.OutCount(src) == n })
	m.stop(t) // the drain gives the batch back
	if k := calls.Load(); k != 0 {
		t.Fatalf("the handler ran %d times; want 0 (the batch was never complete)", k)
	}

	var trace batchTrace
	b := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		trace.add(msgs)
		return nil
	})
	runKafkaBatch(t, e, cfg, consumer.Batch{MaxSize: n, MaxWait: 10 * time.Millisecond}, b)
	waitFor(t, "every record handled by the next member", 30*time.Second, func() bool {
		trace.mu.Lock()
		defer trace.mu.Unlock()
		return len(trace.recs) == n
	})
	trace.mu.Lock()
	defer trace.mu.Unlock()
	next := map[int]int64{}
	for _, r := range trace.recs {
		p, off := idOffset(r.id)
		if off != next[p] {
			t.Errorf("partition %d: offset %d handled; want %d (nothing committed by the first member)", p, off, next[p])
		}
		next[p] = off + 1
	}
}

// A batch waiting for more (MaxWait) goes on taking the records of the
// partitions it holds as they arrive: 10 records, then 40 more of the same
// partition produced while it waits, make one batch of 50 in offset order.
// Kafka protocol (in-process kfake cluster).
func TestBatchGrowsWithRecordsArrivingWhileItWaits(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "batch-grow")
	const first, n = 10, 50
	one := func(int) string { return "one-key" } // one partition
	e.produce(t, topic, 0, first, one)
	var trace batchTrace
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		trace.add(msgs)
		return nil
	})
	cfg := e.config(topic, "g-batch-grow")
	src := newSource(t, cfg)
	c, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: n, MaxWait: time.Minute},
		consumer.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	m := &member{c: c, src: src, done: make(chan error, 1)}
	go func() { m.done <- c.Run(context.Background()) }()
	t.Cleanup(func() { m.stop(t) })
	waitFor(t, "the first records collected", 20*time.Second, func() bool { return kafka.OutCount(src) == first })
	e.produce(t, topic, first, n-first, one)
	waitFor(t, "a batch handled", 30*time.Second, func() bool {
		trace.mu.Lock()
		defer trace.mu.Unlock()
		return len(trace.sizes) > 0
	})
	trace.mu.Lock()
	defer trace.mu.Unlock()
	if trace.sizes[0] != n {
		t.Fatalf("first batch of %d records; want %d (the partition's records that arrived while it waited)", trace.sizes[0], n)
	}
	for i, r := range trace.recs {
		if _, off := idOffset(r.id); off != int64(i) {
			t.Fatalf("record %d of the batch has offset %d; want %d", i, off, i)
		}
	}
}
