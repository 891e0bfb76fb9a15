package kafka_test

import (
	"bytes"
	"context"
	"math"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
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
//	QUEUEKIT_BENCH_KAFKA_RECORDS=1000000 go test -run '^$' -bench 'BenchmarkConsume/noop' -benchtime 4x ./broker/kafka/
//
// noop: one 4-partition topic of QUEUEKIT_BENCH_KAFKA_RECORDS records
// (default 100,000) of 100 B each, a handler that does nothing; queuekit
// handles each partition in order (ByPartition) with 1 and 4 workers, and
// by key with 16 workers. Every iteration (round) runs the raw loop and the
// queuekit case back to back (alternating which goes first), so that both
// see the same load on a shared machine: raw-msgs/s is the raw loop's rate,
// msgs/s queuekit's, x-raw their ratio (join to leave); raw-steady-msgs/s,
// steady-msgs/s and x-raw-steady the same from the first record to the
// last, leaving out joining and leaving the group; min-x-raw-steady is the
// lowest per-round ratio; raw-cpu-us/msg and cpu-us/msg are the process's
// CPU time per record from first to last (client and in-process cluster
// together: on a shared machine a steadier comparison than the rates).
// Each round's figures are logged.
//
// sleep1ms: 5,000 records, a handler that sleeps 1 ms. The raw loop handles
// one record at a time (~6 s a run), so it runs once, in its own
// sub-benchmark, and the queuekit cases after it (ByPartition with 4
// workers; ByKey, 64 keys, 64 workers) report x-raw against it; sleeping
// dominates both, so the machine's load matters little there.
//
// QUEUEKIT_BENCH_KAFKA_ONLY=raw or =queuekit runs one side alone (no
// ratios), for a CPU or memory profile of it.
//
// ns/op means little here: a noop iteration is a raw run plus a queuekit
// run plus the checks after it.
func BenchmarkConsume(b *testing.B) {
	e := newEnv(b)
	small := e.topic(b, "bench-noop")
	nNoop := benchRecords(b)
	e.produceSized(b, small, nNoop, benchRecordBytes, func(i int) string { return "k" + strconv.Itoa(i%1024) })
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
			if only := os.Getenv("QUEUEKIT_BENCH_KAFKA_ONLY"); only != "" {
				// One side alone, for a profile of it: no ratios.
				var t timing
				for range b.N {
					switch only {
					case "raw":
						t = t.add(raw(small, nNoop, noop))
					case "queuekit":
						t = t.add(qk(small, nNoop, noop, ord, workers))
					default:
						b.Fatalf("QUEUEKIT_BENCH_KAFKA_ONLY=%q: want raw or queuekit", only)
					}
				}
				t.report(b)
				b.ReportMetric(t.cpuPerMsg(), "cpu-us/msg")
				return
			}
			var r, q timing
			minSteady := math.Inf(1)
			for i := range b.N {
				var ri, qi timing
				if i%2 == 0 {
					ri = raw(small, nNoop, noop)
					qi = qk(small, nNoop, noop, ord, workers)
				} else {
					qi = qk(small, nNoop, noop, ord, workers)
					ri = raw(small, nNoop, noop)
				}
				x := qi.steadyRate() / ri.steadyRate()
				minSteady = min(minSteady, x)
				b.Logf("round %d: raw %.0f msg/s steady %.0f (%.2f µs CPU/msg); queuekit %.0f msg/s steady %.0f (%.2f µs CPU/msg); x-raw %.2f, x-raw-steady %.2f",
					i+1, ri.rate(), ri.steadyRate(), ri.cpuPerMsg(), qi.rate(), qi.steadyRate(), qi.cpuPerMsg(), qi.rate()/ri.rate(), x)
				r, q = r.add(ri), q.add(qi)
			}
			b.ReportMetric(r.rate(), "raw-msgs/s")
			b.ReportMetric(r.steadyRate(), "raw-steady-msgs/s")
			q.report(b)
			b.ReportMetric(q.rate()/r.rate(), "x-raw")
			b.ReportMetric(q.steadyRate()/r.steadyRate(), "x-raw-steady")
			b.ReportMetric(minSteady, "min-x-raw-steady")
			b.ReportMetric(r.cpuPerMsg(), "raw-cpu-us/msg")
			b.ReportMetric(q.cpuPerMsg(), "cpu-us/msg")
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
	// cpu is the process's CPU time (user + system) from first record to
	// last: the client's and the in-process cluster's together.
	cpu time.Duration
}

func (t timing) add(u timing) timing {
	return timing{n: t.n + u.n, total: t.total + u.total, steady: t.steady + u.steady, cpu: t.cpu + u.cpu}
}

// cpuPerMsg is the process CPU per record in steady state, in µs.
func (t timing) cpuPerMsg() float64 { return float64(t.cpu.Microseconds()) / float64(t.n) }

// processCPU returns the process's CPU time so far (user + system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (t timing) rate() float64 { return float64(t.n) / t.total.Seconds() }

func (t timing) steadyRate() float64 { return float64(t.n) / t.steady.Seconds() }

func (t timing) report(b *testing.B) {
	b.ReportMetric(t.rate(), "msgs/s")
	b.ReportMetric(t.steadyRate(), "steady-msgs/s")
}

// benchRecordBytes is the size of a noop record's value.
const benchRecordBytes = 100

// benchRecords is the noop topic's record count: QUEUEKIT_BENCH_KAFKA_RECORDS,
// default 100,000 (a quick run; the size is 1,000,000).
func benchRecords(b *testing.B) int {
	v := os.Getenv("QUEUEKIT_BENCH_KAFKA_RECORDS")
	if v == "" {
		return 100_000
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("QUEUEKIT_BENCH_KAFKA_RECORDS=%q: want a positive record count", v)
	}
	return n
}

// produceSized writes n records of size bytes each to topic, record i with
// key key(i), in requests of 5,000.
func (e *env) produceSized(b *testing.B, topic string, n, size int, key func(i int) string) {
	b.Helper()
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: topic, BatchSize: 1000, BatchTimeout: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	body := bytes.Repeat([]byte("x"), size)
	const chunk = 5000
	for i := 0; i < n; i += chunk {
		end := min(i+chunk, n)
		msgs := make([]*broker.Message, 0, end-i)
		for j := i; j < end; j++ {
			msgs = append(msgs, &broker.Message{Key: []byte(key(j)), Body: body})
		}
		if err := p.Publish(context.Background(), topic, msgs...); err != nil {
			b.Fatalf("Publish: %v", err)
		}
	}
}

func debugBench() bool { return os.Getenv("QUEUEKIT_KAFKA_DEBUG_BENCH") != "" }

// runRaw consumes n records of topic with a plain kafka-go group Reader.
func runRaw(b *testing.B, e *env, topic, group string, n int, h func(context.Context)) timing {
	ctx := context.Background()
	var (
		first time.Time
		cpu0  time.Duration
	)
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
			first, cpu0 = time.Now(), processCPU()
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
	last, cpu1 := time.Now(), processCPU()
	r.Close()
	t := timing{n: n, total: time.Since(start), steady: last.Sub(first), cpu: cpu1 - cpu0}
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
	var (
		first atomic.Pointer[time.Time]
		cpu0  atomic.Int64
	)
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
			if first.CompareAndSwap(nil, &now) {
				cpu0.Store(int64(processCPU()))
			}
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
	last, cpu1 := time.Now(), processCPU()
	if err := c.Shutdown(context.Background()); err != nil { // final commit, leave
		b.Fatal(err)
	}
	<-runErr
	t := timing{n: n, total: time.Since(start), steady: last.Sub(*first.Load()), cpu: cpu1 - time.Duration(cpu0.Load())}
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
