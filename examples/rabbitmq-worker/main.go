// Command rabbitmq-worker shows a RabbitMQ worker that never loses a message
// and never retries one forever: what it cannot handle goes to a dead-letter
// queue with the reason, and transient failures are retried later through a
// delayed-retry queue, without holding a worker while they wait.
//
// It declares its topology (a quorum queue, its dead-letter exchange and queue,
// and its retry queue), publishes a batch of orders with publisher confirms —
// good ones, one whose body does not decode, one that the (simulated) ledger
// refuses twice with a 503 before taking it, and one that hits a bug every time
// — consumes them under a Supervisor with the standard middleware, waits until
// every order is settled, shuts down gracefully, reads the dead letters back
// with their reasons, deletes the queues it made and prints a summary.
//
//	go run ./examples/rabbitmq-worker
//	go run ./examples/rabbitmq-worker -url amqp://user:password@host:5672/vhost
//
// The URL comes from -url, else QUEUEKIT_AMQP_URL, else
// amqp://guest:guest@127.0.0.1:5672/. Its password is never printed.
// Ctrl-C stops it gracefully at any point.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// defaultURL is used when neither -url nor QUEUEKIT_AMQP_URL is set.
const defaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// How the worker is tuned. Small numbers, so that the example ends in a
// second or two; see the comments where they are used.
const (
	concurrency   = 4
	maxDeliveries = 3                      // the delivery budget: a message failing 3 times is dead-lettered
	retryBase     = 200 * time.Millisecond // first delayed retry; doubles each time
	retryMax      = 30 * time.Second
)

// config is what run needs from main.
type config struct {
	// URL of the broker. It may hold a password: print redact(URL) only.
	URL string
	// Queue to use; empty means a fresh name for this run.
	Queue string
	// Keep leaves the queues in place at the end (to look at the dead
	// letters in the management UI) instead of deleting them.
	Keep bool
	// Timeout bounds the whole run: connecting, and waiting for every
	// message to be settled.
	Timeout time.Duration
	// Logger receives the runtime's and the middleware's logs.
	Logger *slog.Logger
}

func main() {
	cfg := config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	// No flag default from the environment: -help prints defaults, and the
	// URL may hold a password.
	flag.StringVar(&cfg.URL, "url", "", "AMQP URL of the broker (default: $QUEUEKIT_AMQP_URL, else "+redact(defaultURL)+")")
	flag.StringVar(&cfg.Queue, "queue", "", "queue to use (default: a fresh name for this run)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the queues at the end instead of deleting them")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "give up if the batch is not settled within this")
	del := flag.Bool("delete", false, "only delete the queues of -queue (left by an interrupted run) and exit")
	flag.Parse()
	if cfg.URL == "" {
		cfg.URL = envOr("QUEUEKIT_AMQP_URL", defaultURL)
	}

	if *del {
		if cfg.Queue == "" {
			fmt.Fprintln(os.Stderr, "rabbitmq-worker: -delete needs -queue")
			os.Exit(2)
		}
		if err := deleteTopology(cfg.URL, cfg.Queue); err != nil {
			fmt.Fprintln(os.Stderr, "rabbitmq-worker:", err)
			os.Exit(1)
		}
		fmt.Printf("deleted %s, %s.retry, %s.dlq and the exchange %s.dlx\n", cfg.Queue, cfg.Queue, cfg.Queue, cfg.Queue)
		return
	}

	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if _, err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "rabbitmq-worker:", err)
		os.Exit(1)
	}
}

// Order is the payload of the queue.
type Order struct {
	ID       string `json:"id"`
	Account  string `json:"account"`
	Amount   int    `json:"amount_cents"`
	Currency string `json:"currency"`
}

// summary is what happened to the batch.
type summary struct {
	Queue     string
	Published []string // message IDs, in publish order
	// Handled maps the ID of every order the ledger took to the attempt on
	// which it succeeded.
	Handled map[string]int
	// DeadLetters are read back from the dead-letter queue, with the reason
	// the runtime wrote in their headers.
	DeadLetters []deadLetter
	// Interrupted is true when ctx ended (Ctrl-C) before every message was
	// settled.
	Interrupted bool

	mu sync.Mutex // guards Handled, which the workers write
}

type deadLetter struct {
	ID        string
	Attempts  int
	Permanent bool
	Error     string
}

