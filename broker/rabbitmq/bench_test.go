package rabbitmq

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// benchCase is one configuration of the comparison with the raw client.
type benchCase struct {
	name     string
	prefetch int
	workers  int
	work     time.Duration // handler time
	msgs     int           // per side, split over two rounds
}

// TestBenchmarkAgainstRawClient compares consuming through queuekit (Source +
// consumer runtime + the standard middleware chain) with a hand-written
// amqp091-go loop (one channel, Qos(prefetch), N goroutines ranging over the
// deliveries and acking each), in the same run, on the same broker. It reports
// msgs/s and client CPU per message (getrusage, user+system) of both, and the
// ratios. Run it with:
//
//	QUEUEKIT_BENCH=1 go test -run TestBenchmarkAgainstRawClient -v ./broker/rabbitmq/
//
// Every queue is declared and pre-published (256-byte persistent messages)
// before any consuming, and the broker is left to settle, so both sides meet
// it in the same state. Each side runs QUEUEKIT_BENCH_ROUNDS times (default
// 4) per case on its own queue, in the order raw, qk, qk, raw, raw, qk…, to
// cancel drift; the figures are totals over the rounds. QUEUEKIT_BENCH_MESSAGES overrides the messages
// per side and case (default 20,000; 5,000 for the 1 ms / 1 worker case,
// which is bound by the handler at ~1,000 msg/s).
func TestBenchmarkAgainstRawClient(t *testing.T) {
	if os.Getenv("QUEUEKIT_BENCH") != "1" {
		t.Skip("set QUEUEKIT_BENCH=1 to run the comparison with the raw client")
	}
	needBroker(t)
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	cases := []benchCase{
		{"prefetch64-workers8-noop", 64, 8, 0, n},
		{"prefetch64-workers8-1ms", 64, 8, time.Millisecond, n},
		{"prefetch1-workers1-noop", 1, 1, 0, n},
		{"prefetch1-workers1-1ms", 1, 1, time.Millisecond, max(n/4, 1)},
	}
	if only := os.Getenv("QUEUEKIT_BENCH_CASE"); only != "" {
		var keep []benchCase
		for _, c := range cases {
			if c.name == only {
				keep = append(keep, c)
			}
		}
		cases = keep
	}
	rounds := 4
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	var order []string // raw, qk, qk, raw, raw, qk, …: each side as often first as second
	for i := 0; i < rounds; i++ {
		if i%2 == 0 {
			order = append(order, "raw", "qk")
		} else {
			order = append(order, "qk", "raw")
		}
	}

	// Declare everything, then pre-publish everything, then settle.
	queues := map[string]string{}
	conn := rawConn(t)
	for _, c := range cases {
		for i, side := range order {
			q := fmt.Sprintf("%s.%s.%d", uniqueQueue(t), side, i)
			queues[c.name+"/"+strconv.Itoa(i)] = q
			topo := Topology{}
			if err := topo.resolve(q); err != nil {
				t.Fatal(err)
			}
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			if err := topo.declare(ch, q); err != nil {
				t.Fatal(err)
			}
			_ = ch.Close()
			t.Cleanup(func() { deleteQueues(q) })
		}
	}
	for _, c := range cases {
		for i := range order {
			prepublish(t, queues[c.name+"/"+strconv.Itoa(i)], c.msgs/rounds, 256)
		}
	}
	time.Sleep(5 * time.Second)

	t.Logf("%-26s %10s %10s %7s %12s %12s %7s   %s", "case", "raw msg/s", "qk msg/s", "ratio", "raw CPU/msg", "qk CPU/msg", "ratio",
		"per-round throughput ratios (median)")
	for _, c := range cases {
		var sum [2]struct {
			msgs    int
			elapsed time.Duration
			cpu     time.Duration
		}
		per := c.msgs / rounds
		var last [2]time.Duration // elapsed of the latest run of each side
		var pairRatios []float64  // qk/raw throughput of each round (adjacent runs)
		for i, side := range order {
			q := queues[c.name+"/"+strconv.Itoa(i)]
			var el, cpu time.Duration
			k := 0
			if side == "raw" {
				el, cpu = runRaw(t, q, c, per)
			} else {
				k = 1
				el, cpu = runQueuekit(t, q, c, per)
			}
			sum[k].msgs += per
			sum[k].elapsed += el
			sum[k].cpu += cpu
			last[k] = el
			if i%2 == 1 {
				pairRatios = append(pairRatios, float64(last[0])/float64(last[1]))
			}
			if os.Getenv("QUEUEKIT_BENCH_VERBOSE") == "1" {
				t.Logf("  %s run %d %-3s: %6.0f msg/s, %v CPU/msg", c.name, i, side, float64(per)/el.Seconds(), cpu/time.Duration(per))
			}
		}
		rate := func(k int) float64 { return float64(sum[k].msgs) / sum[k].elapsed.Seconds() }
		cpuPer := func(k int) time.Duration { return sum[k].cpu / time.Duration(sum[k].msgs) }
		sorted := append([]float64(nil), pairRatios...)
		sort.Float64s(sorted)
		median := sorted[len(sorted)/2]
		if len(sorted)%2 == 0 {
			median = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
		}
		rs := ""
		for _, r := range pairRatios {
			rs += fmt.Sprintf(" %.2f", r)
		}
		t.Logf("%-26s %10.0f %10.0f %7.3f %12v %12v %7.3f  %s (%.3f)", c.name, rate(0), rate(1), rate(1)/rate(0),
			cpuPer(0), cpuPer(1), float64(cpuPer(1))/float64(cpuPer(0)), rs, median)
	}
}

