package promqueuekit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/promqueuekit"
	"github.com/queuekit/queuekit/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scrape gathers reg and flattens it to "name{label=value,...}" → value.
// Counters and gauges give their value; histograms give name_count and,
// when withSum reports true for the name, name_sum.
func scrape(t *testing.T, reg *prom.Registry, withSum func(name string) bool) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			key := func(suffix string) string {
				return mf.GetName() + suffix + "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key("")] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key("")] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key("_count")] = float64(m.GetHistogram().GetSampleCount())
				if withSum(mf.GetName()) {
					out[key("_sum")] = m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return out
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func diff(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			t.Errorf("%s missing; want %v", k, want[k])
		} else if g != want[k] {
			t.Errorf("%s = %v; want %v", k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected series %s = %v", k, got[k])
		}
	}
}

// TestRecorderCountsARealRun runs a consumer under a Supervisor on
// broker/memory through acks, retries, dead-letters, a panic and a stale
// acknowledgement, then scrapes the registry and checks every series. The
// Recorder is wired in one line (rec.Options()), and every series is
// labelled with the name the Supervisor gives the consumer — not its
// queue's name, nor a WithName (issue 10 item 5).
func TestRecorderCountsARealRun(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("incoming", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}

	// One worker and prefetch 1, so that the dropped connection makes
	// exactly one delivery stale: the one whose handler dropped it.
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		switch string(m.Body) {
		case "ok":
			return nil
		case "flaky": // fails once, then succeeds
			if m.Attempt == 1 {
				return errors.New("flaky: try again")
			}
			return nil
		case "bad": // permanent: dead-lettered at once
			return retry.Permanent(errors.New("bad payload"))
		case "poison": // always fails: dead-lettered after 3 deliveries
			return errors.New("poison")
		case "panic": // panics once, then succeeds
			if m.Attempt == 1 {
				panic("boom")
			}
			return nil
		case "stale": // the connection drops while it runs: its ack is refused
			if m.Attempt == 1 {
				src.DropConnection()
			}
			return nil
		}
		return fmt.Errorf("unexpected body %q", m.Body)
	})
	// Recover inside Metrics, as package middleware recommends, so that
	// Metrics sees the panic as a *consumer.PanicError: the options'
	// middleware wraps the handler given to New.
	c, err := consumer.New(src, middleware.Recover()(h),
		append(rec.Options(), consumer.WithName("q-consumer"), consumer.WithMaxDeliveries(3), consumer.WithLogger(discard()))...)
	if err != nil {
		t.Fatal(err)
	}
	bodies := []string{"ok", "ok", "ok", "flaky", "bad", "poison", "panic", "stale"}
	ctx := context.Background()
	for _, body := range bodies {
		if err := b.Publish(ctx, "incoming", &broker.Message{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}

	sup := &consumer.Supervisor{Logger: discard()}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sup.Run(runCtx) }()

	// ok×3 + flaky + panic + stale are acked (6); bad and poison are dead-lettered (2).
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := b.Stats("incoming")
		if st.Acked == 6 && st.DeadLettered == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages not settled in time: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervisor.Run() = %v; want nil", err)
	}

	got := scrape(t, reg, func(name string) bool { return name == "queuekit_delivery_attempts" })
	want := map[string]float64{
		// One series per settlement. Deliveries: ok 3, flaky 2, bad 1,
		// poison 3, panic 2, stale 2 = 13.
		"queuekit_messages_handled_total{consumer=orders,outcome=ack}":             6, // ok×3, flaky#2, panic#2, stale#2
		"queuekit_messages_handled_total{consumer=orders,outcome=requeue}":         4, // flaky#1, poison#1, poison#2, panic#1
		"queuekit_messages_handled_total{consumer=orders,outcome=dead-letter}":     2, // bad#1, poison#3
		"queuekit_messages_handled_total{consumer=orders,outcome=stale}":           1, // stale#1
		"queuekit_messages_handled_total{consumer=orders,outcome=delayed-requeue}": 0,
		"queuekit_messages_handled_total{consumer=orders,outcome=give-back}":       0,
		"queuekit_messages_handled_total{consumer=orders,outcome=abandon}":         0,
		// Handler calls by result: 13 calls.
		"queuekit_handler_duration_seconds_count{consumer=orders,result=ok}":        7, // ok×3, flaky#2, panic#2, stale#1, stale#2
		"queuekit_handler_duration_seconds_count{consumer=orders,result=error}":     4, // flaky#1, poison×3
		"queuekit_handler_duration_seconds_count{consumer=orders,result=permanent}": 1,
		"queuekit_handler_duration_seconds_count{consumer=orders,result=panic}":     1,
		"queuekit_handler_duration_seconds_count{consumer=orders,result=timeout}":   0,
		"queuekit_handlers_in_flight{consumer=orders}":                              0,
		// Attempts of the 13 settled deliveries: 1+1+1 + 1+2 + 1 + 1+2+3 + 1+2 + 1+2.
		"queuekit_delivery_attempts_count{consumer=orders}": 13,
		"queuekit_delivery_attempts_sum{consumer=orders}":   19,
		// Events, through the options' event hook.
		"queuekit_events_total{consumer=orders,event=starting}":      1, // supervisor, passed to the consumer's hooks
		"queuekit_events_total{consumer=orders,event=running}":       1, // consumer
		"queuekit_events_total{consumer=orders,event=reconnecting}":  1, // DropConnection
		"queuekit_events_total{consumer=orders,event=connected}":     2, // first Receive, DropConnection
		"queuekit_events_total{consumer=orders,event=dead-lettered}": 2,
		"queuekit_events_total{consumer=orders,event=draining}":      1,
		"queuekit_events_total{consumer=orders,event=drained}":       1,
		"queuekit_events_total{consumer=orders,event=settle-failed}": 1, // the stale ack
		"queuekit_events_total{consumer=orders,event=stopped}":       1, // the consumer's own
		"queuekit_reconnects_total{consumer=orders}":                 1,
		// Nothing was in flight when the context was cancelled.
		"queuekit_drain_messages_total{consumer=orders,outcome=handled}":    0,
		"queuekit_drain_messages_total{consumer=orders,outcome=given-back}": 0,
		"queuekit_drain_messages_total{consumer=orders,outcome=abandoned}":  0,
		"queuekit_drain_duration_seconds_count{consumer=orders}":            1,
	}
	diff(t, got, want)

	if n := len(b.DeadLetters("incoming")); n != 2 {
		t.Errorf("DeadLetters(incoming) has %d messages; want 2", n)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		reg  prom.Registerer
		opts []promqueuekit.Option
	}{
		{"a nil registerer", nil, nil},
		{"a namespace with a dash", prom.NewRegistry(), []promqueuekit.Option{promqueuekit.WithNamespace("my-app")}},
		{"decreasing buckets", prom.NewRegistry(), []promqueuekit.Option{promqueuekit.WithBuckets([]float64{1, 0.5})}},
		{"no buckets", prom.NewRegistry(), []promqueuekit.Option{promqueuekit.WithBuckets([]float64{})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := promqueuekit.New(tt.reg, tt.opts...); !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("New(%s) error = %v; want ErrInvalidConfig", tt.name, err)
			}
		})
	}
}

