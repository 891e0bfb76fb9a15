package rabbitmq

// Regression tests for issue 9, items 9-11 (RabbitMQ: Pause with a done
// context, order and attempts across Pause/Resume, requeue on a length-limited
// classic queue). Each failed on the code before the fix.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// bufferGoroutines counts the goroutines of amqp091-go's per-subscription
// delivery buffers: one per live subscription, and one per cancelled
// subscription whose buffered deliveries nobody took.
func bufferGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Count(string(buf), "amqp091-go.(*consumers).buffer(")
}

// Item 9. Pause with a context that is already done gave up on the
// give-back after the basic.cancel: the deliveries still in the client's
// buffer stayed unacknowledged (19 of 60 in the issue's run) until the source
// closed, Resume did not see them, and amqp091's buffer goroutine of the
// cancelled subscription stayed blocked. Now the session loop finishes the
// give-back whatever the caller's context: nothing stays unacknowledged while
// paused, no buffer goroutine is left, and every message is handled once.
func TestIssue9PauseWithADoneContextStrandsNothing(t *testing.T) {
	needCtl(t)
	const n = 60
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	prepublish(t, q, n, 16)
	cfg := testConfig(q)
	cfg.Prefetch = n // everything is in the client's buffer at once
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		time.Sleep(5 * time.Millisecond)
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(1), consumer.WithLogger(quietLogger()))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	waitFor(t, 20*time.Second, "connected", func() bool { return src.Status().Connected })

	doneCtx, doneCancel := context.WithCancel(context.Background())
	doneCancel()
	for _, at := range []int64{1, 7, 20, 33, 50} {
		reached := time.Now().Add(20 * time.Second)
		for cnt.n.Load() < at && time.Now().Before(reached) {
			time.Sleep(5 * time.Millisecond)
		}
		if cnt.n.Load() < at {
			t.Errorf("only %d handled, never reached %d: messages are missing", cnt.n.Load(), at)
			break
		}
		perr := c.Pause(doneCtx)
		if perr != nil && !errors.Is(perr, context.Canceled) {
			t.Fatalf("Pause(done ctx) at %d = %v; want nil or context.Canceled", at, perr)
		}
		// The handler in flight finishes and acks; everything else must be
		// back in the queue, ready, with no goroutine left behind.
		var ready, unacked, buffers int
		deadline := time.Now().Add(15 * time.Second)
		for {
			ready, unacked = queueCounts(t, q)
			buffers = bufferGoroutines()
			if (unacked == 0 && buffers == 0) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		handled := cnt.n.Load()
		t.Logf("Pause(done ctx) after %d handled: Pause = %v; queue ready=%d unacked=%d; amqp091 buffer goroutines %d",
			handled, perr, ready, unacked, buffers)
		if unacked != 0 {
			t.Errorf("paused after %d handled: %d deliveries stranded unacknowledged in the client; want 0", handled, unacked)
		}
		if buffers != 0 {
			t.Errorf("paused after %d handled: %d amqp091 consumer-buffer goroutines left; want 0", handled, buffers)
		}
		if err := c.Resume(context.Background()); err != nil {
			t.Fatalf("Resume = %v", err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for cnt.distinct() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := cnt.distinct(); got != n {
		t.Errorf("after Resume: %d of %d messages handled (%d stranded); want all", got, n, n-got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if got := cnt.n.Load(); got != int64(cnt.distinct()) {
		t.Errorf("handled %d times for %d messages; want each once", got, cnt.distinct())
	}
}

// Item 10. With one worker on a classic queue, Pause/Resume cycles put
// messages thousands of places later and spent attempts on messages no
// handler saw: Receive could return a delivery after its context ended, and
// the runtime's give-back (Requeue) republished it to the back of the queue
// with Attempt+1; the deliveries the Pause gave back with basic.nack came
// back redelivered, which counted as a second attempt too. Now a delivery no
// handler saw is released (nack with requeue: the broker puts it back at its
// place) and its next delivery carries the same Attempt.
//
// On a quorum queue only "every message handled once" is asserted; the
// figures are logged. RabbitMQ 3.10 puts a message returned to a quorum
// queue at the back, so order is not kept there, and a released message
// comes back only after the rest of the queue: by then the source's bounded
// memory of released messages may have let its entry go, and the delivery
// counts x-delivery-count as before.
func TestIssue9PauseResumeCyclesKeepOrderAndAttempts(t *testing.T) {
	needBroker(t)
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) { testPauseResumeOrderAndAttempts(t, typ) })
	}
}

func testPauseResumeOrderAndAttempts(t *testing.T, typ string) {
	const (
		n      = 20000
		cycles = 1000
	)
	q := uniqueQueue(t)
	declareQueue(t, q, typ)
	prepublish(t, q, n, 16)
	cfg := testConfig(q)
	cfg.Topology.QueueType = typ
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu         sync.Mutex
		calls      int
		seen       = make([]bool, n)
		maxSeen    = -1
		inversions int
		worst      int // largest distance an inverted message came late by
		attempts   = map[int]int{}
	)
	var handled atomic.Int64
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		i, err := strconv.Atoi(m.ID)
		if err != nil || i < 0 || i >= n {
			return retry.Permanent(fmt.Errorf("unexpected message id %q", m.ID))
		}
		mu.Lock()
		calls++
		attempts[m.Attempt]++
		if !seen[i] {
			seen[i] = true
			handled.Add(1)
			if i < maxSeen {
				inversions++
				worst = max(worst, maxSeen-i)
			}
			maxSeen = max(maxSeen, i)
		}
		mu.Unlock()
		return nil
	}), consumer.WithConcurrency(1), consumer.WithLogger(quietLogger()))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	waitFor(t, 20*time.Second, "connected", func() bool { return src.Status().Connected })

	bg := context.Background()
	atStart := handled.Load()
	start := time.Now()
	for i := 0; i < cycles; i++ {
		if err := c.Pause(bg); err != nil {
			t.Fatalf("Pause %d = %v", i, err)
		}
		if err := c.Resume(bg); err != nil {
			t.Fatalf("Resume %d = %v", i, err)
		}
		if i%4 == 0 {
			time.Sleep(500 * time.Microsecond) // let the worker take a few
		}
	}
	cycleTime := time.Since(start)
	duringCycles := handled.Load() - atStart
	if handled.Load() >= n {
		t.Fatalf("the queue ran dry during the cycles (%d handled); publish more messages", handled.Load())
	}
	waitFor(t, 120*time.Second, "all handled", func() bool { return handled.Load() == n })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	keys := make([]int, 0, len(attempts))
	for k := range attempts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var hist []string
	for _, k := range keys {
		hist = append(hist, fmt.Sprintf("attempt %d: %d", k, attempts[k]))
	}
	t.Logf("%s queue: %d Pause/Resume cycles in %v, %d messages handled during them; %d messages, %d handler calls; order inversions %d (worst: %d places late); %s",
		typ, cycles, cycleTime.Round(time.Millisecond), duringCycles, n, calls, inversions, worst, strings.Join(hist, ", "))
	if inversions != 0 && typ == Classic {
		t.Errorf("order inversions = %d (worst %d places late); want 0", inversions, worst)
	}
	if calls != n {
		t.Errorf("%d handler calls for %d messages; want each handled once", calls, n)
	}
	if typ == Classic && attempts[1] != calls {
		t.Errorf("attempt histogram %v over %d calls for %d messages; want every message once with Attempt 1 (no handler failed)", hist, calls, n)
	}
}