// run is the whole program: main gives it a context cancelled on Ctrl-C.
func run(ctx context.Context, cfg config, stdout io.Writer) (*summary, error) {
	if cfg.URL == "" {
		cfg.URL = defaultURL
	}
	if cfg.Queue == "" {
		cfg.Queue = fmt.Sprintf("queuekit-example-orders-%08x", rand.Uint32())
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	out := &printer{w: stdout}
	sum := &summary{Queue: cfg.Queue, Handled: map[string]int{}}

	// The topology: a quorum queue (its x-delivery-count makes the delivery
	// budget exact, even across restarts), "<queue>.dlx" and "<queue>.dlq"
	// for dead letters, "<queue>.retry" for delayed retries. The source
	// declares whatever of it is missing when it connects, and again after
	// every reconnect.
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:   rabbitmq.Dialer{URL: cfg.URL},
		Queue:    cfg.Queue,
		Prefetch: 2 * concurrency, // at least the concurrency, or workers sit idle
		Topology: rabbitmq.Topology{QueueType: rabbitmq.Quorum},
		Logger:   cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	dlq, retryQ := cfg.Queue+".dlq", cfg.Queue+".retry" // the Topology defaults
	out.printf("queue %s on %s (quorum; dead letters go to %s, delayed retries wait in %s)\n",
		cfg.Queue, redact(cfg.URL), dlq, retryQ)

	ledger := newLedger(map[string]int{"order-8": 2}) // order-8: two 503s, then OK
	handler := consumer.JSON(func(ctx context.Context, m *consumer.Message, o Order) error {
		cents, err := toEUR(o.Amount, o.Currency)
		if err != nil {
			return retry.Permanent(err) // bad data: retrying cannot help
		}
		if err := ledger.Post(ctx, o.ID, cents); err != nil {
			return err
		}
		sum.record(m.ID, m.Attempt)
		return nil
	})
	h := consumer.Chain(
		middleware.Log(cfg.Logger),        // one line per failed delivery (Warn), per panic (Error)
		retryLater(retryBase, retryMax),   // transient failures wait in the retry queue, not in a worker
		middleware.Recover(),              // a panic fails this message only
		middleware.Timeout(5*time.Second), // a stuck ledger call fails instead of holding a worker
	)(handler)

	// Wait until every published message has had its final settlement:
	// acknowledged, or dead-lettered and confirmed in the dead-letter queue.
	// (Requeues and delayed requeues are not final.)
	settled := newSettlements()
	c, err := consumer.New(src, h,
		consumer.WithName("orders"),
		consumer.WithConcurrency(concurrency),
		consumer.WithMaxDeliveries(maxDeliveries),
		consumer.WithDrainTimeout(5*time.Second),
		consumer.WithLogger(cfg.Logger),
		consumer.WithObserver(func(m *consumer.Message, s consumer.Settlement, err error) {
			if err != nil {
				return // not settled (a stale delivery): the broker delivers it again
			}
			what := describe(s)
			if s == consumer.SettledDelayedRequeue {
				what += fmt.Sprintf(" (next delivery in %v)", backoff(retryBase, retryMax, m.Attempt))
			}
			out.printf("  %-8s attempt %d: %s\n", m.ID, m.Attempt, what)
			settled.add(m.ID, s)
		}),
	)
	if err != nil {
		return nil, err
	}

	connected := make(chan struct{})
	var once sync.Once
	var lastErr errorBox
	sup := &consumer.Supervisor{
		Logger:       cfg.Logger,
		DrainTimeout: 10 * time.Second,
		OnEvent: func(e consumer.Event) {
			switch e.Kind {
			case consumer.EventConnected:
				once.Do(func() { close(connected) })
			case consumer.EventReconnecting:
				lastErr.set(e.Err)
			case consumer.EventDrained:
				out.printf("drained: %d in flight finished, %d given back, %d abandoned, in %v\n",
					e.Drain.Handled, e.Drain.GivenBack, e.Drain.Abandoned, e.Drain.Duration.Round(time.Millisecond))
			}
		},
	}
	if err := sup.Add("orders", c); err != nil {
		return nil, err
	}

	timeout := time.NewTimer(cfg.Timeout)
	defer timeout.Stop()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var supErr error
	supDone := make(chan struct{}) // closed when sup.Run returned; supErr is set before
	go func() {
		defer close(supDone)
		supErr = sup.Run(runCtx)
	}()
	// stopSupervisor drains the consumer gracefully and waits for it: when
	// it returns, every goroutine the supervisor started has exited.
	stopSupervisor := func() error {
		stopRun()
		<-supDone
		return supErr
	}
	defer stopSupervisor() //nolint:errcheck // the paths that care report it themselves

	// The source connects (and declares the topology) on its first
	// Receive. Publish only once it has: the publisher's messages are
	// mandatory, and the broker returns them while the queue does not exist.
	// (A program that only publishes calls rabbitmq.DeclareTopology first,
	// with the consumers' Topology.)
	select {
	case <-connected:
	case <-ctx.Done():
		sum.Interrupted = true
		out.printf("interrupted before the worker connected\n")
		return sum, stopSupervisor()
	case <-supDone:
		return nil, fmt.Errorf("worker stopped before it connected: %w", supErr)
	case <-timeout.C:
		err := lastErr.get()
		if err == nil {
			err = errors.New("no answer")
		}
		_ = stopSupervisor()
		return nil, fmt.Errorf("could not connect to RabbitMQ at %s within %v: %w", redact(cfg.URL), cfg.Timeout, err)
	}
	// From here on the queues exist. Delete them at the end, once the
	// worker has stopped — unless orders are still in them (after Ctrl-C or
	// a failure): a worker never throws orders away.
	unsettled := true // until every order is settled
	defer func() {
		_ = stopSupervisor()
		switch {
		case unsettled:
			out.printf("kept the queues: the orders not settled are still in %s or %s\n", cfg.Queue, retryQ)
			out.printf("delete them with: go run ./examples/rabbitmq-worker -queue %s -delete\n", cfg.Queue)
		case cfg.Keep:
			out.printf("kept the queues (-keep)\n")
		default:
			if err := deleteTopology(cfg.URL, cfg.Queue); err != nil {
				out.printf("could not delete the queues: %v\n", err)
				return
			}
			out.printf("deleted %s, %s, %s and the exchange %s.dlx\n", cfg.Queue, dlq, retryQ, cfg.Queue)
		}
	}()

	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: rabbitmq.Dialer{URL: cfg.URL}, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	msgs := batch()
	out.printf("publishing %d orders; consuming them as they arrive\n", len(msgs))
	for _, msg := range msgs {
		// Publish returns once the broker has confirmed the message
		// (persistent, mandatory): from then on, the broker has it. If the
		// connection dropped before the confirm, the message may or may not
		// have been stored: publish it again (at-least-once; the consumer
		// sees the message ID twice at worst). A message returned as
		// unroutable would be returned again.
		err := retry.Do(ctx, retry.MaxAttempts(retry.Exponential(100*time.Millisecond, 2*time.Second), 5), func(ctx context.Context) error {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err := pub.Publish(pctx, "", cfg.Queue, msg)
			if errors.Is(err, rabbitmq.ErrReturned) {
				return retry.Permanent(err)
			}
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				sum.Interrupted = true
				out.printf("interrupted while publishing\n")
				return sum, stopSupervisor()
			}
			return nil, fmt.Errorf("publish %s: %w", msg.MessageId, err)
		}
		sum.Published = append(sum.Published, msg.MessageId)
	}
	out.printf("published %d orders, each confirmed by the broker\n", len(sum.Published))

	start := time.Now()
	select {
	case <-settled.expect(sum.Published):
		unsettled = false
		out.printf("all %d orders settled in %v; shutting down\n", len(sum.Published), time.Since(start).Round(time.Millisecond))
	case <-ctx.Done():
		sum.Interrupted = true
		out.printf("interrupted: %d of %d orders settled; shutting down\n", settled.count(), len(sum.Published))
	case <-supDone:
		return nil, fmt.Errorf("worker stopped: %w", supErr)
	case <-timeout.C:
		_ = stopSupervisor()
		return nil, fmt.Errorf("only %d of %d orders settled within %v", settled.count(), len(sum.Published), cfg.Timeout)
	}
	if err := stopSupervisor(); err != nil {
		return nil, err
	}

	// Read the dead letters back, with the reasons the runtime wrote in
	// their headers. They stay in the dead-letter queue (unless deleted
	// below): this is what an operator would look at.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	sum.DeadLetters, err = readDeadLetters(rctx, cfg.URL, dlq)
	if err != nil {
		return nil, err
	}
	sum.print(out)
	return sum, nil
}

// batch is the orders the example publishes.
func batch() []amqp.Publishing {
	var msgs []amqp.Publishing
	add := func(id, body string) {
		msgs = append(msgs, amqp.Publishing{MessageId: id, ContentType: "application/json", Body: []byte(body)})
	}
	for i := 1; i <= 6; i++ {
		o, _ := json.Marshal(Order{ID: "order-" + strconv.Itoa(i), Account: "acct-" + strconv.Itoa(100+i), Amount: 1000 * i, Currency: "EUR"})
		add("order-"+strconv.Itoa(i), string(o))
	}
	// Does not decode (a string where a number belongs): dead-lettered at once.
	add("order-7", `{"id": "order-7", "account": "acct-107", "amount_cents": "seventy", "currency": "EUR"}`)
	// The ledger answers 503 twice: retried through the retry queue, then taken.
	add("order-8", `{"id": "order-8", "account": "acct-108", "amount_cents": 8000, "currency": "EUR"}`)
	// Hits a bug (a panic) every time: dead-lettered after the delivery budget.
	add("order-9", `{"id": "order-9", "account": "acct-109", "amount_cents": 9000, "currency": "CHF"}`)
	return msgs
}

// retryLater sends a failed message back through the broker's delayed-retry
// queue instead of requeueing it at once: the runtime gives it back with
// RequeueAfter, so it waits base, 2×base, 4×base… (at most max) in the retry
// queue before its next delivery, and no worker is held while it waits.
// Permanent errors pass through (the runtime dead-letters them at once), and
// so do errors that carry their own retry.After delay. On the last delivery
// of the budget the runtime dead-letters the message, whatever the delay.
//
// Put it outside Recover, so that panics are delayed too.
func retryLater(base, max time.Duration) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
			err := next.Handle(ctx, m)
			if err == nil || retry.IsPermanent(err) {
				return err
			}
			if _, ok := retry.RetryAfter(err); ok {
				return err
			}
			return retry.After(err, backoff(base, max, m.Attempt))
		})
	}
}

