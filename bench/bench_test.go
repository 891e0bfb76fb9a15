package bench

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

const (
	workers  = 8   // consumer.WithConcurrency
	prefetch = 16  // every source's prefetch: twice the workers
	bodySize = 128 // bytes per message body
	pubBatch = 500 // messages per Publish (or outbox transaction) when preparing
	// relayBatch is the relay's default Batch, and the batch size of the
	// direct publishing it is compared with.
	relayBatch = 100
	// limit bounds every wait: a benchmark that stalls fails instead of
	// hanging until go test's timeout.
	limit = 10 * time.Minute
)

var quiet = slog.New(slog.DiscardHandler)

// newMessages returns n messages alike: a body of bodySize bytes and one
// header, with key as their routing key (nil for every broker but
// RabbitMQ, whose default exchange routes by key).
func newMessages(n int, key []byte) []*broker.Message {
	body := make([]byte, bodySize)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: key, Body: body, Header: map[string]string{"seq": fmt.Sprint(i)}}
	}
	return msgs
}

// A target is a broker set up for one run: a fresh destination, a
// publisher to it, and a way to make a source of it.
type target struct {
	pub       broker.Publisher
	dest      string // the Publish destination
	key       []byte // the messages' key (RabbitMQ: the queue)
	newSource func(tb testing.TB) broker.Source
	cpu       func() time.Duration // the broker process's CPU so far; nil if unknown
}

func memoryTarget(tb testing.TB) target {
	b := memory.NewBroker()
	tb.Cleanup(func() { b.Close() })
	return target{
		pub:  b.Publisher(),
		dest: "bench",
		newSource: func(tb testing.TB) broker.Source {
			src, err := b.Source("bench", memory.SourceConfig{Prefetch: prefetch})
			if err != nil {
				tb.Fatal(err)
			}
			return src
		},
	}
}

func sqlqueueTarget(tb testing.TB, db *sql.DB) target {
	if err := sqlqueue.Migrate(context.Background(), db, ""); err != nil {
		tb.Fatal(err)
	}
	pub, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pub.Close(context.Background()) })
	return target{
		pub:  pub,
		dest: "bench",
		newSource: func(tb testing.TB) broker.Source {
			src, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "bench", Prefetch: prefetch, Logger: quiet})
			if err != nil {
				tb.Fatal(err)
			}
			return src
		},
	}
}

func rabbitTarget(tb testing.TB) target {
	url := amqpURL(tb)
	d := rabbitmq.Dialer{URL: url}
	queue := "bench-" + randomHex(4) // deleted with the vhost
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rabbitmq.DeclareTopology(ctx, d, queue, rabbitmq.Topology{}); err != nil {
		tb.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: d, Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pub.Close(context.Background()) })
	return target{
		pub:  pub,
		dest: "", // the default exchange: the key is the queue
		key:  []byte(queue),
		newSource: func(tb testing.TB) broker.Source {
			src, err := rabbitmq.NewSource(rabbitmq.Config{Dialer: d, Queue: queue, Prefetch: prefetch, Logger: quiet})
			if err != nil {
				tb.Fatal(err)
			}
			return src
		},
		cpu: brokerCPU(url),
	}
}

// publishAll publishes msgs to t's destination in batches of pubBatch.
func publishAll(tb testing.TB, t target, msgs []*broker.Message, batch int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for i := 0; i < len(msgs); i += batch {
		if err := t.pub.Publish(ctx, t.dest, msgs[i:min(i+batch, len(msgs))]...); err != nil {
			tb.Fatal(err)
		}
	}
}

// timer is the part of testing.B a measurement drives; TestSmoke passes
// one that does nothing.
type timer interface {
	ResetTimer()
	StartTimer()
	StopTimer()
}

type noTimer struct{}

func (noTimer) ResetTimer() {}
func (noTimer) StartTimer() {}
func (noTimer) StopTimer()  {}

// result is what one measurement found.
type result struct {
	n         int
	elapsed   time.Duration
	clientCPU time.Duration // this process's CPU during the timed part
	brokerCPU time.Duration // the broker process's, when known
	idleRate  float64       // the broker's CPU share just before (s/s), when known
	hasBroker bool
}

