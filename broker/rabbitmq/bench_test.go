package rabbitmq

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
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
	vary     time.Duration // when set, handler times vary uniformly from work to work+vary
	msgs     int           // per side, split over two rounds
}

// handlerTime is the time of one handler call of c.
func (c benchCase) handlerTime() time.Duration {
	if c.vary > 0 {
		return c.work + rand.N(c.vary)
	}
	return c.work
}

// TestBenchmarkAgainstRawClient compares consuming through queuekit (Source +
// consumer runtime + the standard middleware chain) with a hand-written
// amqp091-go loop (one channel, Qos(prefetch), N goroutines ranging over the
// deliveries and acking each), in the same run, on the same broker. Sides:
//
//   - raw: the loop, d.Ack(false) per message;
//   - qk-off: queuekit with per-message acks (Config.AckBatch 1);
//   - qk-on: queuekit with its defaults, coalesced acks (AckBatch 16 and
//     AckDelay 2ms, or QUEUEKIT_BENCH_ACKBATCH / QUEUEKIT_BENCH_ACKDELAY);
//   - raw-multi (only when named in QUEUEKIT_BENCH_SIDES): the loop with
//     one worker, acking with multiple=true every 16 messages.
//
// It reports msgs/s, client CPU per message (getrusage, user+system) and the
// broker's CPU per message (beam.smp's utime+stime from /proc, when the
// broker is local), each side's ratios to raw over all rounds, and the
// per-round throughput ratios to raw with their median. Run it with:
//
//	QUEUEKIT_BENCH=1 go test -run TestBenchmarkAgainstRawClient -v ./broker/rabbitmq/
//
// Every queue is declared and pre-published (256-byte persistent messages)
// before any consuming, and the broker is left to settle, so every side
// meets it in the same state. Each side runs QUEUEKIT_BENCH_ROUNDS times
// (default 4) per case on its own queue; round i runs the sides rotated by i,
// so each is first as often as the others, to cancel drift; the figures are
// totals over the rounds. QUEUEKIT_BENCH_MESSAGES overrides the messages per
// side and case (default 20,000; a quarter for the 1 ms / 1 worker case,
// which is bound by the handler at ~1,000 msg/s, and for the prefetch 8 /
// 8 workers / 1-5 ms case, at ~2,000 msg/s); QUEUEKIT_BENCH_SIDES
// (comma-separated) picks the sides, QUEUEKIT_BENCH_CASE one case.
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
		{"prefetch64-workers8-noop", 64, 8, 0, 0, n},
		{"prefetch64-workers8-1ms", 64, 8, time.Millisecond, 0, n},
		{"prefetch1-workers1-noop", 1, 1, 0, 0, n},
		{"prefetch1-workers1-1ms", 1, 1, time.Millisecond, 0, max(n/4, 1)},
		// The prefetch equal to the concurrency, handlers of 1-5 ms:
		// where waiting acks would hold the credit idle workers wait for.
		{"prefetch8-workers8-1to5ms", 8, 8, time.Millisecond, 4 * time.Millisecond, max(n/4, 1)},
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
	sides := []string{"raw", "qk-off", "qk-on"}
	if v := os.Getenv("QUEUEKIT_BENCH_SIDES"); v != "" {
		sides = strings.Split(v, ",")
	}
	if sides[0] != "raw" {
		t.Fatalf("QUEUEKIT_BENCH_SIDES=%s: the first side must be raw, the reference", os.Getenv("QUEUEKIT_BENCH_SIDES"))
	}
	type run struct {
		round int
		side  string
	}
	var order []run // round i: the sides rotated by i
	for i := 0; i < rounds; i++ {
		for j := range sides {
			order = append(order, run{i, sides[(i+j)%len(sides)]})
		}
	}
	brokerCPU := brokerCPUReader()
	if brokerCPU == nil {
		t.Log("no local beam.smp process: broker CPU not measured")
		brokerCPU = func() time.Duration { return 0 }
	}

	// Declare everything, then pre-publish everything, then settle.
	queues := map[string]string{}
	conn := rawConn(t)
	for _, c := range cases {
		for i, r := range order {
			q := fmt.Sprintf("%s.%s.%d", uniqueQueue(t), r.side, i)
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

	for _, c := range cases {
		type total struct {
			msgs               int
			elapsed, cpu, bcpu time.Duration
		}
		sum := map[string]*total{}
		perRound := map[string][]float64{} // side: elapsed of raw / elapsed of side, per round
		elapsedOf := map[int]map[string]time.Duration{}
		for _, side := range sides {
			sum[side] = &total{}
		}
		per := c.msgs / rounds
		var st ackStats
		for i, r := range order {
			q := queues[c.name+"/"+strconv.Itoa(i)]
			b0 := brokerCPU()
			var el, cpu time.Duration
			switch r.side {
			case "raw":
				el, cpu = runRaw(t, q, c, per)
			case "raw-multi":
				el, cpu = runRawMultiple(t, q, c, per, min(16, c.prefetch)) // more would wait for an ack forever
			case "qk-off":
				el, cpu, _ = runQueuekitWith(t, q, c, per, func(cfg *Config) { cfg.AckBatch = 1 })
			case "qk-on":
				var s *ackStats
				el, cpu, s = runQueuekitWith(t, q, c, per, benchAckConfig)
				st.acked.Add(s.acked.Load())
				st.multiples.Add(s.multiples.Load())
				st.singles.Add(s.singles.Load())
			default:
				t.Fatalf("unknown side %q", r.side)
			}
			bcpu := brokerCPU() - b0
			tot := sum[r.side]
			tot.msgs += per
			tot.elapsed += el
			tot.cpu += cpu
			tot.bcpu += bcpu
			if elapsedOf[r.round] == nil {
				elapsedOf[r.round] = map[string]time.Duration{}
			}
			elapsedOf[r.round][r.side] = el
			if os.Getenv("QUEUEKIT_BENCH_VERBOSE") == "1" {
				t.Logf("  %s round %d %-9s: %6.0f msg/s, client %v/msg, broker %v/msg", c.name, r.round, r.side,
					float64(per)/el.Seconds(), cpu/time.Duration(per), bcpu/time.Duration(per))
			}
		}
		for i := 0; i < rounds; i++ {
			for _, side := range sides[1:] {
				perRound[side] = append(perRound[side], float64(elapsedOf[i]["raw"])/float64(elapsedOf[i][side]))
			}
		}
		rate := func(side string) float64 { return float64(sum[side].msgs) / sum[side].elapsed.Seconds() }
		cpuPer := func(side string) time.Duration { return sum[side].cpu / time.Duration(sum[side].msgs) }
		bcpuPer := func(side string) time.Duration { return sum[side].bcpu / time.Duration(sum[side].msgs) }
		t.Logf("%s (%d rounds, %d messages per side):", c.name, rounds, c.msgs)
		t.Logf("  %-9s %9s %7s %11s %7s %11s %7s   %s", "side", "msg/s", "ratio", "client/msg", "ratio", "broker/msg", "ratio",
			"per-round throughput ratios (median)")
		for _, side := range sides {
			rs, med := "", 1.0
			if side != "raw" {
				for _, r := range perRound[side] {
					rs += fmt.Sprintf(" %.2f", r)
				}
				med = median(perRound[side])
			}
			bratio := 0.0
			if bcpuPer("raw") > 0 {
				bratio = float64(bcpuPer(side)) / float64(bcpuPer("raw"))
			}
			t.Logf("  %-9s %9.0f %7.3f %11v %7.3f %11v %7.3f  %s (%.3f)", side, rate(side), rate(side)/rate("raw"),
				cpuPer(side), float64(cpuPer(side))/float64(cpuPer("raw")), bcpuPer(side), bratio, rs, med)
		}
		if n := st.multiples.Load() + st.singles.Load(); n > 0 {
			t.Logf("  qk-on acks: %d in %d frames (%d multiple, %d single): %.1f per frame", st.acked.Load(), n,
				st.multiples.Load(), st.singles.Load(), float64(st.acked.Load())/float64(n))
		}
	}
}

// benchAckConfig sets the coalescing of the qk-on side from
// QUEUEKIT_BENCH_ACKBATCH and QUEUEKIT_BENCH_ACKDELAY (default: the
// Source's defaults, AckBatch 16 and AckDelay 2ms).
func benchAckConfig(cfg *Config) {
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_ACKBATCH")); err == nil {
		cfg.AckBatch = v
	}
	if v, err := time.ParseDuration(os.Getenv("QUEUEKIT_BENCH_ACKDELAY")); err == nil {
		cfg.AckDelay = v
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// brokerCPUReader returns a function reading the CPU time used so far by
// the local RabbitMQ node (every beam.smp process), or nil when the broker
// is not local or no such process is found. (bench/setup_test.go has the
// same for the cross-broker benchmarks.)
func brokerCPUReader() func() time.Duration {
	u, err := url.Parse(amqpURL())
	if err != nil {
		return nil
	}
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1":
	default:
		return nil
	}
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, f := range dirs {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "beam.smp" {
			pids = append(pids, filepath.Base(filepath.Dir(f)))
		}
	}
	if len(pids) == 0 {
		return nil
	}
	tick := clockTick()
	return func() time.Duration {
		var total time.Duration
		for _, pid := range pids {
			total += procCPU(pid, tick)
		}
		return total
	}
}

// procCPU returns utime+stime of a process, from /proc/<pid>/stat.
func procCPU(pid string, tick time.Duration) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	return time.Duration(ut+st) * tick
}

