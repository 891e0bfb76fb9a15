package kafka_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// BenchmarkConsume compares queuekit's Kafka source (through the consumer
// runtime) with a raw kafka-go loop — the group Reader, FetchMessage, and a
// synchronous CommitMessages every 1,000 records — on the same in-process
// kfake cluster (Kafka protocol, not Apache Kafka), in the same run. Each
// run consumes the whole topic with a fresh group, from creating the reader
// or consumer to having left the group.
//
//	go test -run '^$' -bench BenchmarkConsume -benchtime 3x -count 2 ./broker/kafka/
//
// noop: 100,000 small records over 4 partitions, a handler that does
// nothing; queuekit handles each partition in order (ByPartition) with 1
// and 4 workers, and by key with 16 workers. Every iteration runs the raw
// loop and the queuekit case back to back (alternating which goes first),
// so that both see the same load on a shared machine: raw-msgs/s is the raw
// loop's rate, msgs/s queuekit's, x-raw their ratio.
//
// sleep1ms: 5,000 records, a handler that sleeps 1 ms. The raw loop handles
// one record at a time (~6 s a run), so it runs once, in its own
// sub-benchmark, and the queuekit cases after it (ByPartition with 4
// workers; ByKey, 64 keys, 64 workers) report x-raw against it; sleeping
// dominates both, so the machine's load matters little there.
//
// steady-msgs/s counts from the first record to the last, leaving out
// joining and leaving the group. ns/op means little here: a noop iteration
// is a raw run plus a queuekit run plus the checks after it.
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
	raw := func(topic string, n int, h func(context.Context)) timing {
		return runRaw(b, e, topic, nextGroup(), n, h)
	}
	qk := func(topic string, n int, h func(context.Context), ord kafka.Ordering, workers int) timing {
		return runQueuekit(b, e, topic, nextGroup(), n, h, ord, workers)
	}

	paired := func(ord kafka.Ordering, workers int) func(*testing.B) {
		return func(b *testing.B) {
			var r, q timing
			for i := range b.N {
				if i%2 == 0 {
					r = r.add(raw(small, nNoop, noop))
					q = q.add(qk(small, nNoop, noop, ord, workers))
				} else {
					q = q.add(qk(small, nNoop, noop, ord, workers))
					r = r.add(raw(small, nNoop, noop))
				}
			}
			b.ReportMetric(r.rate(), "raw-msgs/s")
			q.report(b)
			b.ReportMetric(q.rate()/r.rate(), "x-raw")
		}
	}
	b.Run("noop/by-partition-1worker", paired(kafka.ByPartition, 1))
	b.Run("noop/by-partition-4workers", paired(kafka.ByPartition, 4))
	b.Run("noop/by-key-16workers", paired(kafka.ByKey, 16))

	var slowRaw timing
	b.Run("sleep1ms/raw-kafka-go", func(b *testing.B) {
		slowRaw = timing{}
		for range b.N {
			slowRaw = slowRaw.add(raw(slow, nSlow, sleep))
		}
		slowRaw.report(b)
	})
	alone := func(ord kafka.Ordering, workers int) func(*testing.B) {
		return func(b *testing.B) {
			var q timing
			for range b.N {
				q = q.add(qk(slow, nSlow, sleep, ord, workers))
			}
			q.report(b)
			if slowRaw.n > 0 {
				b.ReportMetric(q.rate()/slowRaw.rate(), "x-raw")
			}
		}
	}
	b.Run("sleep1ms/by-partition-4workers", alone(kafka.ByPartition, 4))
	b.Run("sleep1ms/by-key-64workers", alone(kafka.ByKey, 64))
}

// timing accumulates runs: n records in total (join to leave) and steady
// (first record to last).
type timing struct {
	n             int
	total, steady time.Duration
}

func (t timing) add(u timing) timing {
	return timing{n: t.n + u.n, total: t.total + u.total, steady: t.steady + u.steady}
}

func (t timing) rate() float64 { return float64(t.n) / t.total.Seconds() }

func (t timing) report(b *testing.B) {
	b.ReportMetric(t.rate(), "msgs/s")
	b.ReportMetric(float64(t.n)/t.steady.Seconds(), "steady-msgs/s")
}

func debugBench() bool { return os.Getenv("QUEUEKIT_KAFKA_DEBUG_BENCH") != "" }

// runRaw consumes n records of topic with a plain kafka-go group Reader.
func runRaw(b *testing.B, e *env, topic, group string, n int, h func(context.Context)) timing {
	ctx := context.Background()
	var first time.Time
	start := time.Now()
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:           e.brokers,
		GroupID:           group,
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
	last := time.Now()
	r.Close()
	t := timing{n: n, total: time.Since(start), steady: last.Sub(first)}
	if debugBench() {
		b.Logf("raw: first record after %v, last after %v, close took %v", first.Sub(start), last.Sub(start), time.Since(last))
	}
	return t
}

// runQueuekit consumes n records of topic with the consumer runtime over a
// Source. After the run (outside the measured time) it checks that exactly
// n records were handled and that the committed offsets are the end offsets,
// so that a fast but wrong run cannot pass for a fast one.
func runQueuekit(b *testing.B, e *env, topic, group string, n int, h func(context.Context),
	ord kafka.Ordering, workers int) timing {
	var first atomic.Pointer[time.Time]
	start := time.Now()
	cfg := e.config(topic, group)
	cfg.Ordering = ord
	cfg.CommitInterval = time.Second // commits by count (1,000), like the raw loop
	var handled atomic.Int64
	done := make(chan struct{})
	src := newSource(b, cfg)
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
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
	case <-time.After(5 * time.Minute):
		b.Fatalf("handled %d of %d", handled.Load(), n)
	}
	last := time.Now()
	if err := c.Shutdown(context.Background()); err != nil { // final commit, leave
		b.Fatal(err)
	}
	<-runErr
	t := timing{n: n, total: time.Since(start), steady: last.Sub(*first.Load())}
	if debugBench() {
		b.Logf("queuekit: first record after %v, last after %v, shutdown took %v",
			first.Load().Sub(start), last.Sub(start), time.Since(last))
	}
	if got := handled.Load(); got != int64(n) {
		b.Fatalf("handled %d records; want exactly %d", got, n)
	}
	end, got := e.endOffsets(b, topic), e.committed(b, group, topic)
	for p := range partitions {
		if got[p] != end[p] {
			b.Fatalf("partition %d: committed %d; want end offset %d", p, got[p], end[p])
		}
	}
	return t
}