func (r result) report(b *testing.B) {
	b.ReportMetric(float64(r.n)/r.elapsed.Seconds(), "msg/s")
	if r.clientCPU > 0 {
		b.ReportMetric(float64(r.clientCPU.Microseconds())/float64(r.n), "client-cpu-µs/msg")
	}
	if r.hasBroker {
		b.ReportMetric(float64(r.brokerCPU.Microseconds())/float64(r.n), "broker-cpu-µs/msg")
		b.ReportMetric(r.idleRate*1000, "broker-idle-cpu-ms/s")
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// consume pre-publishes n messages to t, then consumes them with
// consumer.New(source, no-op, WithConcurrency(workers)); the timed part runs
// from Run's start until the runtime acked the n-th message.
func consume(tb testing.TB, tm timer, t target, n int) result {
	tb.Helper()
	publishAll(tb, t, newMessages(n, t.key), pubBatch)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var acked atomic.Int64
	var end atomic.Int64 // UnixNano of the n-th ack
	done := make(chan struct{})
	c, err := consumer.New(t.newSource(tb),
		consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithConcurrency(workers),
		consumer.WithLogger(quiet),
		consumer.WithObserver(func(_ context.Context, _ *broker.Message, s consumer.Settlement, err error) {
			if s == consumer.SettledAck && err == nil && acked.Add(1) == int64(n) {
				end.Store(time.Now().UnixNano())
				close(done)
			}
		}))
	if err != nil {
		tb.Fatal(err)
	}

	var idle float64
	if _, bench := tm.(*testing.B); bench && t.cpu != nil {
		// The broker's own load just before: what others make it do.
		c0, t0 := t.cpu(), time.Now()
		time.Sleep(500 * time.Millisecond)
		idle = (t.cpu() - c0).Seconds() / time.Since(t0).Seconds()
	}

	var broker0 time.Duration
	if t.cpu != nil {
		broker0 = t.cpu()
	}
	client0 := processCPU()
	tm.ResetTimer()
	tm.StartTimer()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	select {
	case <-done:
	case err := <-runErr:
		tb.Fatalf("Run returned %v after %d of %d acks", err, acked.Load(), n)
	case <-time.After(limit):
		tb.Fatalf("%d of %d acked after %v", acked.Load(), n, limit)
	}
	tm.StopTimer()
	r := result{n: n, elapsed: time.Unix(0, end.Load()).Sub(start), clientCPU: processCPU() - client0}
	if t.cpu != nil {
		r.brokerCPU, r.idleRate, r.hasBroker = t.cpu()-broker0, idle, true
	}
	stop()
	if err := <-runErr; err != nil {
		tb.Fatal(err)
	}
	if got := acked.Load(); got != int64(n) {
		tb.Fatalf("acked %d, want %d", got, n)
	}
	return r
}

// BenchmarkThroughput compares the SQL queue with the memory broker and
// RabbitMQ: b.N messages consumed by 8 workers with a no-op handler (see
// the package documentation).
func BenchmarkThroughput(b *testing.B) {
	for _, c := range []struct {
		name string
		make func(testing.TB) target
	}{
		{"memory", memoryTarget},
		{"sqlqueue-sqlite", func(tb testing.TB) target { return sqlqueueTarget(tb, openSQLite(tb)) }},
		{"sqlqueue-postgres", func(tb testing.TB) target { return sqlqueueTarget(tb, openPostgres(tb)) }},
		{"rabbitmq", rabbitTarget},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.StopTimer()
			consume(b, b, c.make(b), b.N).report(b)
		})
	}
}

// countingPublisher publishes through inner and closes done once n
// messages were published.
type countingPublisher struct {
	inner broker.Publisher
	n     int64
	sent  atomic.Int64
	once  sync.Once
	done  chan struct{}
}

func (p *countingPublisher) Publish(ctx context.Context, dest string, msgs ...*broker.Message) error {
	if err := p.inner.Publish(ctx, dest, msgs...); err != nil {
		return err
	}
	if p.sent.Add(int64(len(msgs))) >= p.n {
		p.once.Do(func() { close(p.done) })
	}
	return nil
}

