package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// batchLog records what a batch handler saw.
type batchLog struct {
	mu      sync.Mutex
	sizes   []int
	handled map[string]int   // message ID → deliveries handled
	attempt map[string][]int // message ID → Attempt of each delivery
}

func newBatchLog() *batchLog {
	return &batchLog{handled: map[string]int{}, attempt: map[string][]int{}}
}

func (l *batchLog) see(msgs []*broker.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sizes = append(l.sizes, len(msgs))
	for _, m := range msgs {
		l.handled[m.ID]++
		l.attempt[m.ID] = append(l.attempt[m.ID], m.Attempt)
	}
}

func (l *batchLog) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.handled[id]
}

func runBatch(t *testing.T, c *consumer.Consumer, until func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, "the batches", until)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestNewBatchRejectsBadConfig(t *testing.T) {
	b := memory.NewBroker()
	src := newSource(t, b, "q", 8)
	h := consumer.BatchHandlerFunc(func(context.Context, []*broker.Message) error { return nil })
	mw := func(h consumer.Handler) consumer.Handler { return h }
	for _, tc := range []struct {
		name string
		src  broker.Source
		h    consumer.BatchHandler
		b    consumer.Batch
		opts []consumer.Option
	}{
		{"max size 0", src, h, consumer.Batch{MaxSize: 0}, nil},
		{"negative max wait", src, h, consumer.Batch{MaxSize: 2, MaxWait: -time.Second}, nil},
		{"nil handler", src, nil, consumer.Batch{MaxSize: 2}, nil},
		{"nil func handler", src, consumer.BatchHandlerFunc(nil), consumer.Batch{MaxSize: 2}, nil},
		{"nil source", nil, h, consumer.Batch{MaxSize: 2}, nil},
		{"middleware", src, h, consumer.Batch{MaxSize: 2}, []consumer.Option{consumer.WithMiddleware(mw)}},
		{"concurrency 0", src, h, consumer.Batch{MaxSize: 2}, []consumer.Option{consumer.WithConcurrency(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := consumer.NewBatch(tc.src, tc.h, tc.b, tc.opts...)
			if !errors.Is(err, broker.ErrInvalidConfig) || c != nil {
				t.Fatalf("NewBatch = %v, %v; want nil, ErrInvalidConfig", c, err)
			}
		})
	}
	if _, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: 1}, consumer.WithMiddleware(nil)); err != nil {
		t.Fatalf("NewBatch with only a nil middleware: %v; want nil", err)
	}
}

func TestBatchFailures(t *testing.T) {
	if err := consumer.BatchFailures(nil); err != nil {
		t.Fatalf("BatchFailures(nil) = %v; want nil", err)
	}
	if err := consumer.BatchFailures(map[int]error{3: nil}); err != nil {
		t.Fatalf("BatchFailures(only nil errors) = %v; want nil", err)
	}
	bad := errors.New("bad row")
	err := fmt.Errorf("insert: %w", consumer.BatchFailures(map[int]error{4: bad, 1: retry.Permanent(bad), 7: nil}))
	var be *consumer.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 {
		t.Fatalf("errors.As(%v) = %v; want a BatchError of 2", err, be)
	}
	if !errors.Is(err, bad) {
		t.Fatalf("errors.Is(%v, bad) = false; want true", err)
	}
	if got := err.Error(); !strings.Contains(got, "[1]:") || strings.Index(got, "[1]:") > strings.Index(got, "[4]:") {
		t.Fatalf("Error() = %q; want the failures in index order", got)
	}
}