// Item 11. On a classic queue with x-max-length and the default drop-head
// overflow, Requeue republished a copy; on a full queue the broker dropped
// the head message, which no consumer had seen and which was not
// dead-lettered. A nack with requeue is no way out either: on RabbitMQ 3.10
// the requeued message lands at the head of the full queue and is dropped
// itself. So the source refuses the combination at start; this test runs the
// scenario when the source accepts it, and then fails if a message is lost.
func TestIssue9RequeueOnAFullDropHeadQueueLosesNothing(t *testing.T) {
	needBroker(t)
	const max = 10
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Prefetch = 1
	cfg.Logger = quietLogger()
	cfg.Topology.QueueArgs = amqp.Table{"x-max-length": int32(max)} // overflow: drop-head, the default
	src, err := NewSource(cfg)
	if err != nil {
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Fatalf("NewSource(drop-head classic queue) = %v; want an error wrapping consumer.ErrInvalidConfig", err)
		}
		t.Logf("refused at start: %v", err)
		return
	}
	runFullQueueScenario(t, q, src, max, 1)
}

// Item 11, the supported way: with x-overflow reject-publish the broker
// refuses the republished copy while the queue is full instead of dropping
// a message, the source tries again, and nothing is lost: every message is
// handled, the failing one after one retry.
func TestIssue9RequeueOnAFullRejectPublishQueueLosesNothing(t *testing.T) {
	needBroker(t)
	const max = 10
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Prefetch = 2
	cfg.Logger = quietLogger()
	cfg.Topology.QueueArgs = amqp.Table{"x-max-length": int32(max), "x-overflow": "reject-publish"}
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatalf("NewSource(reject-publish classic queue) = %v", err)
	}
	runFullQueueScenario(t, q, src, max, 2)
}

