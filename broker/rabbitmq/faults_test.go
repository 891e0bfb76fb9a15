package rabbitmq

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// TestBrokerRestartConsumerAndPublisherRecoverByThemselves stops the RabbitMQ
// application mid-run (rabbitmqctl stop_app) and starts it again: readiness
// must turn false during the outage and true after, the publisher must get
// its publishes through once the broker is back, and every confirmed message
// must be handled. Skipped with -short: a restart takes several seconds.
// It stops the whole broker, not just the tests' vhost: it runs only with
// QUEUEKIT_DESTRUCTIVE_TESTS=1.
func TestBrokerRestartConsumerAndPublisherRecoverByThemselves(t *testing.T) {
	if testing.Short() {
		t.Skip("broker restart is slow; run without -short")
	}
	needDestructive(t, "restart the whole broker (rabbitmqctl stop_app)")
	restarted := false
	t.Cleanup(func() {
		// Other tests (and other people) use this server: always bring it back.
		if !restarted {
			_, _ = ctl("start_app")
			_, _ = ctl("await_startup")
		}
	})
	q := uniqueQueue(t)
	cfg := testConfig(q)
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	cnt := newCounter()
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		cnt.add(m.ID)
		return nil
	}), consumer.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	var supEvents eventLog
	sup := consumer.Supervisor{OnEvent: supEvents.hook}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(ctx) }()
	waitFor(t, 20*time.Second, "ready before the outage", func() bool { return sup.Health().Ready })

	// Publish continuously; each Publish may wait up to 60s for the broker.
	var (
		confirmedMu sync.Mutex
		confirmed   []string
		pubErrs     atomic.Int64
		stopPub     = make(chan struct{})
		pubDone     = make(chan struct{})
	)
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			default:
			}
			pctx, pcancel := context.WithTimeout(context.Background(), 60*time.Second)
			id := strconv.Itoa(i)
			err := pub.PublishRaw(pctx, "", q, amqp.Publishing{MessageId: id, Body: []byte("x")})
			pcancel()
			if err != nil {
				pubErrs.Add(1)
				continue
			}
			confirmedMu.Lock()
			confirmed = append(confirmed, id)
			confirmedMu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	waitFor(t, 20*time.Second, "traffic before the outage", func() bool { return cnt.n.Load() >= 200 })

	if _, err := ctl("stop_app"); err != nil {
		t.Fatal(err)
	}
	outage := time.Now()
	waitFor(t, 30*time.Second, "readiness false during the outage", func() bool { return !sup.Health().Ready })
	h := sup.Health()
	t.Logf("during outage: ready=%v state=%v source status=%+v", h.Ready, h.Runners[0].State, src.Status())
	if src.Status().Connected {
		t.Errorf("Source.Status().Connected = true during the outage; want false")
	}
	time.Sleep(time.Second)
	if _, err := ctl("start_app"); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if _, err := ctl("await_startup"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "readiness true after the outage", func() bool { return sup.Health().Ready })
	recovered := time.Since(outage)
	confirmedMu.Lock()
	atRecovery := len(confirmed)
	confirmedMu.Unlock()
	waitFor(t, 60*time.Second, "publisher confirms after the outage", func() bool {
		confirmedMu.Lock()
		defer confirmedMu.Unlock()
		return len(confirmed) >= atRecovery+200
	})
	close(stopPub)
	<-pubDone
	confirmedMu.Lock()
	ids := append([]string(nil), confirmed...)
	confirmedMu.Unlock()
	waitFor(t, 60*time.Second, "every confirmed message handled", func() bool {
		cnt.mu.Lock()
		defer cnt.mu.Unlock()
		for _, id := range ids {
			if cnt.seen[id] == 0 {
				return false
			}
		}
		return true
	})
	cancel()
	if err := <-supDone; err != nil {
		t.Fatalf("Supervisor.Run = %v; want nil", err)
	}
	t.Logf("restart: %d confirmed publishes (%d publish errors), %d handled (%d distinct), ready again %v after stop_app; "+
		"supervisor events: %d reconnecting, %d connected",
		len(ids), pubErrs.Load(), cnt.n.Load(), cnt.distinct(), recovered.Round(time.Millisecond),
		supEvents.count(consumer.EventReconnecting), supEvents.count(consumer.EventConnected))
	if supEvents.count(consumer.EventReconnecting) < 1 || supEvents.count(consumer.EventConnected) < 2 {
		t.Errorf("Supervisor.OnEvent saw %d reconnecting and %d connected events; want >= 1 and >= 2",
			supEvents.count(consumer.EventReconnecting), supEvents.count(consumer.EventConnected))
	}
}

