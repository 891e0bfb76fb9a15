package kafka_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// benchBatchWork simulates a handler call on n records that writes them to
// a database: a round trip of 1 ms (slept: a round trip is a wait, not CPU,
// and spinning for it would measure how many spinning workers 2 shared
// cores hold) and 10 µs of work per record (spun: it is CPU, and a 10 µs
// sleep lasts far longer, by timer granularity). As consumer's
// BenchmarkBatchHandler.
func benchBatchWork(n int) {
	time.Sleep(time.Millisecond)
	for start, d := time.Now(), time.Duration(n)*10*time.Microsecond; time.Since(start) < d; {
	}
}

// BenchmarkBatchHandler compares, on the same in-process kfake cluster
// (Kafka protocol) and in the same run, a batch handler (consumer.NewBatch,
// batches of up to 100 records, MaxWait 5 ms, over Source.ReceiveBatch)
// with a single-record handler (consumer.New), both ByPartition with 4
// workers on a 4-partition topic, on a handler that costs 1 ms per call +
// 10 µs per record (benchBatchWork). One op consumes a fresh topic of 2,000
// records on each side, timed from the first handler call to the last
// record handled. It reports single-msgs/s, batch-msgs/s and x-single
// (batch over single).
//
//	go test -run '^$' -bench BenchmarkBatchHandler -benchtime 2x ./broker/kafka/
func BenchmarkBatchHandler(b *testing.B) {
	e := newEnv(b)
	const n, conc, size = 2000, 4, 100
	var single, batch time.Duration
	for i := range b.N {
		b.StopTimer()
		ts := e.topic(b, "bench-single")
		tb := e.topic(b, "bench-batch")
		e.produce(b, ts, 0, n, func(i int) string { return "k" + strconv.Itoa(i%64) })
		e.produce(b, tb, 0, n, func(i int) string { return "k" + strconv.Itoa(i%64) })
		b.StartTimer()
		single += benchKafkaSide(b, e, ts, "g-bench-single-"+strconv.Itoa(i), n, conc, 0)
		batch += benchKafkaSide(b, e, tb, "g-bench-batch-"+strconv.Itoa(i), n, conc, size)
	}
	total := float64(b.N * n)
	sr, br := total/single.Seconds(), total/batch.Seconds()
	b.ReportMetric(sr, "single-msgs/s")
	b.ReportMetric(br, "batch-msgs/s")
	b.ReportMetric(br/sr, "x-single")
	b.ReportMetric(0, "ns/op")
}

func benchKafkaSide(b *testing.B, e *env, topic, group string, n, conc, size int) time.Duration {
	b.Helper()
	var (
		handled    atomic.Int64
		firstOnce  sync.Once
		first, end time.Time
		done       = make(chan struct{})
	)
	mark := func(k int) {
		firstOnce.Do(func() { first = time.Now() })
		if handled.Add(int64(k)) == int64(n) {
			end = time.Now()
			close(done)
		}
	}
	cfg := e.config(topic, group)
	src := newSource(b, cfg)
	var (
		c   *consumer.Consumer
		err error
	)
	opts := []consumer.Option{consumer.WithConcurrency(conc), consumer.WithLogger(quietLogger())}
	if size == 0 {
		c, err = consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			benchBatchWork(1)
			mark(1)
			return nil
		}), opts...)
	} else {
		c, err = consumer.NewBatch(src, consumer.BatchHandlerFunc(func(ctx context.Context, ms []*broker.Message) error {
			benchBatchWork(len(ms))
			mark(len(ms))
			return nil
		}), consumer.Batch{MaxSize: size, MaxWait: 5 * time.Millisecond}, opts...)
	}
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("%s: %d of %d records handled after 2 minutes", topic, handled.Load(), n)
	}
	cancel()
	if err := <-ran; err != nil {
		b.Fatal(err)
	}
	return end.Sub(first)
}