func TestNewTwiceOnOneRegistryFailsAndLeavesItClean(t *testing.T) {
	reg := prom.NewRegistry()
	if _, err := promqueuekit.New(reg); err != nil {
		t.Fatal(err)
	}
	_, err := promqueuekit.New(reg)
	var are prom.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("second New() error = %v; want prometheus.AlreadyRegisteredError", err)
	}
	// Another namespace on the same registry works: the failed call left
	// nothing half-registered.
	if _, err := promqueuekit.New(reg, promqueuekit.WithNamespace("other")); err != nil {
		t.Fatalf("New(WithNamespace(other)) = %v; want nil", err)
	}
}

func TestLabelsComeFromTopicAndRunner(t *testing.T) {
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m := &broker.Message{ID: "id-1", Topic: "payments", Attempt: 2}
	rec.HandlerStarted(m)
	rec.HandlerDone(m, errors.New("x"), time.Millisecond)
	rec.Observe(context.Background(), m, consumer.SettledRequeue, nil)
	rec.Observe(context.Background(), m, consumer.SettledAck, fmt.Errorf("ack: %w", broker.ErrStaleDelivery))
	rec.Observe(context.Background(), m, consumer.SettledAck, errors.New("channel closed"))
	rec.Event(consumer.Event{Kind: consumer.EventRestarting, Runner: "pay"})
	rec.Event(consumer.Event{Kind: consumer.EventRebalanced, Runner: "pay"})
	rec.Event(consumer.Event{Kind: consumer.EventDrained, Runner: "pay",
		Drain: consumer.DrainReport{Handled: 3, GivenBack: 2, Abandoned: 1, Duration: time.Second}})
	rec.HandlerStuck(health.Stuck{Topic: "payments", MessageID: "id-1"})

	got := scrape(t, reg, func(string) bool { return false })
	for k, want := range map[string]float64{
		"queuekit_messages_handled_total{consumer=payments,outcome=requeue}":       1,
		"queuekit_messages_handled_total{consumer=payments,outcome=stale}":         1,
		"queuekit_messages_handled_total{consumer=payments,outcome=settle-failed}": 1,
		"queuekit_handler_duration_seconds_count{consumer=payments,result=error}":  1,
		"queuekit_handlers_in_flight{consumer=payments}":                           0,
		"queuekit_restarts_total{consumer=pay}":                                    1,
		"queuekit_rebalances_total{consumer=pay}":                                  1,
		"queuekit_events_total{consumer=pay,event=rebalanced}":                     1,
		"queuekit_events_total{consumer=pay,event=restarting}":                     1,
		"queuekit_drain_messages_total{consumer=pay,outcome=handled}":              3,
		"queuekit_drain_messages_total{consumer=pay,outcome=given-back}":           2,
		"queuekit_drain_messages_total{consumer=pay,outcome=abandoned}":            1,
		"queuekit_stuck_handlers_total{consumer=payments}":                         1,
	} {
		if got[k] != want {
			t.Errorf("%s = %v; want %v", k, got[k], want)
		}
	}
	for k := range got {
		if strings.Contains(k, "id-1") {
			t.Errorf("series %s carries a message id", k)
		}
	}
}