// TestShutdownMidRunLeavesTheRestInTheQueue shuts a consumer down while it
// works through a queue: handlers in flight finish and are acked, and what
// was not handled is still in the queue: handled + ready = published.
func TestShutdownMidRunLeavesTheRestInTheQueue(t *testing.T) {
	needCtl(t)
	const n = 2000
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	prepublish(t, q, n, 64)
	cfg := testConfig(q)
	cfg.Prefetch = 32
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	var started, finished atomic.Int64
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started.Add(1)
		time.Sleep(5 * time.Millisecond)
		cnt.add(m.ID)
		finished.Add(1)
		return nil
	}), consumer.WithConcurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	waitFor(t, 30*time.Second, "some progress", func() bool { return cnt.n.Load() >= 300 })
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := c.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown = %v; want nil", err)
	}
	if err := <-done; !errors.Is(err, consumer.ErrConsumerClosed) {
		t.Fatalf("Run = %v; want ErrConsumerClosed", err)
	}
	ready, unacked := queueCounts(t, q)
	handled := int(cnt.n.Load())
	t.Logf("shutdown: published %d, handled %d (distinct %d), started %d, finished %d, list_queues ready=%d unacked=%d, handled+ready=%d",
		n, handled, cnt.distinct(), started.Load(), finished.Load(), ready, unacked, handled+ready)
	if started.Load() != finished.Load() {
		t.Errorf("handlers started %d, finished %d; want every in-flight handler to finish", started.Load(), finished.Load())
	}
	if handled != cnt.distinct() {
		t.Errorf("handled %d, distinct %d; want no duplicates without faults", handled, cnt.distinct())
	}
	if unacked != 0 || handled+ready != n {
		t.Errorf("handled %d + ready %d (unacked %d) = %d; want %d published, nothing unacked", handled, ready, unacked, handled+ready, n)
	}
	if ready == 0 {
		t.Errorf("ready = 0: the consumer finished the queue before Shutdown; the test proves nothing")
	}
}

// TestQueueDeletedWhileConsuming deletes the queue under a running consumer.
// With declared topology, the source reports the cancellation (an event and a
// status error), declares the queue again and resumes. In passive mode it
// cannot: Run fails with a fatal NOT_FOUND error instead of looping.
func TestQueueDeletedWhileConsuming(t *testing.T) {
	needCtl(t)
	t.Run("declared topology resumes", func(t *testing.T) {
		q := uniqueQueue(t)
		src, err := NewSource(testConfig(q))
		if err != nil {
			t.Fatal(err)
		}
		cnt := newCounter()
		var evs eventLog
		c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			cnt.add(m.ID)
			return nil
		}), consumer.WithEventHook(evs.hook))
		_, cancel, done := runInBackground(t, c, err)
		defer cancel()
		waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
		ch, err := rawConn(t).Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "cancelled event", func() bool { return evs.count(consumer.EventCancelled) == 1 })
		cerr := evs.errs(consumer.EventCancelled)[0]
		t.Logf("cancelled event: %v", cerr)
		if !strings.Contains(cerr.Error(), q) || !strings.Contains(cerr.Error(), "cancelled") {
			t.Errorf("cancel error %q; want it to name the queue and say cancelled", cerr)
		}
		waitFor(t, 10*time.Second, "resubscribed", func() bool { return evs.count(consumer.EventConnected) >= 2 && src.Status().Connected })
		pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close(context.Background())
		if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: "after", Body: []byte("x")}); err != nil {
			t.Fatalf("Publish to the re-declared queue: %v", err)
		}
		waitFor(t, 10*time.Second, "message after the queue came back", func() bool { return cnt.distinct() == 1 })
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v; want nil", err)
		}
	})
	t.Run("passive mode fails fast", func(t *testing.T) {
		q := uniqueQueue(t)
		declareQueue(t, q, Classic)
		declareQueue(t, q+".retry", Classic)
		ch, err := rawConn(t).Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.ExchangeDeclare(q+".dlx", "direct", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(q)
		cfg.Topology.Passive = true
		src, err := NewSource(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var evs eventLog
		c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { return nil }),
			consumer.WithEventHook(evs.hook))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Run(context.Background()) }()
		waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Fatal(err)
		}
		var runErr error
		select {
		case runErr = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after the passive queue was deleted")
		}
		t.Logf("passive: Run = %v", runErr)
		if !broker.IsFatal(runErr) || !strings.Contains(runErr.Error(), "NOT_FOUND") {
			t.Errorf("Run = %v; want a fatal NOT_FOUND error", runErr)
		}
		if evs.count(consumer.EventCancelled) != 1 {
			t.Errorf("cancelled events = %d; want 1", evs.count(consumer.EventCancelled))
		}
		_ = c.Close()
	})
}

// TestUnfixableErrorsFailFast checks that errors restarting cannot fix come
// out of Receive at once as consumer.Fatal errors, with no password in them.
func TestUnfixableErrorsFailFast(t *testing.T) {
	needBroker(t)
	receive := func(t *testing.T, cfg Config) error {
		t.Helper()
		src, err := NewSource(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err = src.Receive(ctx)
		return err
	}
	t.Run("access refused", func(t *testing.T) {
		cfg := testConfig(uniqueQueue(t))
		cfg.Dialer.URL = "amqp://guest:wrong-s3cret@" + hostPort() + "/"
		err := receive(t, cfg)
		t.Logf("Receive = %v", err)
		if !broker.IsFatal(err) || strings.Contains(err.Error(), "wrong-s3cret") {
			t.Errorf("Receive with a bad password = %v; want a fatal error without the password", err)
		}
	})
	t.Run("precondition failed", func(t *testing.T) {
		q := uniqueQueue(t)
		declareQueue(t, q, Quorum)
		cfg := testConfig(q)
		cfg.Topology.Strict = true // declares it classic, actively
		err := receive(t, cfg)
		t.Logf("Receive = %v", err)
		if !broker.IsFatal(err) || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
			t.Errorf("Receive on a mismatched queue = %v; want a fatal PRECONDITION_FAILED", err)
		}
	})
	t.Run("passive queue not found", func(t *testing.T) {
		cfg := testConfig(uniqueQueue(t))
		cfg.Topology.Passive = true
		err := receive(t, cfg)
		t.Logf("Receive = %v", err)
		if !broker.IsFatal(err) || !strings.Contains(err.Error(), "NOT_FOUND") {
			t.Errorf("Receive on a missing passive queue = %v; want a fatal NOT_FOUND", err)
		}
	})
}
