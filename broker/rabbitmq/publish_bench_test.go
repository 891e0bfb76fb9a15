package rabbitmq

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// TestPublishBenchmarkAgainstRawClient measures publishing under
// concurrency, as an HTTP service does (one publish per request): G
// goroutines (default 32) each publish persistent 256-byte messages one at
// a time and wait for each confirm, through
//
//   - raw: one amqp091-go channel in confirm mode shared by all,
//     PublishWithDeferredConfirmWithContext then WaitContext (pipelined:
//     the goroutines' publishes are in flight together);
//   - qk: one queuekit Publisher, Publish(ctx, "", msg) (mandatory, the
//     default);
//   - qk-unroutable-ok: the same with AllowUnroutable (not mandatory, as
//     the raw side).
//
// in the same run, rounds interleaved with the sides rotated, each run on a
// queue of its own. It reports msg/s, p50/p99 per publish, client and broker
// (beam.smp) CPU per message, and ratios to raw. Run it with:
//
//	QUEUEKIT_BENCH=1 go test -run TestPublishBenchmarkAgainstRawClient -v ./broker/rabbitmq/
//
// QUEUEKIT_BENCH_MESSAGES (default 20,000 per side), QUEUEKIT_BENCH_ROUNDS
// (default 4), QUEUEKIT_BENCH_PUBLISHERS (default 32), QUEUEKIT_BENCH_SIDES.
func TestPublishBenchmarkAgainstRawClient(t *testing.T) {
	if os.Getenv("QUEUEKIT_BENCH") != "1" {
		t.Skip("set QUEUEKIT_BENCH=1 to run the comparison with the raw client")
	}
	needBroker(t)
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	rounds := 4
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	g := 32
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_PUBLISHERS")); err == nil && v > 0 {
		g = v
	}
	sides := []string{"raw", "qk", "qk-unroutable-ok"}
	if v := os.Getenv("QUEUEKIT_BENCH_SIDES"); v != "" {
		sides = strings.Split(v, ",")
	}
	brokerCPU := brokerCPUReader()
	if brokerCPU == nil {
		brokerCPU = func() time.Duration { return 0 }
	}
	per := n / rounds
	type total struct {
		msgs               int
		elapsed, cpu, bcpu time.Duration
		lat                []time.Duration
	}
	sum := map[string]*total{}
	for _, s := range sides {
		sum[s] = &total{}
	}
	perRound := map[string][]float64{}
	for r := 0; r < rounds; r++ {
		el := map[string]time.Duration{}
		for j := range sides {
			side := sides[(r+j)%len(sides)]
			q := uniqueQueue(t)
			declareQueue(t, q, Classic)
			b0 := brokerCPU()
			elapsed, cpu, lat := runPublishers(t, side, q, g, per)
			tot := sum[side]
			tot.msgs += per
			tot.elapsed += elapsed
			tot.cpu += cpu
			tot.bcpu += brokerCPU() - b0
			tot.lat = append(tot.lat, lat...)
			el[side] = elapsed
			deleteQueues(q)
		}
		for _, s := range sides {
			perRound[s] = append(perRound[s], float64(el["raw"])/float64(el[s]))
		}
	}
	t.Logf("%d goroutines publishing persistent 256 B messages, each waiting for its confirm (%d rounds, %d messages per side):", g, rounds, n)
	t.Logf("  %-16s %8s %6s %9s %9s %6s %11s %11s %6s   %s", "side", "msg/s", "ratio", "p50", "p99", "ratio",
		"client/msg", "broker/msg", "ratio", "per-round throughput ratios (median)")
	pct := func(s string, p float64) time.Duration {
		l := slices.Clone(sum[s].lat)
		slices.Sort(l)
		return l[min(len(l)-1, int(float64(len(l))*p))]
	}
	for _, s := range sides {
		rate := func(s string) float64 { return float64(sum[s].msgs) / sum[s].elapsed.Seconds() }
		bper := func(s string) time.Duration { return sum[s].bcpu / time.Duration(sum[s].msgs) }
		bratio := 0.0
		if bper("raw") > 0 {
			bratio = float64(bper(s)) / float64(bper("raw"))
		}
		rs := ""
		for _, r := range perRound[s] {
			rs += fmt.Sprintf(" %.2f", r)
		}
		t.Logf("  %-16s %8.0f %6.3f %9v %9v %6.3f %11v %11v %6.3f  %s (%.3f)", s, rate(s), rate(s)/rate("raw"),
			pct(s, 0.5).Round(time.Microsecond), pct(s, 0.99).Round(time.Microsecond),
			float64(pct(s, 0.99))/float64(pct("raw", 0.99)),
			sum[s].cpu/time.Duration(sum[s].msgs), bper(s), bratio, rs, median(perRound[s]))
	}
}

// runPublishers publishes n messages to q from g goroutines through side,
// and returns the elapsed time, the client's CPU time and every publish's
// latency.
func runPublishers(t *testing.T, side, q string, g, n int) (elapsed, cpu time.Duration, lat []time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	body := make([]byte, 256)
	var publish func(ctx context.Context, id string) error
	var cleanup func()
	switch side {
	case "raw":
		conn, err := amqp.Dial(amqpURL())
		if err != nil {
			t.Fatal(err)
		}
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		publish = func(ctx context.Context, id string) error {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: id, Body: body})
			if err != nil {
				return err
			}
			ok, err := dc.WaitContext(ctx)
			if err == nil && !ok {
				err = ErrNacked
			}
			return err
		}
		cleanup = func() { _ = conn.Close() }
	case "qk", "qk-unroutable-ok":
		pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger(),
			AllowUnroutable: side == "qk-unroutable-ok"})
		if err != nil {
			t.Fatal(err)
		}
		publish = func(ctx context.Context, id string) error {
			return pub.Publish(ctx, "", &broker.Message{ID: id, Key: []byte(q), Body: body})
		}
		cleanup = func() { _ = pub.Close(context.Background()) }
	default:
		t.Fatalf("unknown side %q", side)
	}
	defer cleanup()
	if err := publish(ctx, "warm-up"); err != nil { // connect outside the timing
		t.Fatal(err)
	}
	lats := make([][]time.Duration, g)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	cpu0, start := cpuNow(t), time.Now()
	for w := 0; w < g; w++ {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) || failed.Load() != nil {
					return
				}
				t0 := time.Now()
				if err := publish(ctx, strconv.FormatInt(i, 10)); err != nil {
					failed.Store(&err)
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed, cpu = time.Since(start), cpuNow(t)-cpu0
	if err := failed.Load(); err != nil {
		t.Fatalf("%s: publish: %v", side, *err)
	}
	for _, l := range lats {
		lat = append(lat, l...)
	}
	return elapsed, cpu, lat
}