// clockTick is the unit of /proc/<pid>/stat's times: 1/CLK_TCK seconds
// (100 on Linux unless getconf says otherwise).
func clockTick() time.Duration {
	hz := int64(100)
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && v > 0 {
			hz = v
		}
	}
	return time.Second / time.Duration(hz)
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
				benchWork(c.handlerTime())
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

// runRawMultiple is the raw loop with one worker acking with multiple=true
// once per `every` messages (and at the last one): what coalescing can
// reach at best, with no concurrency to keep safe.
func runRawMultiple(t testing.TB, q string, c benchCase, n, every int) (elapsed, cpu time.Duration) {
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
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for d := range deliveries {
		benchWork(c.handlerTime())
		count++
		if count%every == 0 || count == n {
			if err := d.Ack(true); err != nil {
				t.Fatal(err)
			}
		}
		if count == n {
			break
		}
	}
	elapsed, cpu = time.Since(start), cpuNow(t)-cpu0
	_ = ch.Close()
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
	elapsed, cpu, _ = runQueuekitWith(t, q, c, n, benchAckConfig)
	return elapsed, cpu
}

// runQueuekitWith is runQueuekit with the Source's Config adjusted by
// adjust; it returns what the source's ackers wrote too.
func runQueuekitWith(t testing.TB, q string, c benchCase, n int, adjust func(*Config)) (elapsed, cpu time.Duration, acks *ackStats) {
	t.Helper()
	cpu0, start := cpuNow(t), time.Now()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil)) // the raw loop logs nothing either
	cfg := Config{Dialer: Dialer{URL: amqpURL()}, Queue: q, Prefetch: c.prefetch, Logger: quiet}
	cfg.Topology.Passive = os.Getenv("QUEUEKIT_BENCH_PASSIVE") == "1"
	adjust(&cfg)
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var count atomic.Int64
	done := make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		benchWork(c.handlerTime())
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
		return elapsed, cpu, &src.ackStats
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
	return elapsed, cpu, &src.ackStats
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
		{"prefetch64-workers8-noop", 64, 8, 0, 0, 0},
		{"prefetch64-workers8-1ms", 64, 8, time.Millisecond, 0, 0},
		{"prefetch1-workers1-noop", 1, 1, 0, 0, 0},
		{"prefetch1-workers1-1ms", 1, 1, time.Millisecond, 0, 0},
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
