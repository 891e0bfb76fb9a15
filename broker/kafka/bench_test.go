package kafka_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// BenchmarkConsume compares queuekit's Kafka source (through the consumer
// runtime) with a raw kafka-go loop — the group Reader, FetchMessage, and a
// synchronous CommitMessages every 1,000 records — on the same in-process
// kfake cluster (Kafka protocol, not Apache Kafka), in the same run. Each
// iteration consumes the whole topic with a fresh group, from joining to
// leaving, and reports msgs/s.
//
//	go test -run '^$' -bench BenchmarkConsume -benchtime 3x ./broker/kafka/
//
// noop: 100,000 small records over 4 partitions, a handler that does
// nothing; queuekit handles each partition in order (ByPartition).
// sleep1ms: 5,000 records (the raw loop needs 1 ms each, sequentially), a
// handler that sleeps 1 ms; queuekit with ByPartition (4 at once) and with
// ByKey (64 keys, 64 workers).
func BenchmarkConsume(b *testing.B) {
	e := newEnv(b)
	small := e.topic(b, "bench-noop")
	const nNoop = 100_000
	e.produce(b, small, 0, nNoop, func(i int) string { return "k" + strconv.Itoa(i%1024) })
	slow := e.topic(b, "bench-slow")
	const nSlow = 5_000
	e.produce(b, slow, 0, nSlow, func(i int) string { return "k" + strconv.Itoa(i%64) })

	noop := func(context.Context) {}
	sleep := func(context.Context) { time.Sleep(time.Millisecond) }
	var group atomic.Int64
	nextGroup := func() string { return "bench-" + strconv.FormatInt(group.Add(1), 10) }

	b.Run("noop/raw-kafka-go", func(b *testing.B) { benchRaw(b, e, small, nextGroup, nNoop, noop) })
	b.Run("noop/queuekit-by-partition", func(b *testing.B) {
		benchQueuekit(b, e, small, nextGroup, nNoop, noop, kafka.ByPartition, 1)
	})
	b.Run("noop/queuekit-by-partition-4workers", func(b *testing.B) {
		benchQueuekit(b, e, small, nextGroup, nNoop, noop, kafka.ByPartition, 4)
	})
	b.Run("noop/queuekit-by-key", func(b *testing.B) {
		benchQueuekit(b, e, small, nextGroup, nNoop, noop, kafka.ByKey, 16)
	})
	b.Run("sleep1ms/raw-kafka-go", func(b *testing.B) { benchRaw(b, e, slow, nextGroup, nSlow, sleep) })
	b.Run("sleep1ms/queuekit-by-partition", func(b *testing.B) {
		benchQueuekit(b, e, slow, nextGroup, nSlow, sleep, kafka.ByPartition, 4)
	})
	b.Run("sleep1ms/queuekit-by-key", func(b *testing.B) {
		benchQueuekit(b, e, slow, nextGroup, nSlow, sleep, kafka.ByKey, 64)
	})
}

func benchRaw(b *testing.B, e *env, topic string, group func() string, n int, h func(context.Context)) {
	ctx := context.Background()
	start := time.Now()
	var steady time.Duration
	for range b.N {
		var first time.Time
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers:           e.brokers,
			GroupID:           group(),
			Topic:             topic,
			HeartbeatInterval: 100 * time.Millisecond,
			SessionTimeout:    2 * time.Second,
			RebalanceTimeout:  3 * time.Second,
			MaxWait:           100 * time.Millisecond,
			StartOffset:       kafkago.FirstOffset,
		})
		batch := make([]kafkago.Message, 0, 1000)
		for i := 0; i < n; i++ {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if i == 0 {
				first = time.Now()
			}
			h(ctx)
			batch = append(batch, m)
			if len(batch) == cap(batch) || i == n-1 {
				if err := r.CommitMessages(ctx, batch...); err != nil {
					b.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		steady += time.Since(first)
		r.Close()
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64(n*b.N)/steady.Seconds(), "steady-msgs/s")
}

func benchQueuekit(b *testing.B, e *env, topic string, group func() string, n int, h func(context.Context),
	ord kafka.Ordering, workers int) {
	start := time.Now()
	var steady time.Duration
	for range b.N {
		var first atomic.Pointer[time.Time]
		cfg := e.config(topic, group())
		cfg.Ordering = ord
		cfg.CommitInterval = time.Second // commits by count (1,000), like the raw loop
		var handled atomic.Int64
		done := make(chan struct{})
		src := newSource(b, cfg)
		c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, _ *consumer.Message) error {
			if first.Load() == nil {
				now := time.Now()
				first.CompareAndSwap(nil, &now)
			}
			h(ctx)
			if handled.Add(1) == int64(n) {
				close(done)
			}
			return nil
		}), consumer.WithConcurrency(workers), consumer.WithLogger(quietLogger()))
		if err != nil {
			b.Fatal(err)
		}
		runErr := make(chan error, 1)
		go func() { runErr <- c.Run(context.Background()) }()
		select {
		case <-done:
			steady += time.Since(*first.Load())
		case <-time.After(5 * time.Minute):
			b.Fatalf("handled %d of %d", handled.Load(), n)
		}
		t0 := time.Now()
		if err := c.Shutdown(context.Background()); err != nil { // final commit, leave
			b.Fatal(err)
		}
		<-runErr
		if os.Getenv("QUEUEKIT_KAFKA_DEBUG_BENCH") != "" {
			b.Logf("shutdown took %v", time.Since(t0))
		}
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64(n*b.N)/steady.Seconds(), "steady-msgs/s")
}
