package inbox_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// outcome is what a run on the memory broker left.
type outcome struct {
	stats       memory.QueueStats
	acked, dead int
	deadLetters []broker.Message
	elapsed     time.Duration
}

// consume publishes msgs to a memory broker queue and consumes them with h
// and workers workers until every message is acked or dead-lettered.
func consume(t *testing.T, h consumer.Handler, msgs []*broker.Message, workers int, opts ...consumer.Option) outcome {
	t.Helper()
	ctx := context.Background()
	b := memory.NewBroker()
	defer b.Close()
	const queue = "orders"
	for start := 0; start < len(msgs); start += 1000 {
		if err := b.Publish(ctx, queue, msgs[start:min(start+1000, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	src, err := b.Source(queue, memory.SourceConfig{Prefetch: workers})
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]consumer.Option{consumer.WithConcurrency(workers), consumer.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	c, err := consumer.New(src, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	start := time.Now()
	go func() { ran <- c.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		s := b.Stats(queue)
		if s.Acked+s.DeadLettered >= len(msgs) {
			break
		}
		if time.Now().After(deadline) {
			stop()
			<-ran
			t.Fatalf("not settled within 10 minutes: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	stop()
	if err := <-ran; err != nil {
		t.Errorf("consumer Run = %v", err)
	}
	s := b.Stats(queue)
	return outcome{stats: s, acked: s.Acked, dead: s.DeadLettered, deadLetters: b.DeadLetters(queue), elapsed: elapsed}
}

// splitmix64 is a deterministic hash, for failures that look random but are
// the same in every run.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

type ranKey struct{}

var errInjected = errors.New("injected failure")

// The must-show of issue 12: 10,000 messages, each published twice, 8
// workers, handlers that fail 10% of their runs after writing their effect:
// every effect is applied exactly once and every delivery is acked in the
// end, none dead-lettered. The full size runs with QUEUEKIT_FULL=1 (minutes
// under -race on 2 cores); by default, and with -short, 1,000 messages × 2
// check the same properties within CI's time.
func TestEffectExactlyOnce10000x2(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		t.Parallel() // the two databases at once: CI's time
		messages := 1000
		if os.Getenv("QUEUEKIT_FULL") == "1" && !testing.Short() {
			messages = 10000
		}
		const workers = 8
		if d == sqldb.Postgres {
			db.SetMaxOpenConns(workers + 2)
		}
		createEffects(t, db)
		ib := newInbox(t, db, inbox.Config{})

		runs := make([]atomic.Int32, messages)
		var failures, commits, skipped atomic.Int64
		handler := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			*ctx.Value(ranKey{}).(*bool) = true
			idx, err := strconv.Atoi(string(m.Body))
			if err != nil {
				return err
			}
			n := runs[idx].Add(1)
			if err := increment(ctx, string(m.Body)); err != nil {
				return err
			}
			// Fail one run in ten, after the effect was written: it must be
			// rolled back with the key.
			if splitmix64(uint64(idx)<<8|uint64(n))%10 == 0 {
				failures.Add(1)
				return errInjected
			}
			return nil
		})
		// count tells deliveries the inbox acked without running the
		// handler (duplicates) from those it ran.
		count := func(next consumer.Handler) consumer.Handler {
			return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				ran := new(bool)
				err := next.Handle(context.WithValue(ctx, ranKey{}, ran), m)
				switch {
				case err == nil && *ran:
					commits.Add(1)
				case err == nil:
					skipped.Add(1)
				}
				return err
			})
		}
		h := consumer.Chain(count, middleware.Recover(), ib.Middleware())(handler)

		// Half the duplicates right behind their original (handled at the
		// same time by two workers), half at the end of the queue.
		var msgs, late []*broker.Message
		for i := range messages {
			key := strconv.Itoa(i)
			mk := func() *broker.Message {
				return &broker.Message{Body: []byte(key), Header: map[string]string{broker.HeaderIdempotencyKey: "order-" + key}}
			}
			msgs = append(msgs, mk())
			if i%2 == 0 {
				msgs = append(msgs, mk())
			} else {
				late = append(late, mk())
			}
		}
		msgs = append(msgs, late...)

		out := consume(t, h, msgs, workers, consumer.WithMaxDeliveries(20))

		t.Logf("%s: %d messages × 2 deliveries, %d workers: %d handler runs committed, %d duplicates acked without running, %d injected failures rolled back, %d requeues, %d dead letters, in %v (%.0f deliveries/s)",
			d, messages, workers, commits.Load(), skipped.Load(), failures.Load(), out.stats.Requeued, out.dead, out.elapsed.Round(time.Millisecond), float64(2*messages)/out.elapsed.Seconds())

		if out.dead != 0 {
			t.Errorf("%d dead letters; want 0: %v", out.dead, out.deadLetters[0].Header)
		}
		if s := out.stats; s.Acked != 2*messages || s.Ready+s.Unacked+s.Delayed != 0 {
			t.Errorf("queue: acked %d, left %d ready, %d unacked, %d delayed; want %d acked, none left", s.Acked, s.Ready, s.Unacked, s.Delayed, 2*messages)
		}
		if commits.Load() != int64(messages) || skipped.Load() != int64(messages) {
			t.Errorf("commits %d, duplicates skipped %d; want %d each", commits.Load(), skipped.Load(), messages)
		}
		if failures.Load() == 0 {
			t.Error("no failure was injected")
		}
		var rows, sum, notOne int
		if err := db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(CASE WHEN n <> 1 THEN 1 ELSE 0 END), 0) FROM effects`).Scan(&rows, &sum, &notOne); err != nil {
			t.Fatal(err)
		}
		if rows != messages || sum != messages || notOne != 0 {
			t.Errorf("effects: %d rows, sum %d, %d not applied exactly once; want %d rows each applied once", rows, sum, notOne, messages)
		}
		if got := inboxRows(t, db); got != messages {
			t.Errorf("inbox keys = %d; want %d", got, messages)
		}
	})
}

// Lease mode through the consumer: each message published twice, 8 workers,
// 10% of runs failing before their (external) effect: every effect happens
// once, with Busy Wait and Requeue alike, and every delivery is acked.
func TestLeaseModeThroughTheConsumer(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		// 1,000 messages with QUEUEKIT_FULL=1; fewer by default, for CI's
		// time under -race.
		t.Parallel()
		messages, workers := 300, 8
		if os.Getenv("QUEUEKIT_FULL") == "1" && !testing.Short() {
			messages = 1000
		}
		if d == sqldb.Postgres {
			db.SetMaxOpenConns(2*workers + 2)
		}
		for _, busy := range []inbox.Busy{inbox.Wait, inbox.Requeue} {
			t.Run(busy.String(), func(t *testing.T) {
				ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, Busy: busy, Scope: busy.String(), LeaseTime: 2 * time.Second})
				runs := make([]atomic.Int32, messages)
				effects := make([]atomic.Int32, messages)
				var failures atomic.Int64
				h := consumer.Chain(middleware.Recover(), ib.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					idx, err := strconv.Atoi(string(m.Body))
					if err != nil {
						return err
					}
					n := runs[idx].Add(1)
					if splitmix64(uint64(idx)<<8|uint64(n))%10 == 0 {
						failures.Add(1)
						return errInjected
					}
					effects[idx].Add(1)
					return nil
				}))
				var msgs []*broker.Message
				for i := range messages {
					key := strconv.Itoa(i)
					for range 2 {
						msgs = append(msgs, &broker.Message{Body: []byte(key), Header: map[string]string{broker.HeaderIdempotencyKey: "order-" + key}})
					}
				}
				out := consume(t, h, msgs, workers, consumer.WithMaxDeliveries(20))
				t.Logf("%s/%s: %d messages × 2, %d failures, %d requeues, %d dead letters, in %v", d, busy, messages, failures.Load(), out.stats.Requeued, out.dead, out.elapsed.Round(time.Millisecond))
				if out.dead != 0 || out.acked != 2*messages {
					t.Errorf("acked %d, dead letters %d; want %d, 0", out.acked, out.dead, 2*messages)
				}
				for i := range messages {
					if got := effects[i].Load(); got != 1 {
						t.Errorf("message %d: effect applied %d times; want 1", i, got)
					}
				}
			})
		}
	})
}
