package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// deadLetterIDs returns the IDs of queue's dead letters, sorted.
func deadLetterIDs(b *memory.Broker, queue string) []string {
	var ids []string
	for _, m := range b.DeadLetters(queue) {
		ids = append(ids, m.ID)
	}
	sort.Strings(ids)
	return ids
}

// The handler's msgs is its own: whatever it does to the slice (sort,
// reverse, nil entries, replace or duplicate them), the runtime settles
// and budget-checks its own deliveries, never dereferences what the handler
// left, and maps failure indexes (which refer to msgs as the handler left
// it) to messages by identity; when msgs is no longer a permutation of the
// batch, failure indexes cannot be trusted and the whole batch fails.
// Regression: a review found the handler's changes read back (a crash on a
// nil entry, a poison acked after a sort, a budget never spent).
func TestBatchHandlerOwnsItsSlice(t *testing.T) {
	poison := retry.Permanent(errors.New("poison"))
	for _, tc := range []struct {
		name     string
		handle   func(msgs []*broker.Message) error
		wantDead []string // with WithMaxDeliveries(1): every failed message
	}{
		{
			name: "sorted, failure by index into the sorted slice",
			handle: func(msgs []*broker.Message) error {
				sort.Slice(msgs, func(i, j int) bool { return msgs[i].ID > msgs[j].ID })
				return consumer.BatchFailures(map[int]error{slices.IndexFunc(msgs, func(m *broker.Message) bool { return m.ID == "m1" }): poison})
			},
			wantDead: []string{"m1"},
		},
		{
			name: "reversed, failure by index as left",
			handle: func(msgs []*broker.Message) error {
				slices.Reverse(msgs)
				return consumer.BatchFailures(map[int]error{0: poison}) // m3
			},
			wantDead: []string{"m3"},
		},
		{
			name: "a nil entry and a plain error",
			handle: func(msgs []*broker.Message) error {
				msgs[0] = nil
				return errors.New("database down")
			},
			wantDead: []string{"m0", "m1", "m2", "m3"},
		},
		{
			name: "a nil entry and a panic",
			handle: func(msgs []*broker.Message) error {
				msgs[0] = nil
				panic("bug")
			},
			wantDead: []string{"m0", "m1", "m2", "m3"},
		},
		{
			name: "every entry nil and success",
			handle: func(msgs []*broker.Message) error {
				clear(msgs)
				return nil
			},
		},
		{
			name: "a nil entry and BatchFailures",
			handle: func(msgs []*broker.Message) error {
				msgs[2] = nil
				return consumer.BatchFailures(map[int]error{1: poison})
			},
			wantDead: []string{"m0", "m1", "m2", "m3"},
		},
		{
			name: "a duplicate entry and BatchFailures",
			handle: func(msgs []*broker.Message) error {
				msgs[0] = msgs[1]
				return consumer.BatchFailures(map[int]error{1: poison})
			},
			wantDead: []string{"m0", "m1", "m2", "m3"},
		},
		{
			name: "a foreign entry and BatchFailures",
			handle: func(msgs []*broker.Message) error {
				cp := *msgs[3]
				msgs[3] = &cp
				return consumer.BatchFailures(map[int]error{3: poison})
			},
			wantDead: []string{"m0", "m1", "m2", "m3"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			publishN(t, b, "q", 4)
			var mu sync.Mutex
			var observed []string
			h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
				return tc.handle(msgs)
			})
			c, err := consumer.NewBatch(newSource(t, b, "q", 4), h, consumer.Batch{MaxSize: 4, MaxWait: time.Minute},
				consumer.WithLogger(quiet), consumer.WithMaxDeliveries(1),
				consumer.WithObserver(func(ctx context.Context, m *broker.Message, s consumer.Settlement, err error) {
					mu.Lock()
					defer mu.Unlock()
					observed = append(observed, m.ID) // m is never nil
				}))
			if err != nil {
				t.Fatal(err)
			}
			runBatch(t, c, func() bool {
				st := b.Stats("q")
				return st.Acked+st.DeadLettered == 4
			})
			if got := deadLetterIDs(b, "q"); fmt.Sprint(got) != fmt.Sprint(tc.wantDead) {
				t.Errorf("dead-lettered %v; want %v", got, tc.wantDead)
			}
			mu.Lock()
			defer mu.Unlock()
			sort.Strings(observed)
			if fmt.Sprint(observed) != "[m0 m1 m2 m3]" {
				t.Errorf("observer saw %v; want [m0 m1 m2 m3]", observed)
			}
		})
	}
}

