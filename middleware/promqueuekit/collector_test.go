package promqueuekit_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/promqueuekit"
)

type fakeLag struct {
	calls atomic.Int32
	lag   map[int]int64
	err   error
}

func (f *fakeLag) LagByPartition(ctx context.Context) (map[int]int64, error) {
	f.calls.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("Lag called without a deadline")
	}
	return f.lag, f.err
}

type fakeDepth struct {
	calls              atomic.Int32
	messages, consumer int
	err                error
}

func (f *fakeDepth) QueueDepth(context.Context) (int, int, error) {
	f.calls.Add(1)
	return f.messages, f.consumer, f.err
}

func TestLagCollectorExportsPartitionsAndRateLimits(t *testing.T) {
	src := &fakeLag{lag: map[int]int64{0: 5, 1: 0, 2: 120}}
	c, err := promqueuekit.NewLagCollector(src, promqueuekit.CollectorConfig{Consumer: "billing", Destination: "invoices", MinInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"queuekit_kafka_consumer_lag{consumer=billing,partition=0,topic=invoices}": 5,
		"queuekit_kafka_consumer_lag{consumer=billing,partition=1,topic=invoices}": 0,
		"queuekit_kafka_consumer_lag{consumer=billing,partition=2,topic=invoices}": 120,
		"queuekit_collector_errors_total{collector=kafka_lag,consumer=billing}":    0,
	}
	for range 3 {
		diff(t, scrape(t, reg, func(string) bool { return false }), want)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("3 scrapes within MinInterval called Lag %d times; want 1", n)
	}
}

func TestDepthCollectorLeavesGaugesOutOnError(t *testing.T) {
	src := &fakeDepth{messages: 42, consumer: 3}
	// A tiny interval: every scrape calls the source.
	c, err := promqueuekit.NewDepthCollector(src, promqueuekit.CollectorConfig{Consumer: "mailer", Destination: "emails", MinInterval: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	none := func(string) bool { return false }
	diff(t, scrape(t, reg, none), map[string]float64{
		"queuekit_rabbitmq_queue_messages{consumer=mailer,queue=emails}":            42,
		"queuekit_rabbitmq_queue_consumers{consumer=mailer,queue=emails}":           3,
		"queuekit_collector_errors_total{collector=rabbitmq_depth,consumer=mailer}": 0,
	})
	src.err = errors.New("channel closed")
	time.Sleep(time.Millisecond) // let MinInterval pass
	diff(t, scrape(t, reg, none), map[string]float64{
		"queuekit_collector_errors_total{collector=rabbitmq_depth,consumer=mailer}": 1,
	})
}

func TestCollectorsRejectBadConfig(t *testing.T) {
	good := promqueuekit.CollectorConfig{Consumer: "c", Destination: "q"}
	tests := []struct {
		name string
		cfg  promqueuekit.CollectorConfig
		nilS bool
	}{
		{"no consumer name", promqueuekit.CollectorConfig{Destination: "q"}, false},
		{"no destination", promqueuekit.CollectorConfig{Consumer: "c"}, false},
		{"a negative interval", promqueuekit.CollectorConfig{Consumer: "c", Destination: "q", MinInterval: -1}, false},
		{"a bad namespace", promqueuekit.CollectorConfig{Consumer: "c", Destination: "q", Namespace: "a.b"}, false},
		{"a nil source", good, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var lag promqueuekit.LagSource = &fakeLag{}
			var depth promqueuekit.DepthSource = &fakeDepth{}
			if tt.nilS {
				lag, depth = nil, nil
			}
			if _, err := promqueuekit.NewLagCollector(lag, tt.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("NewLagCollector(%s) error = %v; want ErrInvalidConfig", tt.name, err)
			}
			if _, err := promqueuekit.NewDepthCollector(depth, tt.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("NewDepthCollector(%s) error = %v; want ErrInvalidConfig", tt.name, err)
			}
		})
	}
}

func TestLagFuncAdaptsASliceShapedSource(t *testing.T) {
	type partitionLag struct {
		Partition int
		Lag       int64
	}
	lagOf := func(context.Context) ([]partitionLag, error) { return []partitionLag{{0, 7}, {3, 1}}, nil }
	src := promqueuekit.LagFunc(func(ctx context.Context) (map[int]int64, error) {
		ls, err := lagOf(ctx)
		if err != nil {
			return nil, err
		}
		m := make(map[int]int64, len(ls))
		for _, l := range ls {
			m[l.Partition] = l.Lag
		}
		return m, nil
	})
	c, err := promqueuekit.NewLagCollector(src, promqueuekit.CollectorConfig{Consumer: "c", Destination: "t"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	diff(t, scrape(t, reg, func(string) bool { return false }), map[string]float64{
		"queuekit_kafka_consumer_lag{consumer=c,partition=0,topic=t}":     7,
		"queuekit_kafka_consumer_lag{consumer=c,partition=3,topic=t}":     1,
		"queuekit_collector_errors_total{collector=kafka_lag,consumer=c}": 0,
	})
}
