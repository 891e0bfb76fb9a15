package consumer_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// Issue 13, "Batch": the cost model of a handler that writes to a database,
// per call and per message.
const (
	benchCallCost = time.Millisecond      // a round trip: slept
	benchMsgCost  = 10 * time.Microsecond // the work on one row: spun
)

// benchWork simulates a handler call on n messages: a round trip of
// benchCallCost and benchMsgCost of work per message. The round trip is a
// sleep, as a database round trip is a wait, not CPU: spinning for it would
// measure how many spinning workers the cores hold (2, shared, on the CI
// machine), not what batching saves. The work per message is a spin: it
// is CPU (encoding a row), and a sleep of 10 µs lasts far longer (timer
// granularity) and would make every message look as costly as a call.
func benchWork(n int) {
	time.Sleep(benchCallCost)
	spin(time.Duration(n) * benchMsgCost)
}

func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// BenchmarkBatchHandler compares, on broker/memory in the same run, a batch
// handler (consumer.NewBatch, batches of up to 100, MaxWait 5 ms) with a
// single-message handler (consumer.New), each with 4 workers, on a handler
// that costs 1 ms per call + 10 µs per message (see benchWork). One op
// consumes benchBatchMessages messages on each side. It reports
// single-msgs/s, batch-msgs/s and x-single (batch over single).
func BenchmarkBatchHandler(b *testing.B) {
	const conc, size = 4, 100
	var single, batch time.Duration
	for range b.N {
		single += benchMemorySide(b, conc, 0)
		batch += benchMemorySide(b, conc, size)
	}
	n := float64(b.N * benchBatchMessages)
	sr, br := n/single.Seconds(), n/batch.Seconds()
	b.ReportMetric(sr, "single-msgs/s")
	b.ReportMetric(br, "batch-msgs/s")
	b.ReportMetric(br/sr, "x-single")
	b.ReportMetric(0, "ns/op")
}

const benchBatchMessages = 2000

// benchMemorySide consumes benchBatchMessages messages from a fresh memory
// broker with conc workers, batches of size (0: a single-message handler),
// and returns the time from the first handler call to the last message
// handled.
func benchMemorySide(b *testing.B, conc, size int) time.Duration {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	mb := memory.NewBroker()
	msgs := make([]*broker.Message, benchBatchMessages)
	for i := range msgs {
		msgs[i] = &broker.Message{Body: []byte("row")}
	}
	if err := mb.Publish(context.Background(), "q", msgs...); err != nil {
		b.Fatal(err)
	}
	prefetch := 2 * conc
	if size > 0 {
		prefetch = size * conc
	}
	src, err := mb.Source("q", memory.SourceConfig{Prefetch: prefetch})
	if err != nil {
		b.Fatal(err)
	}
	var (
		handled    atomic.Int64
		firstOnce  sync.Once
		first, end time.Time
		done       = make(chan struct{})
	)
	mark := func(n int) {
		firstOnce.Do(func() { first = time.Now() })
		if handled.Add(int64(n)) == benchBatchMessages {
			end = time.Now()
			close(done)
		}
	}
	var c *consumer.Consumer
	if size == 0 {
		c, err = consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			benchWork(1)
			mark(1)
			return nil
		}), consumer.WithConcurrency(conc), consumer.WithLogger(quiet))
	} else {
		c, err = consumer.NewBatch(src, consumer.BatchHandlerFunc(func(ctx context.Context, ms []*broker.Message) error {
			benchWork(len(ms))
			mark(len(ms))
			return nil
		}), consumer.Batch{MaxSize: size, MaxWait: 5 * time.Millisecond}, consumer.WithConcurrency(conc), consumer.WithLogger(quiet))
	}
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	<-done
	cancel()
	if err := <-ran; err != nil {
		b.Fatal(err)
	}
	return end.Sub(first)
}