// The delivery budget counts the runtime's messages, not what the handler
// put in their place. Regression: a handler that replaced its messages with
// copies of Attempt 0 had a poison handled without end.
func TestBatchBudgetIgnoresTheHandlersReplacements(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 2)
	log := newBatchLog()
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		log.see(msgs)
		for i, m := range msgs {
			cp := *m
			cp.Attempt = 0
			msgs[i] = &cp
		}
		slices.Reverse(msgs)
		return errors.New("database down")
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 2), h, consumer.Batch{MaxSize: 2, MaxWait: time.Minute},
		consumer.WithLogger(quiet), consumer.WithMaxDeliveries(3))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool { return b.Stats("q").DeadLettered == 2 })
	for _, id := range []string{"m0", "m1"} {
		if n := log.count(id); n != 3 {
			t.Errorf("%s handled %d times; want 3 (WithMaxDeliveries(3))", id, n)
		}
	}
}

// Batch.MaxSize is at most 65,536 (1<<16): a larger one is a configuration
// error, not a batch buffer sized to it. Regression: MaxSize 1<<30 made
// the first settlement allocate 16 GiB.
func TestNewBatchBoundsMaxSize(t *testing.T) {
	b := memory.NewBroker()
	h := consumer.BatchHandlerFunc(func(context.Context, []*broker.Message) error { return nil })
	for _, tc := range []struct {
		size int
		ok   bool
	}{
		{1 << 16, true},
		{1<<16 + 1, false},
		{1 << 30, false},
		{int(^uint(0) >> 1), false},
	} {
		_, err := consumer.NewBatch(newSource(t, b, "q", 1), h, consumer.Batch{MaxSize: tc.size})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, broker.ErrInvalidConfig)) {
			t.Errorf("NewBatch(MaxSize %d) = %v; want ok %v, or an error wrapping ErrInvalidConfig", tc.size, err, tc.ok)
		}
	}
}

// The runtime walks the handler's error tree (Unwrap() error and
// Unwrap() []error): the failures of every BatchError in it count, and any
// other failure in it fails the whole batch. Regression: errors.Join of a
// BatchError and a plain error acked the others, and of two BatchErrors
// acked the second's failures.
func TestBatchErrorTree(t *testing.T) {
	bad := func(i int) error {
		return consumer.BatchFailures(map[int]error{i: retry.Permanent(fmt.Errorf("row %d", i))})
	}
	commit := errors.New("commit failed")
	all := []string{"m0", "m1", "m2", "m3"}
	for _, tc := range []struct {
		name     string
		err      error
		wantDead []string
	}{
		{"a wrapped BatchError", fmt.Errorf("saving: %w", bad(1)), []string{"m1"}},
		{"a BatchError joined with a plain error", errors.Join(bad(0), commit), all},
		{"a plain error joined with a BatchError", errors.Join(commit, bad(0)), all},
		{"a BatchError and a plain error in one wrapper", fmt.Errorf("%w; %w", bad(1), commit), all},
		{"two joined BatchErrors", errors.Join(bad(0), bad(3)), []string{"m0", "m3"}},
		{"a joined BatchError and a wrapped one", errors.Join(bad(0), fmt.Errorf("part 2: %w", bad(2))), []string{"m0", "m2"}},
		{"two BatchErrors failing one message", errors.Join(bad(2), bad(2)), []string{"m2"}},
		{"a joined BatchError naming an index outside the batch", errors.Join(bad(0), bad(4)), all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			publishN(t, b, "q", 4)
			h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error { return tc.err })
			c, err := consumer.NewBatch(newSource(t, b, "q", 4), h, consumer.Batch{MaxSize: 4, MaxWait: time.Minute},
				consumer.WithLogger(quiet), consumer.WithMaxDeliveries(1))
			if err != nil {
				t.Fatal(err)
			}
			runBatch(t, c, func() bool {
				st := b.Stats("q")
				return st.Acked+st.DeadLettered == 4
			})
			if got := deadLetterIDs(b, "q"); fmt.Sprint(got) != fmt.Sprint(tc.wantDead) {
				t.Errorf("dead-lettered %v; want %v", got, tc.wantDead)
			}
		})
	}
}