// backoff returns the delay after the given failed attempt: base, 2×base,
// 4×base…, at most max.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// ledger stands in for the downstream service the handler posts orders to.
// It answers 503 to the first calls for some orders.
type ledger struct {
	mu          sync.Mutex
	unavailable map[string]int // order ID → 503s still to answer
}

func newLedger(unavailable map[string]int) *ledger { return &ledger{unavailable: unavailable} }

func (l *ledger) Post(ctx context.Context, orderID string, cents int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unavailable[orderID] > 0 {
		l.unavailable[orderID]--
		return errors.New("ledger: 503 Service Unavailable")
	}
	return ctx.Err()
}

type rate struct{ num, den int }

var rates = map[string]*rate{"EUR": {1, 1}, "USD": {92, 100}, "GBP": {117, 100}}

// toEUR converts an amount to euro cents. It has a bug: a currency missing
// from rates dereferences a nil pointer. The panic is recovered and fails
// that message only; the others go on.
func toEUR(cents int, currency string) (int, error) {
	if currency == "" {
		return 0, errors.New("order has no currency")
	}
	r := rates[currency]
	return cents * r.num / r.den, nil
}

// readDeadLetters reads the messages of the dead-letter queue without
// removing them (they are never acknowledged, so the broker puts them back
// when the channel closes). The adapter has no API to browse a queue, so this
// uses amqp091-go directly.
func readDeadLetters(ctx context.Context, rawURL, dlq string) ([]deadLetter, error) {
	var out []deadLetter
	err := retry.Do(ctx, retry.Exponential(100*time.Millisecond, time.Second), func(ctx context.Context) error {
		out = nil
		conn, err := dial(rawURL)
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		for ctx.Err() == nil {
			d, ok, err := ch.Get(dlq, false)
			if err != nil {
				return fmt.Errorf("read %s: %w", dlq, err)
			}
			if !ok {
				return nil
			}
			attempts, _ := strconv.Atoi(fmt.Sprint(d.Headers[consumer.HeaderAttempts]))
			out = append(out, deadLetter{
				ID:        d.MessageId,
				Attempts:  attempts,
				Permanent: fmt.Sprint(d.Headers[consumer.HeaderPermanent]) == "true",
				Error:     fmt.Sprint(d.Headers[consumer.HeaderError]),
			})
		}
		return ctx.Err()
	})
	slices.SortFunc(out, func(a, b deadLetter) int { return strings.Compare(a.ID, b.ID) })
	return out, err
}

