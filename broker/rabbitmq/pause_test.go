package rabbitmq

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// TestPauseGivesPrefetchedMessagesBackAndResumeContinues pauses a consumer
// mid-stream: the subscription is cancelled, so nothing stays unacked on the
// broker and nothing more is handled; after Resume every message is handled
// exactly once.
func TestPauseGivesPrefetchedMessagesBackAndResumeContinues(t *testing.T) {
	needCtl(t)
	const n = 500
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	prepublish(t, q, n, 16)
	cfg := testConfig(q)
	cfg.Prefetch = 50
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		time.Sleep(2 * time.Millisecond)
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(2))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	waitFor(t, 20*time.Second, "progress", func() bool { return cnt.n.Load() >= 100 })
	if err := c.Pause(context.Background()); err != nil {
		t.Fatalf("Pause = %v", err)
	}
	// In-flight handlers finish; then nothing is unacked and nothing moves.
	var ready, unacked int
	waitFor(t, 20*time.Second, "nothing unacked while paused", func() bool {
		ready, unacked = queueCounts(t, q)
		return unacked == 0
	})
	atPause := cnt.n.Load()
	time.Sleep(500 * time.Millisecond)
	if got := cnt.n.Load(); got != atPause {
		t.Errorf("handled %d while paused (from %d to %d); want none", got-atPause, atPause, got)
	}
	ready, unacked = queueCounts(t, q)
	t.Logf("paused: handled %d, queue ready=%d unacked=%d, consumer state %v, source connected %v",
		atPause, ready, unacked, c.State(), src.Status().Connected)
	if int(atPause)+ready != n {
		t.Errorf("handled %d + ready %d = %d; want %d", atPause, ready, int(atPause)+ready, n)
	}
	if c.State() != consumer.StatePaused {
		t.Errorf("consumer state %v; want paused", c.State())
	}
	if err := c.Resume(context.Background()); err != nil {
		t.Fatalf("Resume = %v", err)
	}
	waitFor(t, 30*time.Second, "all handled after Resume", func() bool { return cnt.distinct() == n })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := cnt.n.Load(); got != n {
		t.Errorf("handled %d times; want %d (no duplicates)", got, n)
	}
}

// TestSourcesShareAConnectionAndACustomDialer runs two sources on one shared
// Connection whose Dialer uses a custom dial function: both consume, and one
// TCP connection is opened.
func TestSourcesShareAConnectionAndACustomDialer(t *testing.T) {
	needBroker(t)
	var dials atomic.Int64
	conn, err := NewConnection(Dialer{URL: amqpURL(), Dial: func(network, addr string) (net.Conn, error) {
		dials.Add(1)
		return net.DialTimeout(network, addr, 10*time.Second)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	const n = 100
	var total atomic.Int64
	var runs []chan error
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var queues []string
	for i := 0; i < 2; i++ {
		q := uniqueQueue(t)
		queues = append(queues, q)
		declareQueue(t, q, Classic)
		prepublish(t, q, n, 16)
		cfg := testConfig(q)
		cfg.Dialer = Dialer{}
		cfg.Conn = conn
		src, err := NewSource(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			total.Add(1)
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		runs = append(runs, done)
		go func() { done <- c.Run(ctx) }()
	}
	waitFor(t, 20*time.Second, "both queues consumed", func() bool { return total.Load() == 2*n })
	cancel()
	for _, done := range runs {
		if err := <-done; err != nil {
			t.Fatalf("Run = %v", err)
		}
	}
	if got := dials.Load(); got != 1 {
		t.Errorf("custom dialer called %d times; want 1 (one shared connection)", got)
	}
	// The sources closed their channels, not the shared connection.
	if conn.cur == nil || conn.cur.IsClosed() {
		t.Errorf("shared connection closed by a source; want it open until its owner closes it")
	}
}

// TestPauseAndResumeInQuickSuccessionLoseNothing pauses and resumes a
// consumer 20 times while it works: every message is handled, the queue ends
// empty with nothing unacked (no subscription was left behind).
func TestPauseAndResumeInQuickSuccessionLoseNothing(t *testing.T) {
	needCtl(t)
	const n = 2000
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	prepublish(t, q, n, 16)
	src, err := NewSource(testConfig(q))
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		time.Sleep(200 * time.Microsecond)
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(4))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
	for i := 0; i < 20; i++ {
		if err := c.Pause(context.Background()); err != nil {
			t.Fatalf("Pause %d: %v", i, err)
		}
		if i%2 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		if err := c.Resume(context.Background()); err != nil {
			t.Fatalf("Resume %d: %v", i, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, 60*time.Second, "all handled", func() bool { return cnt.distinct() == n })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	ready, unacked := drainedQueueCounts(t, q)
	t.Logf("20 pause/resume cycles: %d messages handled %d times; queue ready=%d unacked=%d", n, cnt.n.Load(), ready, unacked)
	if ready != 0 || unacked != 0 {
		t.Errorf("queue after run: ready=%d unacked=%d; want 0 0", ready, unacked)
	}
}