// BenchmarkMiddleware measures the per-message cost of the Metrics middleware
// with this Recorder (plus the observer call the runtime makes), next to a
// bare handler.
func BenchmarkMiddleware(b *testing.B) {
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	m := &broker.Message{ID: "orders-1", Topic: "orders", Attempt: 1, Body: []byte("{}")}
	ctx := context.Background()
	b.Run("baseline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = h.Handle(ctx, m)
		}
	})
	b.Run("metrics", func(b *testing.B) {
		rec, err := promqueuekit.New(prom.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		wrapped := middleware.Metrics(rec)(h)
		b.ReportAllocs()
		for b.Loop() {
			err := wrapped.Handle(ctx, m)
			rec.Observe(context.Background(), m, consumer.SettledAck, err)
		}
	})
	b.Run("metrics-parallel", func(b *testing.B) {
		rec, err := promqueuekit.New(prom.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		wrapped := middleware.Metrics(rec)(h)
		var n atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				err := wrapped.Handle(ctx, m)
				rec.Observe(context.Background(), m, consumer.SettledAck, err)
				n.Add(1)
			}
		})
	})
}

// The stuck-handler watchdog of package health feeds
// queuekit_stuck_handlers_total through OnStuck: rec.HandlerStuck, under
// the name the Supervisor gives the consumer.
func TestWatchdogOnStuckCountsStuckHandlers(t *testing.T) {
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	wd, err := health.NewWatchdog(health.WatchdogConfig{
		Threshold: 20 * time.Millisecond,
		Interval:  5 * time.Millisecond,
		Logger:    discard(),
		OnStuck:   rec.HandlerStuck,
	})
	if err != nil {
		t.Fatal(err)
	}
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("incoming", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		close(started)
		<-release
		return nil
	})
	c, err := consumer.New(src, h, append(rec.Options(), consumer.WithMiddleware(wd.Middleware()), consumer.WithLogger(discard()))...)
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	if err := b.Publish(ctx, "incoming", &broker.Message{ID: "order-7", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	<-started
	const series = "queuekit_stuck_handlers_total{consumer=orders}"
	deadline := time.Now().Add(20 * time.Second)
	for scrape(t, reg, func(string) bool { return false })[series] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached 1: %v", series, scrape(t, reg, func(string) bool { return false }))
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // ten more ticks: the call is counted once
	close(release)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, reg, func(string) bool { return false })[series]; got != 1 {
		t.Errorf("%s = %v; want 1 (one stuck call)", series, got)
	}
}