// Issue 13, "Batch": a per-message failure inside a batch is retried alone;
// the other messages of the batch are acked, not redelivered.
func TestBatchPerMessageFailureIsRetriedAloneAndTheRestAcked(t *testing.T) {
	const n = 10
	b := memory.NewBroker()
	publishN(t, b, "q", n)
	log := newBatchLog()
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		log.see(msgs)
		failed := map[int]error{}
		for i, m := range msgs {
			if m.ID == "m3" && m.Attempt == 1 {
				failed[i] = errors.New("row m3 refused")
			}
		}
		return consumer.BatchFailures(failed)
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", n), h, consumer.Batch{MaxSize: n, MaxWait: time.Second},
		consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool { return b.Stats("q").Acked == n })

	if log.sizes[0] != n {
		t.Fatalf("first batch size %d; want %d (the prefetch and MaxSize)", log.sizes[0], n)
	}
	for i := range n {
		id := fmt.Sprintf("m%d", i)
		want := 1
		if id == "m3" {
			want = 2
		}
		if got := log.count(id); got != want {
			t.Errorf("%s handled %d times; want %d", id, got, want)
		}
	}
	if got := log.attempt["m3"]; fmt.Sprint(got) != "[1 2]" {
		t.Errorf("m3 attempts %v; want [1 2]", got)
	}
	if len(log.sizes) != 2 || log.sizes[1] != 1 {
		t.Errorf("batch sizes %v; want [%d 1]: m3 retried alone", log.sizes, n)
	}
	st := b.Stats("q")
	if st.Acked != n || st.Requeued != 1 || st.Delivered != n+1 {
		t.Errorf("broker stats %+v; want %d acked, 1 requeued, %d delivered", st, n, n+1)
	}
	cs := c.Stats()
	if cs.Handled != n || cs.Failed != 1 || cs.Requeued != 1 {
		t.Errorf("consumer stats %+v; want %d handled, 1 failed, 1 requeued", cs, n)
	}
}

func TestBatchOutcomes(t *testing.T) {
	boom := errors.New("database down")
	for _, tc := range []struct {
		name        string
		fail        func(msgs []*broker.Message) error
		wantDead    int
		wantAcked   int
		wantHandled map[string]int // by message ID (default 1)
	}{
		{
			name:      "a plain error fails the whole batch",
			fail:      func(msgs []*broker.Message) error { return boom },
			wantAcked: 0, wantDead: 4,
			wantHandled: map[string]int{"m0": 2, "m1": 2, "m2": 2, "m3": 2},
		},
		{
			name:     "a panic fails the whole batch",
			fail:     func(msgs []*broker.Message) error { panic("bug") },
			wantDead: 4, wantHandled: map[string]int{"m0": 2, "m1": 2, "m2": 2, "m3": 2},
		},
		{
			name: "a permanent failure is dead-lettered at once",
			fail: func(msgs []*broker.Message) error {
				return consumer.BatchFailures(map[int]error{1: retry.Permanent(errors.New("bad payload"))})
			},
			wantAcked: 3, wantDead: 1,
		},
		{
			name: "an index outside the batch fails the whole batch",
			fail: func(msgs []*broker.Message) error {
				return consumer.BatchFailures(map[int]error{len(msgs): errors.New("off by one")})
			},
			wantDead: 4, wantHandled: map[string]int{"m0": 2, "m1": 2, "m2": 2, "m3": 2},
		},
		{
			name:     "a BatchError naming no failure fails the whole batch",
			fail:     func(msgs []*broker.Message) error { return &consumer.BatchError{} },
			wantDead: 4, wantHandled: map[string]int{"m0": 2, "m1": 2, "m2": 2, "m3": 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			publishN(t, b, "q", 4)
			log := newBatchLog()
			h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
				log.see(msgs)
				return tc.fail(msgs)
			})
			c, err := consumer.NewBatch(newSource(t, b, "q", 4), h, consumer.Batch{MaxSize: 4, MaxWait: time.Second},
				consumer.WithLogger(quiet), consumer.WithMaxDeliveries(2))
			if err != nil {
				t.Fatal(err)
			}
			runBatch(t, c, func() bool {
				st := b.Stats("q")
				return st.Acked+st.DeadLettered == 4
			})
			st := b.Stats("q")
			if st.Acked != tc.wantAcked || st.DeadLettered != tc.wantDead {
				t.Errorf("acked %d, dead-lettered %d; want %d, %d", st.Acked, st.DeadLettered, tc.wantAcked, tc.wantDead)
			}
			for i := range 4 {
				id := fmt.Sprintf("m%d", i)
				want := 1
				if w, ok := tc.wantHandled[id]; ok {
					want = w
				}
				if got := log.count(id); got != want {
					t.Errorf("%s handled %d times; want %d", id, got, want)
				}
			}
		})
	}
}

