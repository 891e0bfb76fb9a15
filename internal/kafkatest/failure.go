package kafkatest

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// RestartResumesAtCommittedOffsets: a restart resumes exactly at the
// committed offsets: the second member's first record on each partition is
// the committed offset, it receives every record from there to the end, and
// the work the first member handled beyond a gap (uncommitted) is delivered
// again.
func RestartResumesAtCommittedOffsets(t *testing.T, a Adapter) {
	c := NewCluster(t)
	t.Logf("running %s against %s", a.Name, c.What)
	topic := c.Topic(t, "restart")
	const n = 1200
	c.Produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%60) })

	// First run: ByKey, and one record of partition 0 (its 50th) never
	// finishes, so later records of other keys on partition 0 are handled
	// but cannot be committed past it.
	group := "g-" + topic
	cfg := c.config(topic, group)
	cfg.Ordering = ByKey
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
	m1 := startMember(t, a.NewSource(t, cfg), h1, consumer.WithConcurrency(16), consumer.WithDrainTimeout(300*time.Millisecond))
	m1.abandons = true // the stuck handler runs until the drain deadline
	waitFor(t, "first run to handle most records", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled1 >= n/2 && stuckID != ""
	})
	time.Sleep(300 * time.Millisecond) // let a commit happen
	m1.stop(t)
	committed := c.Committed(t, group, topic)
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
	cfg2 := c.config(topic, group)
	end := c.EndOffsets(t, topic)
	want := 0
	for p := range Partitions {
		want += int(end[p] - max(committed[p], 0))
	}
	m2 := startMember(t, a.NewSource(t, cfg2), h2, consumer.WithConcurrency(4))
	waitFor(t, "second run to handle the rest", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return handled2 >= want })
	time.Sleep(200 * time.Millisecond) // anything extra would show up now
	m2.stop(t)

	mu.Lock()
	defer mu.Unlock()
	redelivered := 0
	for p := range Partitions {
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
			if first[ID(topic, p, off)] {
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

// PoisonRecordGoesToDeadLetterTopic: a poison record (permanent error) and
// a record that fails every attempt go to the dead-letter topic (the
// topic's name + ".dlt") with the failure headers, and the partition moves
// on past them: every later record is handled and the committed offsets
// reach the end.
func PoisonRecordGoesToDeadLetterTopic(t *testing.T, a Adapter) {
	c := NewCluster(t)
	t.Logf("running %s against %s", a.Name, c.What)
	topic := c.Topic(t, "poison")
	const n = 200
	c.Produce(t, topic, 0, n, func(int) string { return "same-key" }) // one partition
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
	group := "g-" + topic
	m := startMember(t, a.NewSource(t, c.config(topic, group)), h, consumer.WithMaxDeliveries(3))
	waitFor(t, "records after the poison handled", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return after == n-21 })
	m.stop(t)

	got := map[string]map[string]string{}
	c.Read(t, topic+".dlt", func(recs []Record) bool {
		for _, r := range recs {
			got[r.Body] = r.Headers
		}
		return len(got) >= 2
	})
	mu.Lock()
	if tries["10"] != 1 || tries["20"] != 3 {
		t.Errorf("attempts: poison %d, failing %d; want 1 and 3", tries["10"], tries["20"])
	}
	mu.Unlock()
	for body, want := range map[string]map[string]string{
		"10": {broker.HeaderError: "bad payload", broker.HeaderAttempts: "1", broker.HeaderPermanent: "true"},
		"20": {broker.HeaderError: "flaky dependency down", broker.HeaderAttempts: "3", broker.HeaderPermanent: "false"},
	} {
		h, ok := got[body]
		if !ok {
			t.Errorf("record %s is not on the dead-letter topic; it holds %v", body, got)
			continue
		}
		want[broker.HeaderSource] = topic
		want[HeaderTopic] = topic
		want[HeaderOffset] = body // one partition: offset == index
		for k, v := range want {
			if h[k] != v {
				t.Errorf("dead-lettered %s: header %s = %q; want %q", body, k, h[k], v)
			}
		}
		if h[HeaderPartition] == "" || h[broker.HeaderFailedAt] == "" {
			t.Errorf("dead-lettered %s: headers %v lack partition or failed-at", body, h)
		}
		t.Logf("dead-lettered %s with headers %v", body, h)
	}
	end, committed := c.EndOffsets(t, topic), c.Committed(t, group, topic)
	for p := range Partitions {
		if committed[p] != end[p] && end[p] > 0 {
			t.Errorf("partition %d: committed %d; want end offset %d (moved past the dead-lettered records)", p, committed[p], end[p])
		}
	}
}
