package health_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
)

type lagFunc func(ctx context.Context) (map[int]int64, error)

func (f lagFunc) LagByPartition(ctx context.Context) (map[int]int64, error) { return f(ctx) }

type depthFunc func(ctx context.Context) (int, int, error)

func (f depthFunc) QueueDepth(ctx context.Context) (int, int, error) { return f(ctx) }

type fixedReporter consumer.Health

func (r fixedReporter) Health() consumer.Health { return consumer.Health(r) }

// The full report carries each configured runner's backlog, asked of the
// broker at most once per BacklogInterval; the probes never ask.
func TestFullReportCarriesTheBacklogAndAsksTheBrokerSparingly(t *testing.T) {
	rep := fixedReporter{Ready: true, Runners: []consumer.RunnerHealth{
		{Name: "events", State: consumer.StateRunning},
		{Name: "orders", State: consumer.StateRunning},
		{Name: "other", State: consumer.StateRunning},
	}}
	var lagCalls, depthCalls atomic.Int64
	lag := lagFunc(func(ctx context.Context) (map[int]int64, error) {
		lagCalls.Add(1)
		if _, ok := ctx.Deadline(); !ok {
			t.Error("lag asked without a deadline")
		}
		return map[int]int64{0: 5, 1: 0, 2: 7}, nil
	})
	depth := depthFunc(func(context.Context) (int, int, error) { depthCalls.Add(1); return 42, 2, nil })
	h, err := health.NewHandler(rep, health.WithLag("events", lag), health.WithDepth("orders", depth), health.WithLag("x", nil))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	health.SetClock(h, func() time.Time { return now })

	for _, p := range []http.Handler{h.Ready(), h.Live()} {
		if code, r := probe(t, p); code != 200 || r.Consumers[0].Backlog != nil {
			t.Errorf("probe = %d with backlog %+v; want 200 without asking the broker", code, r.Consumers[0].Backlog)
		}
	}
	if lagCalls.Load() != 0 || depthCalls.Load() != 0 {
		t.Fatalf("probes asked the broker: lag %d, depth %d times", lagCalls.Load(), depthCalls.Load())
	}

	code, r := probe(t, h)
	if code != 200 {
		t.Fatalf("full report = %d", code)
	}
	ev, ord, oth := r.Consumers[0].Backlog, r.Consumers[1].Backlog, r.Consumers[2].Backlog
	if ev == nil || ev.TotalLag == nil || *ev.TotalLag != 12 || ev.Lag[2] != 7 || ev.Messages != nil || !ev.At.Equal(now) {
		t.Errorf("events backlog = %+v; want lag {0:5 1:0 2:7}, total 12, at %v", ev, now)
	}
	if ord == nil || ord.Messages == nil || *ord.Messages != 42 || *ord.Consumers != 2 || ord.Lag != nil || ord.TotalLag != nil {
		t.Errorf("orders backlog = %+v; want 42 messages, 2 consumers", ord)
	}
	if oth != nil {
		t.Errorf("a runner without a backlog source got %+v", oth)
	}

	now = now.Add(health.BacklogInterval / 2)
	// Each caller gets its own copy of the cached lag.
	h.FullReport(context.Background()).Consumers[0].Backlog.Lag[0] = 999
	if got := h.FullReport(context.Background()).Consumers[0].Backlog.Lag[0]; got != 5 {
		t.Errorf("cached lag of partition 0 = %d after a caller changed its copy; want 5", got)
	}
	probe(t, h)
	if lagCalls.Load() != 1 || depthCalls.Load() != 1 {
		t.Errorf("within the interval: lag asked %d, depth %d times; want 1 each", lagCalls.Load(), depthCalls.Load())
	}
	now = now.Add(health.BacklogInterval)
	probe(t, h)
	if lagCalls.Load() != 2 || depthCalls.Load() != 2 {
		t.Errorf("after the interval: lag asked %d, depth %d times; want 2 each", lagCalls.Load(), depthCalls.Load())
	}
}

// A broker that cannot answer gives an error in the report, not a failed
// probe or a hang.
func TestBacklogErrorIsReportedNotFatal(t *testing.T) {
	rep := fixedReporter{Ready: true, Runners: []consumer.RunnerHealth{{Name: "events", State: consumer.StateRunning}}}
	hang := lagFunc(func(ctx context.Context) (map[int]int64, error) {
		<-ctx.Done() // a broker that never answers: bounded by the call's timeout
		return nil, ctx.Err()
	})
	h, _ := health.NewHandler(rep, health.WithLag("events", hang))
	// The caller gave up already: the call is bounded by its own timeout,
	// not by the caller, whose cancellation must not become the cached
	// answer of everyone.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := h.FullReport(ctx)
	if b := r.Consumers[0].Backlog; b == nil || !strings.Contains(b.Error, "deadline exceeded") || b.Lag != nil {
		t.Errorf("backlog = %+v; want the call's own deadline error", b)
	}
	h2, _ := health.NewHandler(rep, health.WithDepth("events", depthFunc(func(context.Context) (int, int, error) {
		return 0, 0, errors.New("channel closed")
	})))
	if code, r := probe(t, h2); code != 200 || r.Consumers[0].Backlog == nil || r.Consumers[0].Backlog.Error != "backlog: channel closed" {
		t.Errorf("full report = %d %+v; want 200 with the error in the backlog", code, r.Consumers[0].Backlog)
	}
}

// An error is reused for a second only, not for the whole interval; zero
// lag is reported as 0, not left out.
func TestBacklogErrorsAreRetriedSoonAndZeroLagShows(t *testing.T) {
	rep := fixedReporter{Ready: true, Runners: []consumer.RunnerHealth{{Name: "events", State: consumer.StateRunning}}}
	var calls atomic.Int64
	h, _ := health.NewHandler(rep, health.WithLag("events", lagFunc(func(context.Context) (map[int]int64, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("coordinator not available")
		}
		return map[int]int64{0: 0}, nil
	})))
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	health.SetClock(h, func() time.Time { return now })
	if b := h.FullReport(context.Background()).Consumers[0].Backlog; b.Error == "" {
		t.Fatalf("first call: %+v; want the error", b)
	}
	now = now.Add(2 * time.Second)
	b := h.FullReport(context.Background()).Consumers[0].Backlog
	if calls.Load() != 2 || b.Error != "" || b.TotalLag == nil || *b.TotalLag != 0 {
		t.Errorf("2 s after an error: %d calls, backlog %+v; want a second call and total lag 0", calls.Load(), b)
	}
	_, r := probe(t, h)
	if r.Consumers[0].Backlog == nil || r.Consumers[0].Backlog.TotalLag == nil {
		t.Errorf("JSON report lost total_lag 0: %+v", r.Consumers[0].Backlog)
	}
}