// A batch holds MaxSize messages, or what arrived within MaxWait of the
// first: a lone message is not held back for more.
func TestBatchMaxWaitHandsOverWhatArrived(t *testing.T) {
	b := memory.NewBroker()
	log := newBatchLog()
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		log.see(msgs)
		return nil
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 100), h, consumer.Batch{MaxSize: 100, MaxWait: 20 * time.Millisecond},
		consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, "q", 1)
	runBatch(t, c, func() bool { return b.Stats("q").Acked == 1 })
	if fmt.Sprint(log.sizes) != "[1]" {
		t.Fatalf("batch sizes %v; want [1]", log.sizes)
	}
}

// Messages of a batch being collected when the intake stops are given back
// unhandled with no attempt spent; a batch whose handler runs finishes and
// is acked.
func TestBatchDrainAndPause(t *testing.T) {
	t.Run("collecting batch given back on pause", func(t *testing.T) {
		b := memory.NewBroker()
		log := newBatchLog()
		h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
			log.see(msgs)
			return nil
		})
		c, err := consumer.NewBatch(newSource(t, b, "q", 10), h, consumer.Batch{MaxSize: 10, MaxWait: time.Hour},
			consumer.WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		publishN(t, b, "q", 3)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		waitFor(t, "3 messages collected", func() bool { return b.Stats("q").Unacked == 3 })
		if err := c.Pause(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the batch given back", func() bool { return b.Stats("q").Ready == 3 })
		if err := c.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
		for i := 3; i < 10; i++ { // fill the batch: 10
			if err := b.Publish(context.Background(), "q", &broker.Message{ID: fmt.Sprintf("m%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "all acked", func() bool { return b.Stats("q").Acked == 10 })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for id, atts := range log.attempt {
			if fmt.Sprint(atts) != "[1]" {
				t.Errorf("%s attempts %v; want [1]: given back unspent", id, atts)
			}
		}
		if fmt.Sprint(log.sizes) != "[10]" {
			t.Errorf("batch sizes %v; want [10]", log.sizes)
		}
	})
	t.Run("batch in flight finishes at drain", func(t *testing.T) {
		b := memory.NewBroker()
		publishN(t, b, "q", 5)
		started := make(chan struct{})
		release := make(chan struct{})
		h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
			close(started)
			<-release
			return nil
		})
		c, err := consumer.NewBatch(newSource(t, b, "q", 5), h, consumer.Batch{MaxSize: 5, MaxWait: time.Second},
			consumer.WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		<-started
		cancel()
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if st := b.Stats("q"); st.Acked != 5 {
			t.Fatalf("acked %d; want 5", st.Acked)
		}
	})
	t.Run("batch abandoned at the drain deadline is given back whole", func(t *testing.T) {
		b := memory.NewBroker()
		publishN(t, b, "q", 5)
		started := make(chan struct{})
		var cause atomic.Value
		h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
			close(started)
			<-ctx.Done()
			cause.Store(context.Cause(ctx))
			return nil // as a careless handler would: still given back
		})
		c, err := consumer.NewBatch(newSource(t, b, "q", 5), h, consumer.Batch{MaxSize: 5, MaxWait: time.Second},
			consumer.WithLogger(quiet), consumer.WithDrainTimeout(20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		<-started
		cancel()
		if err := <-done; !errors.Is(err, consumer.ErrDrainTimeout) {
			t.Fatalf("Run = %v; want ErrDrainTimeout", err)
		}
		waitFor(t, "the cause", func() bool { return cause.Load() != nil })
		if got := cause.Load().(error); !errors.Is(got, consumer.ErrDrainTimeout) {
			t.Errorf("handler ctx cause %v; want ErrDrainTimeout", got)
		}
		if st := b.Stats("q"); st.Acked != 0 || st.Ready != 5 {
			t.Fatalf("stats %+v; want 0 acked, 5 ready", st)
		}
		if cs := c.Stats(); cs.Abandoned != 1 || cs.GivenBack != 5 {
			t.Errorf("consumer stats %+v; want 1 handler abandoned, 5 messages given back", cs)
		}
	})
}

// Several workers fill batches at once, each at most MaxSize: every message
// is handled once.
func TestBatchConcurrentWorkers(t *testing.T) {
	const n = 500
	b := memory.NewBroker()
	publishN(t, b, "q", n)
	log := newBatchLog()
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		log.see(msgs)
		return nil
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 4*16), h, consumer.Batch{MaxSize: 16, MaxWait: 5 * time.Millisecond},
		consumer.WithLogger(quiet), consumer.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool { return b.Stats("q").Acked == n })
	sizes := append([]int(nil), log.sizes...)
	sort.Ints(sizes)
	if sizes[len(sizes)-1] > 16 {
		t.Fatalf("largest batch %d; want at most 16", sizes[len(sizes)-1])
	}
	if len(log.handled) != n {
		t.Fatalf("%d distinct messages handled; want %d", len(log.handled), n)
	}
	for id, k := range log.handled {
		if k != 1 {
			t.Fatalf("%s handled %d times; want 1", id, k)
		}
	}
}