func cpuNow(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchWork(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

// runRaw is the hand-written loop users write with amqp091-go.
func runRaw(t testing.TB, q string, c benchCase, n int) (elapsed, cpu time.Duration) {
	t.Helper()
	cpu0, start := cpuNow(t), time.Now()
	conn, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(c.prefetch, 0, false); err != nil {
		t.Fatal(err)
	}
	switch os.Getenv("QUEUEKIT_BENCH_RAWDECLARE") {
	case "main":
		if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: Classic}); err != nil {
			t.Fatal(err)
		}
	case "other":
		if _, err := ch.QueueDeclare(q+".retry", true, false, false, false, amqp.Table{amqp.QueueTypeArg: Classic, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q}); err != nil {
			t.Fatal(err)
		}
	case "passive":
		if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if os.Getenv("QUEUEKIT_BENCH_RAWDECLARE") == "1" {
		topo := Topology{}
		_ = topo.resolve(q)
		if err := topo.declare(ch, q); err != nil {
			t.Fatal(err)
		}
	}
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var count atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < c.workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries {
				benchWork(c.work)
				if err := d.Ack(false); err != nil {
					return
				}
				if count.Add(1) == int64(n) {
					close(done)
				}
			}
		}()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("raw: %d of %d after 5 minutes", count.Load(), n)
	}
	elapsed, cpu = time.Since(start), cpuNow(t)-cpu0
	_ = ch.Close()
	wg.Wait()
	return elapsed, cpu
}

// countingRecorder is a middleware.Recorder doing what a metrics recorder does
// per message: a few atomic updates.
type countingRecorder struct {
	inFlight, done, failed atomic.Int64
	nanos                  atomic.Int64
}

func (r *countingRecorder) HandlerStarted(*broker.Message) { r.inFlight.Add(1) }
func (r *countingRecorder) HandlerDone(_ *broker.Message, err error, d time.Duration) {
	r.inFlight.Add(-1)
	r.done.Add(1)
	r.nanos.Add(int64(d))
	if err != nil {
		r.failed.Add(1)
	}
}

