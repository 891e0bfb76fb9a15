package promqueuekit_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
	"github.com/queuekit/queuekit/middleware/promqueuekit"
)

// countingSource is a memory source that reports a backlog and counts how
// often the broker is asked for it: the ready messages of its queue, a lag
// per partition when partitions is set, or err.
type countingSource struct {
	*memory.Source
	b          *memory.Broker
	queue      string
	calls      atomic.Int64
	mu         sync.Mutex
	partitions map[int]int64
	err        error
}

func (s *countingSource) Backlog(ctx context.Context) (broker.Backlog, error) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return broker.Backlog{}, s.err
	}
	if s.partitions != nil {
		var total int64
		for _, n := range s.partitions {
			total += n
		}
		return broker.Backlog{Messages: total, Consumers: -1, Partitions: s.partitions}, nil
	}
	return broker.Backlog{Messages: int64(s.b.Stats(s.queue).Ready), Consumers: 1}, nil
}

var _ broker.BacklogReporter = (*countingSource)(nil)

func newCountingSource(t *testing.T, b *memory.Broker, queue string) *countingSource {
	t.Helper()
	src, err := b.Source(queue, memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &countingSource{Source: src, b: b, queue: queue}
}

func addConsumer(t *testing.T, sup *consumer.Supervisor, name string, src broker.Source) {
	t.Helper()
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	if err := sup.Add(name, c); err != nil {
		t.Fatal(err)
	}
}

// Issue 10 item 3: health's full report and the Prometheus backlog
// collector read one cache — the consumer's Backlog — so that both readers
// together, however often they ask, cause one broker call per
// consumer.BacklogInterval.
func TestHealthAndMetricsShareOneBacklogCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := memory.NewBroker()
		defer b.Close()
		for range 4 {
			if err := b.Publish(context.Background(), "incoming", &broker.Message{Body: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		src := newCountingSource(t, b, "incoming")
		sup := &consumer.Supervisor{Logger: discard()}
		addConsumer(t, sup, "orders", src)
		hh, err := health.NewHandler(sup)
		if err != nil {
			t.Fatal(err)
		}
		col, err := promqueuekit.NewBacklogCollector(sup)
		if err != nil {
			t.Fatal(err)
		}
		reg := prom.NewRegistry()
		reg.MustRegister(col)

		for interval := 1; interval <= 3; interval++ {
			var wg sync.WaitGroup
			for range 5 {
				wg.Go(func() {
					if bl := hh.FullReport(context.Background()).Consumers[0].Backlog; bl == nil || bl.Messages != 4 {
						t.Errorf("health backlog = %+v; want 4 messages", bl)
					}
				})
				wg.Go(func() {
					got := scrape(t, reg, func(string) bool { return false })
					if got["queuekit_backlog_messages{consumer=orders}"] != 4 {
						t.Errorf("scrape = %v; want 4 messages for orders", got)
					}
				})
			}
			wg.Wait()
			if n := src.calls.Load(); n != int64(interval) {
				t.Fatalf("interval %d: 5 health reports and 5 scrapes made %d broker calls in all; want %d", interval, n, interval)
			}
			time.Sleep(consumer.BacklogInterval)
		}
	})
}

func TestBacklogCollectorExportsQueuesAndPartitions(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	for range 3 {
		if err := b.Publish(context.Background(), "emails", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	queue := newCountingSource(t, b, "emails")
	group := newCountingSource(t, b, "invoices")
	group.partitions = map[int]int64{0: 5, 1: 0, 2: 120}
	down := newCountingSource(t, b, "down")
	down.err = errors.New("channel closed")
	none, err := b.Source("plain", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	addConsumer(t, sup, "mailer", queue)
	addConsumer(t, sup, "billing", group)
	addConsumer(t, sup, "down", down)
	// Only the Source interface: no Backlog, so no series.
	addConsumer(t, sup, "plain", struct{ broker.Source }{none})
	_ = sup.Add("watchdog", consumer.RunnerFunc(func(ctx context.Context) error { return nil }))
	col, err := promqueuekit.NewBacklogCollector(sup)
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	reg.MustRegister(col)
	diff(t, scrape(t, reg, func(string) bool { return false }), map[string]float64{
		"queuekit_backlog_up{consumer=mailer}":                              1,
		"queuekit_backlog_messages{consumer=mailer}":                        3,
		"queuekit_backlog_consumers{consumer=mailer}":                       1,
		"queuekit_backlog_up{consumer=billing}":                             1,
		"queuekit_backlog_messages{consumer=billing}":                       125,
		"queuekit_backlog_partition_messages{consumer=billing,partition=0}": 5,
		"queuekit_backlog_partition_messages{consumer=billing,partition=1}": 0,
		"queuekit_backlog_partition_messages{consumer=billing,partition=2}": 120,
		"queuekit_backlog_up{consumer=down}":                                0,
	})
}

func TestNewBacklogCollectorRejectsBadConfig(t *testing.T) {
	if _, err := promqueuekit.NewBacklogCollector(nil); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewBacklogCollector(nil) = %v; want ErrInvalidConfig", err)
	}
	if _, err := promqueuekit.NewBacklogCollector(&consumer.Supervisor{}, promqueuekit.WithNamespace("a.b")); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewBacklogCollector(namespace a.b) = %v; want ErrInvalidConfig", err)
	}
}