// The kill switch sees each message of a batch: a dependency down fails
// whole batches, the switch trips, the messages of the batch in hand when it
// tripped are given back unspent, and once the dependency is back every
// message is acked, none dead-lettered. Adaptive concurrency limits batches.
func TestBatchWithKillSwitchAndAdaptiveConcurrency(t *testing.T) {
	const n = 200
	b := memory.NewBroker()
	publishN(t, b, "q", n)
	var down atomic.Bool
	down.Store(true)
	var trips atomic.Int64
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		if down.Load() {
			return errors.New("database down")
		}
		return nil
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 40), h, consumer.Batch{MaxSize: 10, MaxWait: 5 * time.Millisecond},
		consumer.WithLogger(quiet), consumer.WithConcurrency(4), consumer.WithMaxDeliveries(3),
		consumer.WithAdaptiveConcurrency(consumer.Adaptive{}),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 5, RestartTimeout: 20 * time.Millisecond, ProbeMessages: 3}),
		consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventTripped && trips.Add(1) == 1 {
				down.Store(false)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool { return b.Stats("q").Acked == n })
	st := b.Stats("q")
	if st.DeadLettered != 0 || trips.Load() < 1 {
		t.Fatalf("dead-lettered %d, trips %d; want 0, at least 1", st.DeadLettered, trips.Load())
	}
	if cs := c.Stats(); cs.GivenBack < 1 {
		t.Errorf("consumer stats %+v; want messages given back when the switch tripped", cs)
	}
}

// With MaxWait 0 nothing is waited for: on a source that hands out one
// delivery per Receive (memory, RabbitMQ) a batch is one message.
func TestBatchMaxWaitZeroOnAPlainSource(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 5)
	log := newBatchLog()
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		log.see(msgs)
		return nil
	})
	c, err := consumer.NewBatch(newSource(t, b, "q", 5), h, consumer.Batch{MaxSize: 5}, consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool { return b.Stats("q").Acked == 5 })
	if fmt.Sprint(log.sizes) != "[1 1 1 1 1]" {
		t.Fatalf("batch sizes %v; want [1 1 1 1 1]", log.sizes)
	}
}

// A batch consumer is a Consumer: a Supervisor runs it, reports it ready,
// pauses and resumes it by name, and drains it when its context ends.
func TestBatchConsumerUnderASupervisor(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 20)
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error { return nil })
	c, err := consumer.NewBatch(newSource(t, b, "q", 10), h, consumer.Batch{MaxSize: 10, MaxWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: quiet}
	if err := sup.Add("bulk", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "the first 20 acked", func() bool { return b.Stats("q").Acked == 20 })
	if h := sup.Health(); !h.Ready || h.Runners[0].Name != "bulk" || h.Runners[0].State != consumer.StateRunning {
		t.Fatalf("Health() = %+v; want ready, bulk running", h)
	}
	if err := sup.Pause(context.Background(), "bulk"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "paused", func() bool { return c.State() == consumer.StatePaused })
	publishN(t, b, "q", 5)
	if err := sup.Resume(context.Background(), "bulk"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all acked", func() bool { return b.Stats("q").Acked == 25 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run = %v", err)
	}
	if st := c.State(); st != consumer.StateStopped {
		t.Fatalf("State() = %v after the Supervisor stopped; want stopped", st)
	}
}