// deleteTopology deletes what the source declared for queue (its default
// topology), with amqp091-go: the adapter deletes nothing.
func deleteTopology(rawURL, queue string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return retry.Do(ctx, retry.Exponential(100*time.Millisecond, time.Second), func(context.Context) error {
		conn, err := dial(rawURL)
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		for _, q := range []string{queue, queue + ".retry", queue + ".dlq"} {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				return fmt.Errorf("delete queue %s: %w", q, err)
			}
		}
		if err := ch.ExchangeDelete(queue+".dlx", false, false); err != nil {
			return fmt.Errorf("delete exchange %s.dlx: %w", queue, err)
		}
		return nil
	})
}

// dial opens a plain amqp091-go connection, with a bounded dial, and keeps
// the password out of its errors.
func dial(rawURL string) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Dial: amqp.DefaultDial(5 * time.Second),
		Properties: amqp.Table{
			"connection_name": "queuekit example rabbitmq-worker (inspection)",
		},
	})
	if err != nil {
		return nil, errors.New(strings.ReplaceAll(err.Error(), rawURL, redact(rawURL)))
	}
	return conn, nil
}

// redact returns u with its password replaced by "xxxxx".
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(an AMQP URL that does not parse)"
	}
	return p.Redacted()
}

func (s *summary) record(id string, attempt int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Handled[id] = attempt
}