// runQueuekit consumes through Source + consumer runtime + the standard
// middleware chain (Metrics, Recover, Retry, Timeout; not Log, whose cost
// is the log sink's).
func runQueuekit(t testing.TB, q string, c benchCase, n int) (elapsed, cpu time.Duration) {
	t.Helper()
	cpu0, start := cpuNow(t), time.Now()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil)) // the raw loop logs nothing either
	cfg := Config{Dialer: Dialer{URL: amqpURL()}, Queue: q, Prefetch: c.prefetch, Logger: quiet}
	cfg.Topology.Passive = os.Getenv("QUEUEKIT_BENCH_PASSIVE") == "1"
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var count atomic.Int64
	done := make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		benchWork(c.work)
		if count.Add(1) == int64(n) {
			close(done)
		}
		return nil
	})
	chain := consumer.Chain(
		middleware.Metrics(&countingRecorder{}),
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(10*time.Millisecond, time.Second), 3)),
		middleware.Timeout(10*time.Second),
	)
	// QUEUEKIT_BENCH_MW=metrics|recover|retry|timeout runs one middleware
	// alone instead of the chain, to see what each costs.
	switch os.Getenv("QUEUEKIT_BENCH_MW") {
	case "metrics":
		chain = consumer.Chain(middleware.Metrics(&countingRecorder{}))
	case "recover":
		chain = consumer.Chain(middleware.Recover())
	case "retry":
		chain = consumer.Chain(middleware.Retry(retry.MaxAttempts(retry.Exponential(10*time.Millisecond, time.Second), 3)))
	case "timeout":
		chain = consumer.Chain(middleware.Timeout(10 * time.Second))
	}
	var wrapped consumer.Handler = chain(h)
	if os.Getenv("QUEUEKIT_BENCH_NOMW") == "1" {
		wrapped = h
	}
	if os.Getenv("QUEUEKIT_BENCH_SOURCEONLY") == "1" {
		// The Source alone, in a raw-style loop: no runtime, no middleware.
		var wg sync.WaitGroup
		for i := 0; i < c.workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					d, err := src.Receive(context.Background())
					if err != nil {
						return
					}
					_ = h(context.Background(), d.Message())
					_ = d.Ack(context.Background())
				}
			}()
		}
		<-done
		elapsed, cpu = time.Since(start), cpuNow(t)-cpu0
		_ = src.Close(context.Background())
		wg.Wait()
		return elapsed, cpu
	}
	cons, err := consumer.New(src, wrapped, consumer.WithConcurrency(c.workers), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- cons.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("queuekit: %d of %d after 5 minutes", count.Load(), n)
	}
	elapsed, cpu = time.Since(start), cpuNow(t)-cpu0
	cancel()
	if err := <-runDone; err != nil {
		t.Fatalf("Run = %v", err)
	}
	return elapsed, cpu
}

// BenchmarkConsume consumes b.N pre-published 256-byte persistent messages
// with the raw client and with queuekit (Source + runtime + standard
// middleware), for each prefetch/workers/handler case, and reports msgs/s and
// client CPU per message. The queue is declared and filled, and the broker
// left to settle for 3s, before the timer starts. Use a fixed count:
//
//	go test -run '^$' -bench BenchmarkConsume -benchtime 20000x ./broker/rabbitmq/
//
// TestBenchmarkAgainstRawClient runs the same comparison interleaved, which
// is the fairer measure on a noisy machine.
func BenchmarkConsume(b *testing.B) {
	needBroker(b)
	cases := []benchCase{
		{"prefetch64-workers8-noop", 64, 8, 0, 0},
		{"prefetch64-workers8-1ms", 64, 8, time.Millisecond, 0},
		{"prefetch1-workers1-noop", 1, 1, 0, 0},
		{"prefetch1-workers1-1ms", 1, 1, time.Millisecond, 0},
	}
	for _, c := range cases {
		for _, side := range []string{"raw", "queuekit"} {
			b.Run(c.name+"/"+side, func(b *testing.B) {
				q := fmt.Sprintf("qk-bench-%s-%s-%d", c.name, side, time.Now().UnixNano())
				b.Cleanup(func() { deleteQueues(q) })
				topo := Topology{}
				if err := topo.resolve(q); err != nil {
					b.Fatal(err)
				}
				conn := rawConn(b)
				ch, err := conn.Channel()
				if err != nil {
					b.Fatal(err)
				}
				if err := topo.declare(ch, q); err != nil {
					b.Fatal(err)
				}
				_ = ch.Close()
				prepublish(b, q, b.N, 256)
				time.Sleep(3 * time.Second)
				b.ResetTimer()
				var el, cpu time.Duration
				if side == "raw" {
					el, cpu = runRaw(b, q, c, b.N)
				} else {
					el, cpu = runQueuekit(b, q, c, b.N)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/msg")
			})
		}
	}
}
