package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
)

// backlogSource is a memory source that reports its queue's ready messages
// as its backlog, counting the calls, or fails with err when set.
type backlogSource struct {
	*memory.Source
	b     *memory.Broker
	queue string
	calls atomic.Int64
	err   atomic.Pointer[error]
}

func (s *backlogSource) Backlog(ctx context.Context) (broker.Backlog, error) {
	s.calls.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		return broker.Backlog{}, errors.New("backlog asked without a deadline")
	}
	if err := s.err.Load(); err != nil {
		return broker.Backlog{}, *err
	}
	return broker.Backlog{Messages: int64(s.b.Stats(s.queue).Ready), Consumers: 1}, nil
}

var _ broker.BacklogReporter = (*backlogSource)(nil)

func newBacklogSource(t *testing.T, b *memory.Broker, queue string) *backlogSource {
	t.Helper()
	src, err := b.Source(queue, memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &backlogSource{Source: src, b: b, queue: queue}
}

// Issue 10 item 3: the full report carries the backlog of every consumer
// whose source reports one, read through the consumer's own rate-limited
// Backlog; no option wires it. The probes never ask the broker.
func TestFullReportCarriesEachConsumersBacklog(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	for range 3 {
		if err := b.Publish(context.Background(), "orders", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	src := newBacklogSource(t, b, "orders")
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	if err := sup.Add("other", consumer.RunnerFunc(func(ctx context.Context) error { return nil })); err != nil {
		t.Fatal(err)
	}
	h, err := health.NewHandler(sup)
	if err != nil {
		t.Fatal(err)
	}

	for _, p := range []http.Handler{h.Ready(), h.Live()} {
		if _, r := probe(t, p); r.Consumers[0].Backlog != nil {
			t.Errorf("probe carries backlog %+v; want none", r.Consumers[0].Backlog)
		}
	}
	if n := src.calls.Load(); n != 0 {
		t.Fatalf("probes asked the broker %d times; want 0", n)
	}

	_, r := probe(t, h)
	if bl := r.Consumers[0].Backlog; bl == nil || bl.Messages != 3 || bl.Consumers != 1 || bl.Error != "" {
		t.Errorf("orders backlog = %+v; want 3 messages, 1 consumer", bl)
	}
	if bl := r.Consumers[1].Backlog; bl != nil {
		t.Errorf("a RunnerFunc got backlog %+v; want none", bl)
	}
	for range 5 {
		h.FullReport(context.Background())
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("6 full reports within the interval asked the broker %d times; want 1", n)
	}
}

// A broker that cannot answer gives an error in the report, not a failed
// report.
func TestBacklogErrorIsReportedNotFatal(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src := newBacklogSource(t, b, "orders")
	failure := errors.New("channel closed")
	src.err.Store(&failure)
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	_ = sup.Add("orders", c)
	h, _ := health.NewHandler(sup)
	code, r := probe(t, h)
	if bl := r.Consumers[0].Backlog; code != http.StatusServiceUnavailable || bl == nil || bl.Error != "queuekit: backlog: channel closed" {
		t.Errorf("full report = %d %+v; want 503 (not running) with the broker's error in the backlog", code, bl)
	}
}

// Review of issue 10 (round 3), item 8: a backlog the broker could not
// report carries no numbers next to its error: "messages":0 would read as an
// empty queue to a client that does not look at the error.
func TestBacklogErrorCarriesNoNumbers(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src := newBacklogSource(t, b, "orders")
	failure := errors.New("channel closed")
	src.err.Store(&failure)
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	_ = sup.Add("orders", c)
	h, _ := health.NewHandler(sup)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/health", nil))
	body := w.Body.String()
	if !strings.Contains(body, `"error":"queuekit: backlog: channel closed"`) {
		t.Fatalf("full report %s; want the backlog error", body)
	}
	for _, field := range []string{`"messages"`, `"consumers":0`, `"consumers":-1`} {
		if strings.Contains(body, field) {
			t.Errorf("full report %s holds %s next to the backlog error", body, field)
		}
	}
	// A backlog that was read keeps its numbers, zeros included.
	got, err := json.Marshal(health.Backlog{Backlog: broker.Backlog{Messages: 0, Consumers: 0}})
	if err != nil || string(got) != `{"messages":0,"consumers":0}` {
		t.Errorf("json.Marshal(empty queue backlog) = %s, %v", got, err)
	}
	// And a report decodes back into the same shape.
	var back health.Backlog
	if err := json.Unmarshal([]byte(`{"messages":3,"consumers":1}`), &back); err != nil || back.Messages != 3 || back.Consumers != 1 {
		t.Errorf("json.Unmarshal = %+v, %v", back, err)
	}
}