func (s *summary) print(out *printer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.Handled))
	for id := range s.Handled {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out.printf("summary:\n")
	out.printf("  published:     %d\n", len(s.Published))
	out.printf("  handled:       %d (%s)\n", len(ids), strings.Join(ids, ", "))
	out.printf("  dead-lettered: %d, read back from %s.dlq:\n", len(s.DeadLetters), s.Queue)
	for _, d := range s.DeadLetters {
		kind := "budget spent"
		if d.Permanent {
			kind = "permanent"
		}
		attempts := "1 attempt"
		if d.Attempts != 1 {
			attempts = strconv.Itoa(d.Attempts) + " attempts"
		}
		out.printf("    %s after %s, %s: %s\n", d.ID, attempts, kind, d.Error)
	}
}

func describe(s consumer.Settlement) string {
	switch s {
	case consumer.SettledAck:
		return "handled, acknowledged"
	case consumer.SettledDelayedRequeue:
		return "failed, sent to the retry queue"
	case consumer.SettledRequeue:
		return "failed, requeued"
	case consumer.SettledDeadLetter:
		return "dead-lettered"
	}
	return s.String()
}

// settlements tracks which messages had their final settlement: acknowledged,
// or dead-lettered (and confirmed in the dead-letter queue). Requeues are not
// final.
type settlements struct {
	mu    sync.Mutex
	final map[string]bool
	want  []string      // set by expect
	done  chan struct{} // closed once every ID of want is final
}

func newSettlements() *settlements {
	return &settlements{final: map[string]bool{}, done: make(chan struct{})}
}

func (s *settlements) add(id string, st consumer.Settlement) {
	if st != consumer.SettledAck && st != consumer.SettledDeadLetter {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.final[id] = true
	s.check()
}

// expect returns a channel closed once every one of ids is settled.
func (s *settlements) expect(ids []string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = ids
	s.check()
	return s.done
}

// check closes done when the wanted IDs are all final. s.mu is held.
func (s *settlements) check() {
	if s.want == nil {
		return
	}
	for _, id := range s.want {
		if !s.final[id] {
			return
		}
	}
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

func (s *settlements) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.final)
}

// printer serialises writes from the workers and main.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, a...)
}

type errorBox struct {
	mu  sync.Mutex
	err error
}

func (b *errorBox) set(err error) { b.mu.Lock(); b.err = err; b.mu.Unlock() }
func (b *errorBox) get() error    { b.mu.Lock(); defer b.mu.Unlock(); return b.err }

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
