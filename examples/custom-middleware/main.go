// Command custom-middleware shows how to write your own consumer.Middleware
// and where it goes among the standard ones. The middleware is Dedup
// (dedup.go): it skips messages whose idempotency key — a header the
// producer sets, never the adapter's message ID — was already processed, so
// that a payment is charged once even though the broker delivers it more than
// once: because a producer published it again, or because an ack was lost
// with a dropped connection and the broker redelivered it.
//
//	go run ./examples/custom-middleware
//
// It runs on the embedded in-memory broker, with no set-up, and prints the
// consumer's log (log/slog) and what the card gateway charged.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// Payment is the payload of the "payments" queue.
type Payment struct {
	Card        string `json:"card"`
	AmountCents int    `json:"amount_cents"`
}

// published is what the producers sent, in order. The producer names each
// payment with an idempotency key, sent in the IdempotencyKeyHeader header: a
// producer that publishes again after a timeout sends the same key. It sets no
// message ID, so the broker makes one up per publish ("payments-1", ...): the
// two publishes of p-1 have different IDs, and only the key tells that they
// are one payment.
var published = []struct{ key, body, note string }{
	{"p-1", `{"card":"4242","amount_cents":1000}`, ""},
	{"p-2", `{"card":"5555","amount_cents":2500}`, ""},
	{"p-1", `{"card":"4242","amount_cents":1000}`, "published again by a producer that timed out"},
	{"p-3", `{"card":"4000","amount_cents":750}`, "the gateway fails twice, then succeeds"},
	{"p-4", `{"card":"3782","amount_cents":1200}`, "the connection drops after the charge, before the ack"},
	{"p-2", `{"card":"5555","amount_cents":2500}`, "published again"},
}

func main() {
	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "custom-middleware:", err)
		os.Exit(1)
	}
}

// run publishes the payments, consumes them until every one is acknowledged
// (or ctx ends), and prints the log and the charges.
func run(ctx context.Context, out io.Writer) error {
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		// No timestamps: the output reads the same on every run.
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == "duration") {
				return slog.Attr{}
			}
			return a
		},
	}))

	b := memory.NewBroker()
	defer b.Close()
	pub := b.Publisher() // a broker.Publisher, as on RabbitMQ and Kafka
	defer pub.Close(context.Background())
	for _, p := range published {
		msg := broker.Message{
			Header: map[string]string{IdempotencyKeyHeader: p.key},
			Body:   []byte(p.body),
		}
		if err := pub.Publish(ctx, "payments", &msg); err != nil {
			return err
		}
	}
	src, err := b.Source("payments", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		return err
	}

	gw := &gateway{failures: map[string]int{"p-3": 2}}
	charge := consumer.JSON(func(ctx context.Context, m *broker.Message, p Payment) error {
		key := m.Header[IdempotencyKeyHeader]
		if err := gw.charge(ctx, key, p); err != nil {
			return err // transient: retried
		}
		middleware.Logger(ctx).Info("charged", "idempotency_key", key, "card", p.Card, "amount_cents", p.AmountCents)
		if key == "p-4" && m.Attempt == 1 {
			// Fault injection for the example: the connection drops after
			// the charge, so the ack cannot reach the broker, which
			// delivers the message again.
			src.DropConnection()
		}
		return nil
	})

	processed, err := NewProcessedSet(10_000)
	if err != nil {
		return err
	}
	h := consumer.Chain(
		middleware.Log(logger), // one line per delivery, with its final outcome
		middleware.Recover(),   // a panic below becomes an error that Log sees
		// Your middleware goes where what it does makes sense. Dedup:
		//   - inside Log (and Metrics): a skipped duplicate is still a
		//     delivery, logged and counted as ok;
		//   - inside Recover: a panic in Dedup or below is turned into an
		//     error before Log sees it (Dedup releases its claim on the way);
		//   - outside Retry: it claims the key once per delivery and marks it
		//     only after the last in-process attempt succeeded, and a
		//     duplicate is not retried;
		//   - outside Timeout: the per-attempt deadline does not cut its
		//     bookkeeping short.
		// The key is the producer's header, never m.ID (see Dedup).
		Dedup(processed, HeaderKey(IdempotencyKeyHeader)),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(5*time.Millisecond, 50*time.Millisecond), 2)),
		middleware.Timeout(2*time.Second),
	)(charge)

	c, err := consumer.New(src, h,
		consumer.WithName("payments"),
		// One at a time, so that the log reads in order. Dedup is safe at
		// any concurrency: a delivery that races another with the same key
		// waits for its outcome (see main_test.go).
		consumer.WithConcurrency(1),
		consumer.WithMaxDeliveries(5),
		consumer.WithLogger(logger),
	)
	if err != nil {
		return err
	}

	// Stop once every delivery is acknowledged, or on ctx.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if st := b.Stats("payments"); st.Acked+st.DeadLettered == len(published) {
					cancel()
					return
				}
			}
		}
	}()
	if err := c.Run(runCtx); err != nil {
		return err
	}

	st := b.Stats("payments")
	fmt.Fprintf(out, "\npayments: %d published, %d delivered, %d acked, %d requeued, %d returned by the broker, %d dead-lettered\n",
		st.Published, st.Delivered, st.Acked, st.Requeued, st.Returned, st.DeadLettered)
	fmt.Fprintln(out, "gateway charges:")
	for _, ch := range gw.charges() {
		fmt.Fprintf(out, "  %s card %s %d cents, %d time(s)\n", ch.id, ch.card, ch.cents, ch.times)
	}
	return nil
}

// gateway stands for a card payment API. It fails the first calls for the
// payment keys in failures, as a flaky dependency would, and counts the
// charges per payment.
type gateway struct {
	mu       sync.Mutex
	failures map[string]int
	byID     map[string]*chargeRecord
}

type chargeRecord struct {
	id, card     string
	cents, times int
}

var errGateway = errors.New("gateway: 503 service unavailable")

func (g *gateway) charge(ctx context.Context, id string, p Payment) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failures[id] > 0 {
		g.failures[id]--
		return errGateway
	}
	if g.byID == nil {
		g.byID = make(map[string]*chargeRecord)
	}
	r := g.byID[id]
	if r == nil {
		r = &chargeRecord{id: id, card: p.Card, cents: p.AmountCents}
		g.byID[id] = r
	}
	r.times++
	return nil
}

func (g *gateway) charges() []chargeRecord {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []chargeRecord
	for _, r := range g.byID {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}
