package franz_test

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkPublish compares the Publisher with a raw kgo.Client under
// concurrency, as an HTTP service publishes (one message per request): 32
// goroutines each publish one 100 B record at a time and wait for it, on
// the same in-process kfake cluster (Kafka protocol, not Apache Kafka), in
// the same run, rounds interleaved (alternating which side goes first).
// The raw client has the Publisher's settings: idempotent, acks=all, the
// same partitioner, linger 0, franz-go's default compression; keys spread
// over 1,024 values, 4 partitions.
//
//	go test -run '^$' -bench BenchmarkPublish -benchtime 4x ./broker/franz/
//
// Each round publishes QUEUEKIT_BENCH_KAFKA_PUBLISHES records per side
// (default 20,000). raw-msgs/s and msgs/s are the raw client's and the
// Publisher's rates, x-raw their ratio; p50/p99 are per publish, in ms, over
// all rounds; min-x-raw is the lowest per-round ratio. Each round's figures
// are logged.
func BenchmarkPublish(b *testing.B) {
	c := pubCluster(b, map[string]int32{"bench-publish": 4})
	n := 20_000
	if v := os.Getenv("QUEUEKIT_BENCH_KAFKA_PUBLISHES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("QUEUEKIT_BENCH_KAFKA_PUBLISHES=%q: want a positive count", v)
		}
	}
	const publishers = 32
	body := bytes.Repeat([]byte("x"), 100)

	pub, err := franz.NewPublisher(franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "bench-publish"})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close(context.Background())
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("bench-publish"),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(pubFNV1a))))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()

	qk := func(ctx context.Context, key []byte) error {
		return pub.Publish(ctx, "", &broker.Message{Key: key, Body: body})
	}
	raw := func(ctx context.Context, key []byte) error {
		return cl.ProduceSync(ctx, &kgo.Record{Key: key, Value: body}).FirstErr()
	}
	// Warm both up: metadata, connections, producer ids.
	for _, f := range []func(context.Context, []byte) error{qk, raw} {
		if err := f(context.Background(), []byte("warm")); err != nil {
			b.Fatal(err)
		}
	}

	var rawLat, qkLat []time.Duration
	var rawTime, qkTime time.Duration
	minX := 0.0
	for i := range b.N {
		var rd, qd time.Duration
		var rl, ql []time.Duration
		if i%2 == 0 {
			rd, rl = pubRound(b, raw, publishers, n)
			qd, ql = pubRound(b, qk, publishers, n)
		} else {
			qd, ql = pubRound(b, qk, publishers, n)
			rd, rl = pubRound(b, raw, publishers, n)
		}
		x := rd.Seconds() / qd.Seconds()
		if i == 0 || x < minX {
			minX = x
		}
		b.Logf("round %d: raw kgo.Client %.0f msg/s p99 %.2f ms; queuekit Publisher %.0f msg/s p99 %.2f ms; x-raw %.2f",
			i+1, float64(n)/rd.Seconds(), pubMs(pubPercentile(rl, 0.99)), float64(n)/qd.Seconds(), pubMs(pubPercentile(ql, 0.99)), x)
		rawLat, qkLat = append(rawLat, rl...), append(qkLat, ql...)
		rawTime, qkTime = rawTime+rd, qkTime+qd
	}
	total := float64(n * b.N)
	b.ReportMetric(total/rawTime.Seconds(), "raw-msgs/s")
	b.ReportMetric(total/qkTime.Seconds(), "msgs/s")
	b.ReportMetric(rawTime.Seconds()/qkTime.Seconds(), "x-raw")
	b.ReportMetric(minX, "min-x-raw")
	b.ReportMetric(pubMs(pubPercentile(rawLat, 0.50)), "raw-p50-ms")
	b.ReportMetric(pubMs(pubPercentile(rawLat, 0.99)), "raw-p99-ms")
	b.ReportMetric(pubMs(pubPercentile(qkLat, 0.50)), "p50-ms")
	b.ReportMetric(pubMs(pubPercentile(qkLat, 0.99)), "p99-ms")
}

func pubFNV1a(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}

// pubRound publishes n records from publishers goroutines, one at a time
// each, and returns the time it took and every publish's latency.
func pubRound(b *testing.B, publish func(context.Context, []byte) error, publishers, n int) (time.Duration, []time.Duration) {
	var (
		next   atomic.Int64
		wg     sync.WaitGroup
		failed atomic.Pointer[error]
	)
	lats := make([][]time.Duration, publishers)
	start := time.Now()
	for g := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				key := []byte("k" + strconv.Itoa(int(i%1024)))
				t0 := time.Now()
				if err := publish(context.Background(), key); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lats[g] = append(lats[g], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	if err := failed.Load(); err != nil {
		b.Fatalf("publish: %v", *err)
	}
	return d, slices.Concat(lats...)
}

func pubPercentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func pubMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