func (p *countingPublisher) Close(ctx context.Context) error { return p.inner.Close(ctx) }

// relay writes n rows to an outbox in db (outside the timer), then times
// a relay with the default configuration publishing them to the memory
// broker, until its queue holds all n.
func relay(tb testing.TB, tm timer, db *sql.DB, n int) result {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	o, err := outbox.New(db, outbox.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := o.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	msgs := newMessages(n, nil)
	for i := 0; i < n; i += pubBatch {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			tb.Fatal(err)
		}
		if err := o.Write(ctx, tx, "bench", msgs[i:min(i+pubBatch, n)]...); err != nil {
			tx.Rollback()
			tb.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			tb.Fatal(err)
		}
	}
	mb := memory.NewBroker()
	defer mb.Close()
	pub := &countingPublisher{inner: mb.Publisher(), n: int64(n), done: make(chan struct{})}
	r, err := o.Relay(pub, outbox.RelayConfig{Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	tm.ResetTimer()
	tm.StartTimer()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(runCtx) }()
	select {
	case <-pub.done:
	case <-ctx.Done():
		tb.Fatalf("the relay published %d of %d (%s)", pub.sent.Load(), n, r.Stats().LastError)
	}
	elapsed := time.Since(start)
	tm.StopTimer()
	stop()
	if err := <-runErr; err != nil {
		tb.Fatal(err)
	}
	if got := mb.Stats("bench").Ready; got != n {
		tb.Fatalf("queue holds %d messages, want %d", got, n)
	}
	return result{n: n, elapsed: elapsed}
}

// direct times publishing n messages like relay's straight to the memory
// broker, in batches of relayBatch.
func direct(tb testing.TB, tm timer, n int) result {
	tb.Helper()
	mb := memory.NewBroker()
	defer mb.Close()
	t := target{pub: mb.Publisher(), dest: "bench"}
	msgs := newMessages(n, nil)
	tm.ResetTimer()
	tm.StartTimer()
	start := time.Now()
	publishAll(tb, t, msgs, relayBatch)
	elapsed := time.Since(start)
	tm.StopTimer()
	if got := mb.Stats("bench").Ready; got != n {
		tb.Fatalf("queue holds %d messages, want %d", got, n)
	}
	return result{n: n, elapsed: elapsed}
}

// BenchmarkRelay compares the outbox relay on PostgreSQL and SQLite with
// publishing the same messages directly (see the package documentation).
func BenchmarkRelay(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		b.StopTimer()
		direct(b, b, b.N).report(b)
	})
	b.Run("postgres", func(b *testing.B) {
		b.StopTimer()
		relay(b, b, openPostgres(b), b.N).report(b)
	})
	b.Run("sqlite", func(b *testing.B) {
		b.StopTimer()
		relay(b, b, openSQLite(b), b.N).report(b)
	})
}

// TestSmoke runs every setup of the benchmarks once, with 10 messages, so
// that go test without -bench checks they work.
func TestSmoke(t *testing.T) {
	const n = 10
	for _, c := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"throughput/memory", func(t *testing.T) { consume(t, noTimer{}, memoryTarget(t), n) }},
		{"throughput/sqlqueue-sqlite", func(t *testing.T) { consume(t, noTimer{}, sqlqueueTarget(t, openSQLite(t)), n) }},
		{"throughput/sqlqueue-postgres", func(t *testing.T) { consume(t, noTimer{}, sqlqueueTarget(t, openPostgres(t)), n) }},
		{"throughput/rabbitmq", func(t *testing.T) {
			r := consume(t, noTimer{}, rabbitTarget(t), n)
			if !r.hasBroker {
				t.Log("no local beam.smp process: broker CPU not measured")
			}
		}},
		{"relay/direct", func(t *testing.T) { direct(t, noTimer{}, n) }},
		{"relay/postgres", func(t *testing.T) { relay(t, noTimer{}, openPostgres(t), n) }},
		{"relay/sqlite", func(t *testing.T) { relay(t, noTimer{}, openSQLite(t), n) }},
	} {
		t.Run(c.name, c.run)
	}
}
