package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// probe calls h and returns the status code and decoded report.
func probe(t *testing.T, h http.Handler) (int, health.Report) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	var rep health.Report
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
	return rec.Code, rep
}

// eventually polls probe until it returns code with the first consumer in
// state, or fails after a generous deadline.
func eventually(t *testing.T, h http.Handler, code int, state string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, rep := probe(t, h)
		st := ""
		if len(rep.Consumers) > 0 {
			st = rep.Consumers[0].State
		}
		if got == code && st == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe = %d, state %q; want %d, %q (report %+v)", got, st, code, state, rep)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// flakySource is a memory source whose reported connection can be turned
// off, as a RabbitMQ source's is while it reconnects.
type flakySource struct {
	*memory.Source
	down atomic.Bool
}

func (s *flakySource) Status() broker.Status {
	if s.down.Load() {
		return broker.Status{Err: errors.New("connection lost")}
	}
	return s.Source.Status()
}

// TestReadinessFollowsTheConsumer runs a consumer under a Supervisor on
// broker/memory and checks that readiness is 503 while the consumer is
// paused, reconnecting or draining, and 200 again after each.
func TestReadinessFollowsTheConsumer(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ms, err := b.Source("orders", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	src := &flakySource{Source: ms}
	started, release := make(chan struct{}, 1), make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started <- struct{}{}
		<-release
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithName("orders"), consumer.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	hh, err := health.NewHandler(sup)
	if err != nil {
		t.Fatal(err)
	}
	ready := hh.Ready()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	eventually(t, ready, http.StatusOK, "running")

	// Paused: intake stopped on purpose.
	if err := sup.Pause(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	eventually(t, ready, http.StatusServiceUnavailable, "paused")
	if err := sup.Resume(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	eventually(t, ready, http.StatusOK, "running")

	// Reconnecting: the source reports no connection.
	src.down.Store(true)
	eventually(t, ready, http.StatusServiceUnavailable, "reconnecting")
	src.down.Store(false)
	eventually(t, ready, http.StatusOK, "running")

	// Liveness is not affected by any of it, and passes without a watchdog.
	if code, rep := probe(t, hh.Live()); code != http.StatusOK || !rep.Live {
		t.Errorf("Live() = %d, live %v; want 200, true", code, rep.Live)
	}

	// Draining: a handler is in flight when the context is cancelled.
	if err := b.Publish(ctx, "orders", &broker.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	eventually(t, ready, http.StatusServiceUnavailable, "draining")
	if code, rep := probe(t, hh); code != http.StatusServiceUnavailable || rep.Status != "unavailable" || rep.Ready {
		t.Errorf("full report while draining = %d %+v; want 503, unavailable, not ready", code, rep)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run() = %v", err)
	}
	eventually(t, ready, http.StatusServiceUnavailable, "stopped")
	if st := b.Stats("orders"); st.Acked != 1 {
		t.Errorf("the in-flight message was not acked during the drain: %+v", st)
	}
}

// TestLivenessFailsForAStuckHandler runs a consumer whose handler hangs
// under a watchdog and checks that liveness fails, the hook sees it once
// (middleware/promqueuekit's tests feed it to a metric), and liveness
// passes again when the handler returns.
func TestLivenessFailsForAStuckHandler(t *testing.T) {
	var mu sync.Mutex
	var reports []health.Stuck
	wd, err := health.NewWatchdog(health.WatchdogConfig{
		Threshold: 50 * time.Millisecond,
		Interval:  5 * time.Millisecond,
		Logger:    discard(),
		OnStuck: func(s health.Stuck) {
			mu.Lock()
			reports = append(reports, s)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}, 1), make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started <- struct{}{}
		<-release
		return nil
	})
	// No WithName: the consumer is "orders" because the Supervisor adds it
	// so, and the watchdog's middleware reads that name from the context.
	c, err := consumer.New(src, h, consumer.WithMiddleware(wd.Middleware()), consumer.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	if err := sup.Add("watchdog", wd); err != nil {
		t.Fatal(err)
	}
	hh, err := health.NewHandler(sup, health.WithWatchdog(wd))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	eventually(t, hh.Live(), http.StatusOK, "running")
	if err := b.Publish(ctx, "orders", &broker.Message{ID: "order-7", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	<-started
	eventually(t, hh.Live(), http.StatusServiceUnavailable, "running")
	code, rep := probe(t, hh.Live())
	if code != http.StatusServiceUnavailable || rep.Live || len(rep.Stuck) != 1 {
		t.Fatalf("Live() = %d %+v; want 503 with one stuck call", code, rep)
	}
	if s := rep.Stuck[0]; s.Consumer != "orders" || s.MessageID != "order-7" || s.Topic != "orders" || s.Attempt != 1 || s.Running < 50*time.Millisecond {
		t.Errorf("stuck call = %+v; want consumer orders, message order-7, attempt 1, running >= 50ms", s)
	}
	// Readiness does not depend on the watchdog: the consumer still runs.
	if code, _ := probe(t, hh.Ready()); code != http.StatusOK {
		t.Errorf("Ready() = %d while a handler is stuck; want 200", code)
	}
	// Wait for the watchdog's loop to report it, then let ten more ticks
	// pass: it must not report the same call twice.
	deadline := time.Now().Add(20 * time.Second)
	for n := 0; n == 0; {
		mu.Lock()
		n = len(reports)
		mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("OnStuck not called")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)

	close(release)
	eventually(t, hh.Live(), http.StatusOK, "running")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run() = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 1 || reports[0].MessageID != "order-7" {
		t.Errorf("OnStuck calls = %+v; want one, for order-7", reports)
	}
}