// runFullQueueScenario fills q (limited to max ready messages), lets the
// handler fail message "0" once while the test fills the queue up again,
// and checks that every message is handled or dead-lettered.
func runFullQueueScenario(t *testing.T, q string, src *Source, max, workers int) {
	t.Helper()
	// The source declares the queue with its limit; publish once it has.
	if err := DeclareTopology(context.Background(), Dialer{URL: amqpURL()}, q, src.cfg.Topology); err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	publish := func(id string) {
		t.Helper()
		if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: id, Body: []byte(id)}); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	for i := 0; i < max; i++ {
		publish(strconv.Itoa(i))
	}
	var failed atomic.Bool
	inZero := make(chan struct{})
	refilled := make(chan struct{})
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if m.ID == "0" && failed.CompareAndSwap(false, true) {
			close(inZero)
			select {
			case <-refilled:
			case <-ctx.Done():
			}
			return errors.New("transient failure")
		}
		// Every worker holds its first message until the queue is full again.
		select {
		case <-refilled:
		case <-ctx.Done():
		}
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(workers), consumer.WithMaxDeliveries(3), consumer.WithLogger(quietLogger()))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	select {
	case <-inZero:
	case <-time.After(30 * time.Second):
		t.Fatal("message 0 never reached the handler")
	}
	// Refill: the queue holds max ready messages again (what the source
	// prefetched is not counted by the broker).
	ready := 0
	extra := 0
	for ready < max {
		publish(strconv.Itoa(max + extra))
		extra++
		time.Sleep(50 * time.Millisecond) // let the workers take what they can
		ready = queueReady(t, q)
	}
	close(refilled)
	total := max + extra
	deadline := time.Now().Add(30 * time.Second)
	var dead []broker.Message
	for time.Now().Before(deadline) {
		dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		dead = readQueue(dctx, t, q+".dlq", total)
		dcancel()
		if cnt.distinct()+len(dead) >= total {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	var missing []string
	for i := 0; i < total; i++ {
		id := strconv.Itoa(i)
		cnt.mu.Lock()
		_, ok := cnt.seen[id]
		cnt.mu.Unlock()
		if !ok && !slices.ContainsFunc(dead, func(m broker.Message) bool { return m.ID == id }) {
			missing = append(missing, id)
		}
	}
	t.Logf("%d messages published into a queue of %d; %d handled, %d dead-lettered, lost %v", total, max, cnt.distinct(), len(dead), missing)
	if len(missing) > 0 {
		t.Errorf("messages %v neither handled nor dead-lettered: lost", missing)
	}
}

// queueReady returns the number of ready messages in q (a passive declare).
func queueReady(t *testing.T, q string) int {
	t.Helper()
	c := rawConn(t)
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return qi.Messages
}

// Item 11: the combinations the source refuses, and those it accepts.
func TestIssue9DropHeadClassicQueueIsRefused(t *testing.T) {
	tests := []struct {
		name    string
		topo    Topology
		refused bool
	}{
		{"x-max-length with the default overflow", Topology{QueueArgs: amqp.Table{"x-max-length": int32(5)}}, true},
		{"x-max-length-bytes with drop-head", Topology{QueueArgs: amqp.Table{"x-max-length-bytes": int64(1 << 20), "x-overflow": "drop-head"}}, true},
		{"x-max-length on an explicit classic queue", Topology{QueueType: Classic, QueueArgs: amqp.Table{"x-max-length": 5}}, true},
		{"x-max-length with reject-publish", Topology{QueueArgs: amqp.Table{"x-max-length": int32(5), "x-overflow": "reject-publish"}}, false},
		{"x-max-length with reject-publish-dlx", Topology{QueueArgs: amqp.Table{"x-max-length": int32(5), "x-overflow": "reject-publish-dlx"}}, false},
		{"x-max-length on a quorum queue", Topology{QueueType: Quorum, QueueArgs: amqp.Table{"x-max-length": int32(5)}}, false},
		{"no length limit", Topology{QueueArgs: amqp.Table{"x-overflow": "drop-head"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewSource(Config{Queue: "q", Dialer: Dialer{URL: "amqp://guest:guest@127.0.0.1:5672/"}, Topology: tt.topo})
			if tt.refused != (err != nil) {
				t.Fatalf("NewSource(%v) = %v; want refused=%v", tt.topo.QueueArgs, err, tt.refused)
			}
			if tt.refused && !errors.Is(err, broker.ErrInvalidConfig) {
				t.Fatalf("NewSource(%v) = %v; want an error wrapping consumer.ErrInvalidConfig", tt.topo.QueueArgs, err)
			}
			if !tt.refused {
				return
			}
			// DeclareTopology validates before it dials (nothing listens on port 1).
			derr := DeclareTopology(context.Background(), Dialer{URL: "amqp://guest:guest@127.0.0.1:1/"}, "q", tt.topo)
			if !errors.Is(derr, broker.ErrInvalidConfig) {
				t.Fatalf("DeclareTopology(%v) = %v; want an error wrapping consumer.ErrInvalidConfig", tt.topo.QueueArgs, derr)
			}
			t.Logf("%v", err)
		})
	}
}

// The memory of released messages is bounded: when full, the oldest entry
// goes (its message then counts its redelivery, as without the memory).
func TestIssue9AttemptMemoIsBounded(t *testing.T) {
	var m attemptMemo
	m.init(1)
	d := func(i int) *amqp.Delivery {
		return &amqp.Delivery{MessageId: strconv.Itoa(i), Body: []byte("body"), Redelivered: true}
	}
	for i := 0; i < m.max+10; i++ {
		m.put(d(i), i%7+1)
	}
	if got := len(m.m); got != m.max {
		t.Fatalf("memo holds %d entries after %d puts; want the bound %d", got, m.max+10, m.max)
	}
	for i := 0; i < 10; i++ {
		if a, ok := m.take(d(i)); ok {
			t.Errorf("take(%d) = %d, true; want it evicted (oldest first)", i, a)
		}
	}
	for _, i := range []int{10, m.max + 9} {
		if a, ok := m.take(d(i)); !ok || a != i%7+1 {
			t.Errorf("take(%d) = %d, %v; want %d, true", i, a, ok, i%7+1)
		}
		if _, ok := m.take(d(i)); ok {
			t.Errorf("second take(%d) found it again; want each entry used once", i)
		}
	}
	// Same id, other body: another message.
	m.put(&amqp.Delivery{MessageId: "x", Body: []byte("a")}, 3)
	if _, ok := m.take(&amqp.Delivery{MessageId: "x", Body: []byte("b")}); ok {
		t.Errorf("take found a message with the same id and another body")
	}
}

// Item 11, reject-publish with one worker: the copy a classic-queue Requeue
// publishes is refused while the queue is full, and the runtime retried that
// settlement with the worker (and the prefetch slot) held, so nothing else
// was consumed and the queue stayed full: the failing message was neither
// retried nor dead-lettered, and the rest waited, for as long as the queue
// was full. Now a refused copy falls back to a nack with requeue (the message
// keeps its place, no other is evicted) and the source counts the attempt
// itself: the message reaches the dead-letter queue after its budget.
func TestIssue9FailingMessageOnAFullRejectPublishQueueIsDeadLettered(t *testing.T) {
	needBroker(t)
	const max = 5
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Prefetch = 1
	cfg.Logger = quietLogger()
	cfg.Topology.QueueArgs = amqp.Table{"x-max-length": int32(max), "x-overflow": "reject-publish"}
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := DeclareTopology(context.Background(), Dialer{URL: amqpURL()}, q, src.cfg.Topology); err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	publish := func(id string) {
		t.Helper()
		if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: id, Body: []byte(id)}); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	publish("poison")
	for i := 1; i < max; i++ {
		publish(strconv.Itoa(i))
	}
	var (
		mu       sync.Mutex
		attempts []int
	)
	first := make(chan struct{})
	var once sync.Once
	refilled := make(chan struct{})
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if m.ID == "poison" {
			mu.Lock()
			attempts = append(attempts, m.Attempt)
			mu.Unlock()
			once.Do(func() { close(first) })
			<-refilled
			return errors.New("always fails")
		}
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(1), consumer.WithMaxDeliveries(3), consumer.WithLogger(quietLogger()))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	select {
	case <-first:
	case <-time.After(30 * time.Second):
		t.Fatal("poison never reached the handler")
	}
	publish("filler") // poison is unacked: the queue is full again
	if got := queueReady(t, q); got != max {
		t.Fatalf("ready = %d; want the queue full (%d)", got, max)
	}
	close(refilled)
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dcancel()
	dead := readQueue(dctx, t, q+".dlq", 1)
	waitOK := true
	deadline := time.Now().Add(30 * time.Second)
	for cnt.distinct() < max && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if cnt.distinct() < max {
		waitOK = false
	}
	cancel()
	if err := <-done; err != nil {
		t.Logf("Run = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("poison attempts %v; dead letters %d; other messages handled %d of %d", attempts, len(dead), cnt.distinct(), max)
	if len(dead) != 1 || dead[0].ID != "poison" {
		t.Errorf("dead letters = %d; want poison dead-lettered after its budget", len(dead))
	} else if got := dead[0].Header[broker.HeaderAttempts]; got != "3" {
		t.Errorf("dead letter attempts header = %q; want 3", got)
	}
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Errorf("poison attempts = %v; want [1 2 3]", attempts)
	}
	if !waitOK {
		t.Errorf("handled %d of the %d other messages; want all", cnt.distinct(), max)
	}
}

// Item 9, racing: Pause with a done context followed at once by Resume,
// before the session loop has given the subscription back, 100 times while
// the consumer works. Every message is handled once, nothing stays
// unacknowledged, and no amqp091 buffer goroutine is left after Close.
func TestIssue9PauseWithADoneContextThenResumeAtOnce(t *testing.T) {
	needCtl(t)
	const n = 60
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	prepublish(t, q, n, 16)
	cfg := testConfig(q)
	cfg.Prefetch = n
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		time.Sleep(2 * time.Millisecond)
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(1), consumer.WithLogger(quietLogger()))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	waitFor(t, 20*time.Second, "connected", func() bool { return src.Status().Connected })
	doneCtx, doneCancel := context.WithCancel(context.Background())
	doneCancel()
	for i := 0; i < 100 && cnt.distinct() < n; i++ {
		if err := c.Pause(doneCtx); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Pause(done ctx) = %v", err)
		}
		if err := c.Resume(context.Background()); err != nil {
			t.Fatalf("Resume = %v", err)
		}
		time.Sleep(time.Duration(i%5) * time.Millisecond)
	}
	deadline := time.Now().Add(30 * time.Second)
	for cnt.distinct() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	ready, unacked := queueCounts(t, q)
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close = %v", err)
	}
	buffers := bufferGoroutines()
	t.Logf("%d of %d handled (%d calls); queue ready=%d unacked=%d before Close; buffer goroutines after Close %d",
		cnt.distinct(), n, cnt.n.Load(), ready, unacked, buffers)
	if cnt.distinct() != n {
		t.Errorf("handled %d of %d messages; want all", cnt.distinct(), n)
	}
	if cnt.n.Load() != int64(cnt.distinct()) {
		t.Errorf("%d handler calls for %d messages; want each once", cnt.n.Load(), cnt.distinct())
	}
	if ready != 0 || unacked != 0 {
		t.Errorf("queue ready=%d unacked=%d after the run; want 0 0", ready, unacked)
	}
	if buffers != 0 {
		t.Errorf("%d amqp091 buffer goroutines after Close; want 0", buffers)
	}
}