// A source whose Sequenced.Lane panics is broken, like one that returns a
// nil delivery: the run fails with a fatal error before the handler sees
// the batch, and every delivery is given back. Regression: the batch was
// handled, given back and received again without end.
func TestBatchPanickingLaneFailsTheRun(t *testing.T) {
	src := newLaneSource(1, 2, 3)
	src.batches[0][1].panic = true
	handled := 0
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		handled++ // one worker: no race
		return nil
	})
	c, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: 10}, consumer.WithLogger(quiet),
		consumer.WithDrainTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = c.Run(ctx)
	if !broker.IsFatal(err) {
		t.Fatalf("Run = %v; want a fatal error", err)
	}
	if handled != 0 {
		t.Errorf("handler called %d times; want 0", handled)
	}
	for _, id := range []string{"m0", "m1", "m2"} {
		if got := src.outcome(id); got != "release" {
			t.Errorf("%s settled with %q; want release", id, got)
		}
	}
}

// While the kill switch probes, a batch holds one message: a probe that
// fails spends one message's attempt, not a whole batch's. Regression: each
// failed probe was a batch of MaxSize, spending an attempt of each.
func TestBatchKillSwitchProbesWithOneMessage(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 50)
	var mu sync.Mutex
	probing := false
	var probeSizes []int
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if probing {
			probeSizes = append(probeSizes, len(msgs))
		}
		return errors.New("database down")
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 50), h, consumer.Batch{MaxSize: 10, MaxWait: time.Minute},
		consumer.WithLogger(quiet), consumer.WithMaxDeliveries(100),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 5, RestartTimeout: time.Millisecond}),
		consumer.WithEventHook(func(e consumer.Event) {
			mu.Lock()
			defer mu.Unlock()
			switch e.Kind {
			case consumer.EventProbing:
				probing = true
			case consumer.EventTripped:
				probing = false
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(probeSizes) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	for _, n := range probeSizes {
		if n != 1 {
			t.Fatalf("probe batch sizes %v; want 1 each", probeSizes)
		}
	}
}

// A batch given back at a Pause keeps its order on a source that puts a
// released message at the head of its queue (memory). Regression: it came
// back reversed.
func TestBatchGivenBackKeepsItsOrder(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 4)
	var mu sync.Mutex
	var got []string
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			got = append(got, m.ID)
		}
		return nil
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 10), h, consumer.Batch{MaxSize: 5, MaxWait: time.Hour}, consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, "the worker to hold 4 messages", func() bool { return b.Stats("q").Unacked == 4 })
	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the batch given back", func() bool { st := b.Stats("q"); return st.Unacked == 0 && st.Ready == 4 })
	m4 := &broker.Message{ID: "m4", Body: []byte("4")}
	if err := b.Publish(context.Background(), "q", m4); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the batch", func() bool { return b.Stats("q").Acked == 5 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != "[m0 m1 m2 m3 m4]" {
		t.Errorf("handled %v; want [m0 m1 m2 m3 m4]", got)
	}
}