// Issue 14: Recorder.OnWait, set as the rate limit's hook, fills
// queuekit_ratelimit_wait_seconds{consumer} with the waits of the messages
// that had to wait; a consumer that never waited has no series.
func TestOnWaitRecordsRateLimitWaits(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 4
	for range n {
		if err := b.Publish(ctx, "calls", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := b.Source("calls", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	// 200 messages/s, burst 1: the first passes at once, the 3 others wait
	// about 5 ms each.
	rl, err := middleware.RateLimit(middleware.RateLimitConfig{Rate: 200, OnWait: rec.OnWait})
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		if handled.Add(1) == n {
			cancel()
		}
		return nil
	})
	c, err := consumer.New(src, h, append(rec.Options(), consumer.WithName("calls"), consumer.WithMiddleware(rl), consumer.WithLogger(discard()))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	rec.For("fixed").OnWait(context.Background(), nil, -time.Second) // a view's own label; no panic on nil, negative
	got := scrape(t, reg, func(name string) bool { return name == "queuekit_ratelimit_wait_seconds" })
	if c, s := got["queuekit_ratelimit_wait_seconds_count{consumer=calls}"], got["queuekit_ratelimit_wait_seconds_sum{consumer=calls}"]; c != n-1 || !(s > 0 && s < 10) {
		t.Errorf("queuekit_ratelimit_wait_seconds{consumer=calls}: count %v, sum %v; want %d waits, a sum of a few ms", c, s, n-1)
	}
	if c := got["queuekit_ratelimit_wait_seconds_count{consumer=fixed}"]; c != 1 {
		t.Errorf("queuekit_ratelimit_wait_seconds_count{consumer=fixed} = %v; want 1", c)
	}
	for k := range got {
		if strings.HasPrefix(k, "queuekit_ratelimit_wait_seconds") && !strings.Contains(k, "consumer=calls") && !strings.Contains(k, "consumer=fixed") {
			t.Errorf("unexpected series %s", k)
		}
	}
}

// Issue 14: the kill switch's events set queuekit_kill_switch_state
// {consumer}: 2 while tripped, 1 while probing, 0 once closed again; the
// series goes when the consumer stops.
func TestKillSwitchStateGauge(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	for i := range 200 {
		if err := b.Publish(context.Background(), "calls", &broker.Message{ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := b.Source("calls", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	rec, err := promqueuekit.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	down.Store(true)
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		if down.Load() {
			return errors.New("dependency down")
		}
		return nil
	})
	c, err := consumer.New(src, h, append(rec.Options(), consumer.WithName("calls"), consumer.WithLogger(discard()),
		consumer.WithMaxDeliveries(100),
		consumer.WithKillSwitch(consumer.KillSwitch{Window: time.Second, MinMessages: 2, RestartTimeout: 20 * time.Millisecond, MaxRestartTimeout: 20 * time.Millisecond, ProbeMessages: 2}))...)
	if err != nil {
		t.Fatal(err)
	}
	const series = "queuekit_kill_switch_state{consumer=calls}"
	state := func() (float64, bool) {
		v, ok := scrape(t, reg, func(name string) bool { return name == "queuekit_kill_switch_state" })[series]
		return v, ok
	}
	if _, ok := state(); ok {
		t.Errorf("%s exists before the consumer ran; want no series", series)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	poll := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	seen := map[float64]bool{}
	poll("the gauge to show tripped and probing", func() bool {
		if v, ok := state(); ok {
			seen[v] = true
		}
		return seen[promqueuekit.KillSwitchTripped] && seen[promqueuekit.KillSwitchProbing]
	})
	down.Store(false)
	poll("the gauge to show closed", func() bool { v, ok := state(); return ok && v == promqueuekit.KillSwitchClosed })
	if st := c.KillSwitch().State; st != "closed" {
		t.Errorf("KillSwitch().State = %q; want closed", st)
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if v, ok := state(); ok {
		t.Errorf("%s = %v after the consumer stopped; want no series", series, v)
	}
}
