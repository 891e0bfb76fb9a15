package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

func publishN(t testing.TB, b *memory.Broker, queue string, n int) {
	t.Helper()
	for i := range n {
		if err := b.Publish(context.Background(), queue, &broker.Message{ID: fmt.Sprintf("m%d", i), Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
}

func newSource(t testing.TB, b *memory.Broker, queue string, prefetch int) broker.Source {
	t.Helper()
	src, err := b.Source(queue, memory.SourceConfig{Prefetch: prefetch})
	if err != nil {
		t.Fatalf("Source(%q): %v", queue, err)
	}
	return src
}

// waitFor polls cond until it holds or a generous bound passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Issue 2, "Drain": 8 handlers each busy 200 ms, 1,000 messages queued, the
// Supervisor's context cancelled → Run returns after about one handler
// duration, every in-flight message acked, every other message still in the
// broker.
func TestSupervisorDrainAcksInFlightAndLeavesTheRestQueued(t *testing.T) {
	const (
		queue    = "orders"
		total    = 1000
		workers  = 8
		busy     = 200 * time.Millisecond
		prefetch = workers
	)
	b := memory.NewBroker()
	publishN(t, b, queue, total)
	// Slow acks that honour their context: had settlement used the cancelled
	// run context, every ack below would fail and the count would show it.
	b.SetAckDelay(20 * time.Millisecond)

	var started, finished atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started.Add(1)
		time.Sleep(busy) // busy: does not look at ctx, and need not, within the drain timeout
		finished.Add(1)
		return nil
	})
	c, err := consumer.New(newSource(t, b, queue, prefetch), h,
		consumer.WithConcurrency(workers), consumer.WithLogger(quiet), consumer.WithDrainTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var drained consumer.DrainReport
	var mu sync.Mutex
	sup := &consumer.Supervisor{Logger: quiet, OnEvent: func(e consumer.Event) {
		if e.Kind == consumer.EventDrained {
			mu.Lock()
			drained = e.Drain
			mu.Unlock()
		}
	}}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	waitFor(t, "8 handlers in flight", func() bool { return started.Load() == workers })
	if h := sup.Health(); !h.Ready {
		t.Errorf("Health while consuming = %+v; want ready", h)
	}
	cancel()
	stopAt := time.Now()
	// Phase 1 flips readiness: while the handlers finish, the consumer reports draining.
	waitFor(t, "Health to report draining", func() bool {
		h := sup.Health()
		return !h.Ready && h.Runners[0].State == consumer.StateDraining
	})
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run = %v; want nil after a clean drain", err)
	}
	took := time.Since(stopAt)

	st := b.Stats(queue)
	inFlight := int(started.Load())
	t.Logf("Run returned %v after cancel; started %d, finished %d; stats %+v; drain %+v", took, inFlight, finished.Load(), st, drained)
	if int(finished.Load()) != inFlight {
		t.Errorf("finished handlers = %d; want every started one (%d) to finish during the drain", finished.Load(), inFlight)
	}
	if st.Acked != inFlight {
		t.Errorf("acked = %d; want exactly the in-flight messages (%d)", st.Acked, inFlight)
	}
	if st.Ready != total-inFlight || st.Unacked != 0 {
		t.Errorf("ready = %d, unacked = %d; want %d ready and 0 unacked (nothing else acked, nothing lost)", st.Ready, st.Unacked, total-inFlight)
	}
	if st.DeadLettered != 0 {
		t.Errorf("dead-lettered = %d; want 0", st.DeadLettered)
	}
	if took > 5*busy+20*time.Millisecond {
		t.Errorf("Run returned %v after cancel; want about one handler duration (%v)", took, busy)
	}
	mu.Lock()
	defer mu.Unlock()
	if drained.Handled != inFlight || drained.Abandoned != 0 {
		t.Errorf("drain report = %+v; want Handled %d, Abandoned 0", drained, inFlight)
	}
}

// Issue 2, "Drain deadline": a handler that ignores its context → Run returns
// at the drain timeout, the handler's context cause is ErrDrainTimeout, and its
// message is redelivered later, not acked and not lost.
func TestDrainDeadlineCancelsWithErrDrainTimeoutAndRedelivers(t *testing.T) {
	const queue = "stuck"
	const drainTimeout = 300 * time.Millisecond
	b := memory.NewBroker()
	publishN(t, b, queue, 1)

	release := make(chan struct{})
	handlerDone := make(chan struct{})
	entered := make(chan context.Context, 1)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		defer close(handlerDone)
		entered <- ctx
		<-release // ignores ctx on purpose
		return nil
	})
	c, err := consumer.New(newSource(t, b, queue, 1), h, consumer.WithLogger(quiet), consumer.WithDrainTimeout(drainTimeout))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	hctx := <-entered
	cancel()
	stopAt := time.Now()
	runErr := <-done
	took := time.Since(stopAt)
	t.Logf("Run returned %v after cancel (drain timeout %v): %v", took, drainTimeout, runErr)

	if !errors.Is(runErr, consumer.ErrDrainTimeout) {
		t.Errorf("Run = %v; want an error wrapping ErrDrainTimeout", runErr)
	}
	if took < drainTimeout || took > drainTimeout+2*time.Second {
		t.Errorf("Run returned %v after cancel; want at the drain timeout (%v)", took, drainTimeout)
	}
	if cause := context.Cause(hctx); !errors.Is(cause, consumer.ErrDrainTimeout) {
		t.Errorf("context.Cause(handler ctx) = %v; want ErrDrainTimeout", cause)
	}
	if st := b.Stats(queue); st.Acked != 0 || st.Ready != 1 {
		t.Errorf("after Run: acked %d, ready %d; want 0 acked and the message back in the queue", st.Acked, st.Ready)
	}

	// The abandoned handler finally returns nil: its result must be dropped.
	close(release)
	<-handlerDone
	if st := b.Stats(queue); st.Acked != 0 {
		t.Errorf("late return of an abandoned handler acked the message (acked %d); want its result dropped", st.Acked)
	}

	// Redelivered to the next consumer, as a second attempt.
	var got atomic.Int64
	c2, err := consumer.New(newSource(t, b, queue, 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		got.Store(int64(m.Attempt))
		return nil
	}), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- c2.Run(ctx2) }()
	waitFor(t, "redelivery acked", func() bool { return b.Stats(queue).Acked == 1 })
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	if got.Load() != 2 {
		t.Errorf("redelivered Attempt = %d; want 2", got.Load())
	}
}

