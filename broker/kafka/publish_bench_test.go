package kafka_test

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

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// BenchmarkPublish compares queuekit's Kafka Publisher with kafka-go's
// Writer under concurrency, as an HTTP service publishes (one message per
// request): 32 goroutines each publish one 100 B record at a time and wait
// for it, on the same in-process kfake cluster (Kafka protocol, not Apache
// Kafka), in the same run, rounds interleaved (alternating which side goes
// first). Both sides use the settings such a service would pick, the
// Publisher's defaults: RequiredAcks RequireAll (a nil return means every
// in-sync replica has it), BatchSize 100, BatchTimeout 5 ms (kafka-go's
// default of 1 s would make every lone publish take a second), the Hash
// balancer, no compression, keys spread over 1,024 values.
//
//	go test -run '^$' -bench BenchmarkPublish -benchtime 4x ./broker/kafka/
//
// Each round publishes QUEUEKIT_BENCH_KAFKA_PUBLISHES records per side
// (default 20,000). raw-msgs/s and msgs/s are the Writer's and the
// Publisher's rates, x-raw their ratio; p50/p99 are per publish, in ms,
// over all rounds; min-x-raw is the lowest per-round ratio. Each round's
// figures are logged.
func BenchmarkPublish(b *testing.B) {
	e := newEnv(b)
	topic := e.topic(b, "bench-publish")
	n := 20_000
	if v := os.Getenv("QUEUEKIT_BENCH_KAFKA_PUBLISHES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("QUEUEKIT_BENCH_KAFKA_PUBLISHES=%q: want a positive count", v)
		}
	}
	const (
		publishers   = 32
		batchSize    = 100
		batchTimeout = 5 * time.Millisecond
	)
	body := bytes.Repeat([]byte("x"), benchRecordBytes)

	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers: e.brokers, Topic: topic,
		BatchSize: batchSize, BatchTimeout: batchTimeout, RequiredAcks: kafkago.RequireAll,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close(context.Background())
	tr := &kafkago.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{
		Addr: kafkago.TCP(e.brokers...), Topic: topic, Transport: tr,
		Balancer:  &kafkago.Hash{},
		BatchSize: batchSize, BatchTimeout: batchTimeout, RequiredAcks: kafkago.RequireAll,
	}
	defer w.Close()

	qk := func(ctx context.Context, key []byte) error {
		return pub.Publish(ctx, "", &broker.Message{Key: key, Body: body})
	}
	raw := func(ctx context.Context, key []byte) error {
		return w.WriteMessages(ctx, kafkago.Message{Key: key, Value: body})
	}
	// Warm both up: metadata, connections.
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
			rd, rl = publishRound(b, raw, publishers, n)
			qd, ql = publishRound(b, qk, publishers, n)
		} else {
			qd, ql = publishRound(b, qk, publishers, n)
			rd, rl = publishRound(b, raw, publishers, n)
		}
		x := rd.Seconds() / qd.Seconds()
		if i == 0 || x < minX {
			minX = x
		}
		b.Logf("round %d: kafka-go Writer %.0f msg/s p99 %.2f ms; queuekit Publisher %.0f msg/s p99 %.2f ms; x-raw %.2f",
			i+1, float64(n)/rd.Seconds(), ms(percentile(rl, 0.99)), float64(n)/qd.Seconds(), ms(percentile(ql, 0.99)), x)
		rawLat, qkLat = append(rawLat, rl...), append(qkLat, ql...)
		rawTime, qkTime = rawTime+rd, qkTime+qd
	}
	total := float64(n * b.N)
	b.ReportMetric(total/rawTime.Seconds(), "raw-msgs/s")
	b.ReportMetric(total/qkTime.Seconds(), "msgs/s")
	b.ReportMetric(rawTime.Seconds()/qkTime.Seconds(), "x-raw")
	b.ReportMetric(minX, "min-x-raw")
	b.ReportMetric(ms(percentile(rawLat, 0.50)), "raw-p50-ms")
	b.ReportMetric(ms(percentile(rawLat, 0.99)), "raw-p99-ms")
	b.ReportMetric(ms(percentile(qkLat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(qkLat, 0.99)), "p99-ms")
}

// publishRound publishes n records from publishers goroutines, one at a
// time each, and returns the time it took and every publish's latency.
func publishRound(b *testing.B, publish func(context.Context, []byte) error, publishers, n int) (time.Duration, []time.Duration) {
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

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
