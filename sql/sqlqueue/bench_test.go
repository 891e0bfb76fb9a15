package sqlqueue_test

import (
	"context"
	"database/sql"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// BenchmarkThroughput consumes b.N messages, published beforehand (outside
// the timer), through consumer.New with 8 workers, prefetch 16 and a no-op
// handler, on the SQL queue (PostgreSQL, SQLite) and on the memory broker in
// the same run, and reports msg/s. Each message is one claim share, one
// DELETE and its commit on the SQL queue: the figures are the database's
// commit rate more than the adapter's.
func BenchmarkThroughput(b *testing.B) {
	const workers, prefetch = 8, 16
	b.Run("memory", func(b *testing.B) {
		br := memory.NewBroker()
		defer br.Close()
		throughput(b, workers, br.Publisher(), "bench", func() broker.Source {
			src, err := br.Source("bench", memory.SourceConfig{Prefetch: prefetch})
			if err != nil {
				b.Fatal(err)
			}
			return src
		})
	})
	for _, c := range []struct {
		name string
		open func(testing.TB) *sql.DB
	}{{"sqlqueue-postgres", sqltest.Postgres}, {"sqlqueue-sqlite", sqltest.SQLite}} {
		b.Run(c.name, func(b *testing.B) {
			db := c.open(b)
			// database/sql keeps 2 idle connections by default: with 8
			// workers settling at once, PostgreSQL would fork a backend
			// for most settlements (80 msg/s here). SQLite has its one.
			db.SetMaxIdleConns(32)
			if err := sqlqueue.Migrate(context.Background(), db, ""); err != nil {
				b.Fatal(err)
			}
			pub, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close(context.Background())
			throughput(b, workers, pub, "bench", func() broker.Source {
				src, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "bench", Prefetch: prefetch})
				if err != nil {
					b.Fatal(err)
				}
				return src
			})
		})
	}
}

func throughput(b *testing.B, workers int, pub broker.Publisher, queue string, newSource func() broker.Source) {
	ctx := context.Background()
	body := make([]byte, 128)
	batch := make([]*broker.Message, 0, 500)
	for i := 0; i < b.N; i += cap(batch) {
		batch = batch[:0]
		for j := i; j < min(i+cap(batch), b.N); j++ {
			batch = append(batch, &broker.Message{Body: body, Header: map[string]string{"n": "x"}})
		}
		if err := pub.Publish(ctx, queue, batch...); err != nil {
			b.Fatal(err)
		}
	}
	var handled atomic.Int64
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	n := int64(b.N)
	c, err := consumer.New(newSource(), consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		if handled.Add(1) == n {
			stop()
		}
		return nil
	}), consumer.WithConcurrency(workers), consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	<-runCtx.Done()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if got := handled.Load(); got < n {
		b.Fatalf("handled %d of %d", got, n)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msg/s")
}