// Shutdown has net/http semantics: it waits for in-flight handlers, and Run
// returns ErrConsumerClosed; a second Run is refused.
func TestShutdownWaitsForInFlightAndRunReturnsErrConsumerClosed(t *testing.T) {
	const queue = "shutdown"
	b := memory.NewBroker()
	publishN(t, b, queue, 10)
	entered := make(chan struct{}, 10)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		entered <- struct{}{}
		time.Sleep(50 * time.Millisecond)
		return nil
	})
	c, err := consumer.New(newSource(t, b, queue, 2), h, consumer.WithConcurrency(2), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	<-entered
	if err := c.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown = %v; want nil", err)
	}
	if err := <-done; !errors.Is(err, consumer.ErrConsumerClosed) {
		t.Fatalf("Run = %v; want ErrConsumerClosed", err)
	}
	st := b.Stats(queue)
	if st.Acked+st.Ready != 10 || st.Unacked != 0 || st.Acked < 1 {
		t.Errorf("stats %+v; want acked (≥1, the in-flight ones) + ready = 10, nothing unacked", st)
	}
	if err := c.Run(context.Background()); !errors.Is(err, consumer.ErrConsumerClosed) {
		t.Errorf("Run after Shutdown = %v; want ErrConsumerClosed", err)
	}
	if err := c.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown = %v; want nil (idempotent)", err)
	}
}

// Close stops at once: running handlers are cancelled with ErrConsumerClosed
// and their messages go back, unacked.
func TestCloseCancelsHandlersAndGivesTheirMessagesBack(t *testing.T) {
	const queue = "close"
	b := memory.NewBroker()
	publishN(t, b, queue, 4)
	entered := make(chan struct{}, 4)
	var causes sync.Map
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		entered <- struct{}{}
		<-ctx.Done()
		causes.Store(m.ID, context.Cause(ctx))
		return ctx.Err()
	})
	c, err := consumer.New(newSource(t, b, queue, 2), h, consumer.WithConcurrency(2), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	<-entered
	<-entered
	if err := c.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := <-done; !errors.Is(err, consumer.ErrConsumerClosed) {
		t.Fatalf("Run = %v; want ErrConsumerClosed", err)
	}
	st := b.Stats(queue)
	if st.Acked != 0 || st.Ready != 4 || st.Unacked != 0 || st.DeadLettered != 0 {
		t.Errorf("stats %+v; want all 4 back in the queue, none acked or dead-lettered", st)
	}
	n := 0
	causes.Range(func(k, v any) bool {
		n++
		if !errors.Is(v.(error), consumer.ErrConsumerClosed) {
			t.Errorf("cause for %v = %v; want ErrConsumerClosed", k, v)
		}
		return true
	})
	_ = n // handlers may still be recording when Close returns for abandoned ones
}

// A delivery that outlived its connection cannot be acked: the runtime reports
// the stale settlement and the broker redelivers the message, which is then
// handled and acked on the new connection.
func TestStaleDeliveryIsNotAckedAndIsRedelivered(t *testing.T) {
	const queue = "stale"
	b := memory.NewBroker()
	publishN(t, b, queue, 1)
	src, err := b.Source(queue, memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	release := make(chan struct{})
	var attempts []int
	var mu sync.Mutex
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		first := len(attempts) == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		return nil
	})
	var staleErrs atomic.Int64
	c, err := consumer.New(src, h, consumer.WithLogger(quiet), consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, err error) {
		if s == consumer.SettledAck && errors.Is(err, broker.ErrStaleDelivery) {
			staleErrs.Add(1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-entered
	src.DropConnection() // the handler's delivery is now stale
	close(release)
	waitFor(t, "the redelivery to be acked", func() bool { return b.Stats(queue).Acked == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if staleErrs.Load() != 1 || len(attempts) != 2 || attempts[1] != 2 {
		t.Errorf("stale acks %d, attempts %v; want 1 stale ack refused and a redelivery with Attempt 2", staleErrs.Load(), attempts)
	}
	if st := b.Stats(queue); st.Acked != 1 || st.Ready != 0 || st.Unacked != 0 {
		t.Errorf("stats %+v; want exactly one ack and an empty queue", st)
	}
}
