// Command rabbitmq-worker shows a RabbitMQ worker that never loses a message
// and never retries one forever: what it cannot handle goes to a dead-letter
// queue with the reason, and transient failures are retried later through a
// delayed-retry queue, without holding a worker while they wait.
//
// It declares its topology (a quorum queue, its dead-letter exchange and queue,
// and its retry queue) with rabbitmq.DeclareTopology, as a real producer does
// before publishing, publishes a batch of orders with publisher confirms —
// good ones, one whose body does not decode, one that the (simulated) ledger
// refuses twice with a 503 before taking it, and one that hits a bug every time
// — consumes them under a Supervisor with the standard middleware, waits until
// every order is settled, shuts down gracefully, reads the dead letters back
// with their reasons, deletes the queues it made and prints a summary.
//
//	go run ./examples/rabbitmq-worker      # local broker, amqp://guest:guest@127.0.0.1:5672/
//	export QUEUEKIT_AMQP_URL='amqp://user:password@host:5672/vhost'
//	go run ./examples/rabbitmq-worker
//
// The URL comes from QUEUEKIT_AMQP_URL (or -url, which other users can read in
// ps), else amqp://guest:guest@127.0.0.1:5672/. Its password is never printed.
//
// It only ever deletes what it created: by default it works on a fresh queue
// "queuekit-example-orders-<random>" (after checking that nothing of that
// name exists) and deletes it at the end. With -queue NAME it uses that queue
// — whose name must start with "queuekit-example-", because the demo consumes
// and acknowledges whatever is in it — and keeps it; -queue NAME -delete then
// deletes it and its retry and dead-letter queues and exchange if they are
// empty and unused, and says what it kept. Ctrl-C stops it gracefully at any
// point, keeping any queue that still holds orders.
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

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// defaultURL is used when neither -url nor QUEUEKIT_AMQP_URL is set.
const defaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// queuePrefix starts the name of every queue the example touches: the demo
// consumes and acknowledges whatever is in its queue, so it refuses to run on
// one that is not an example queue.
const queuePrefix = "queuekit-example-"

// How the worker is tuned. Small numbers, so that the example ends in a
// second or two; see the comments where they are used.
const (
	concurrency   = 4
	maxDeliveries = 3                      // the delivery budget: a message failing 3 times is dead-lettered
	retryBase     = 200 * time.Millisecond // first delayed retry; doubles each time
	retryMax      = 30 * time.Second
	maxShown      = 100 // dead letters read back from the dead-letter queue, at most
)

// topology is the consumers' Topology, which the program also declares
// before publishing: a quorum queue (its x-delivery-count makes the delivery
// budget exact, even across restarts), "<queue>.dlx" and "<queue>.dlq" for
// dead letters, "<queue>.retry" for delayed retries.
var topology = rabbitmq.Topology{QueueType: rabbitmq.Quorum}

// config is what run needs from main.
type config struct {
	// URL of the broker. It may hold a password: print redact(URL) only.
	URL string
	// Queue to use, which must start with queuePrefix; the run keeps it at
	// the end, since it may not have created it. Empty means a fresh name,
	// for queues that the run creates and deletes at the end.
	Queue string
	// Keep leaves the fresh queues in place at the end (to look at the dead
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
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `usage: go run ./examples/rabbitmq-worker [flags]

Publishes 9 orders to a queue and consumes them: good ones are acknowledged,
transient failures retried through a delayed-retry queue, the rest
dead-lettered with the reason. The broker URL comes from $QUEUEKIT_AMQP_URL.

By default it creates a fresh queue %sorders-<random> (with .retry, .dlq
and the exchange .dlx) and deletes them at the end. It never deletes a queue
it did not create: with -queue NAME it uses NAME (which must start with
%q, since the demo consumes and acknowledges whatever is in it) and
keeps it; -queue NAME -delete deletes NAME and its .retry, .dlq and .dlx only
if they are empty and unused, and says what it kept.

flags:
`, queuePrefix, queuePrefix)
		flag.PrintDefaults()
	}
	// No flag default from the environment: -help prints defaults, and the
	// URL may hold a password.
	flag.StringVar(&cfg.URL, "url", "", "AMQP URL of the broker; other users can read it in ps, so prefer $QUEUEKIT_AMQP_URL (default: $QUEUEKIT_AMQP_URL, else "+redact(defaultURL)+")")
	flag.StringVar(&cfg.Queue, "queue", "", "use this queue, whose name must start with "+strconv.Quote(queuePrefix)+", and keep it at the end (default: a fresh queue, deleted at the end)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the fresh queues at the end instead of deleting them")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "give up if the batch is not settled within this")
	del := flag.Bool("delete", false, "with -queue: delete that queue and its .retry, .dlq and .dlx if they are empty and unused, say what was kept, and exit")
	flag.Parse()
	if cfg.URL == "" {
		cfg.URL = envOr("QUEUEKIT_AMQP_URL", defaultURL)
	}

	if *del {
		if cfg.Queue == "" {
			fmt.Fprintln(os.Stderr, "rabbitmq-worker: -delete needs -queue")
			os.Exit(2)
		}
		if err := checkQueueName(cfg.Queue); err != nil {
			fmt.Fprintln(os.Stderr, "rabbitmq-worker:", err)
			os.Exit(2)
		}
		kept, err := deleteTopology(cfg.URL, cfg.Queue, false, &printer{w: os.Stdout})
		if err != nil {
			fmt.Fprintln(os.Stderr, "rabbitmq-worker:", err)
			os.Exit(1)
		}
		if kept > 0 {
			os.Exit(1)
		}
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

// checkQueueName refuses a queue that is not an example queue.
func checkQueueName(q string) error {
	if !strings.HasPrefix(q, queuePrefix) || len(q) == len(queuePrefix) {
		return fmt.Errorf("queue %q: the example only uses queues whose name starts with %q (it consumes and acknowledges what is in them)", q, queuePrefix)
	}
	return nil
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
	// DeadLetters are read back from the dead-letter queue (at most
	// maxShown of them), with the reason the runtime wrote in their headers.
	DeadLetters []deadLetter
	// DeadLettersQueued is how many messages the dead-letter queue held
	// when they were read.
	DeadLettersQueued int
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
	// fresh: the queues get a name of their own, which the run checks is
	// unused before declaring it, so that it deletes only what it created.
	fresh := cfg.Queue == ""
	if fresh {
		cfg.Queue = fmt.Sprintf("%sorders-%08x", queuePrefix, rand.Uint32())
	} else if err := checkQueueName(cfg.Queue); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	out := &printer{w: stdout}
	sum := &summary{Queue: cfg.Queue, Handled: map[string]int{}}
	dialer := rabbitmq.Dialer{URL: cfg.URL}

	// The source makes sure of its topology when it connects, and again
	// after every reconnect.
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:   dialer,
		Queue:    cfg.Queue,
		Prefetch: 2 * concurrency, // at least the concurrency, or workers sit idle
		Topology: topology,
		Logger:   cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	dlq, retryQ := cfg.Queue+".dlq", cfg.Queue+".retry" // the Topology defaults
	out.printf("queue %s on %s (quorum; dead letters go to %s, delayed retries wait in %s)\n",
		cfg.Queue, redact(cfg.URL), dlq, retryQ)

	// limit bounds the whole run (cfg.Timeout). ctx ending is an interrupt
	// (Ctrl-C), not a failure: it cancels limit, but its deadline, if it has
	// one, is not limit's, so that retry.Do, which gives up early when its
	// next attempt could not start before the deadline, gives up only on the
	// run's own timeout.
	limit, cancelLimit := context.WithTimeout(context.WithoutCancel(ctx), cfg.Timeout)
	defer cancelLimit()
	defer context.AfterFunc(ctx, cancelLimit)()

	// Declare the topology before publishing, as a producer must: the
	// publisher's messages are mandatory, and the broker returns them while
	// the queue does not exist. A fresh name is first checked to be unused.
	var created bool // the run made every object of the topology: it may delete them
	var lastErr error
	err = retry.Do(limit, retry.Exponential(100*time.Millisecond, 2*time.Second), func(ctx context.Context) error {
		if fresh && !created {
			if err := checkUnused(cfg.URL, cfg.Queue); err != nil {
				lastErr = err
				return err
			}
			created = true
		}
		err := rabbitmq.DeclareTopology(ctx, dialer, cfg.Queue, topology)
		if err != nil && ctx.Err() == nil {
			lastErr = err
		}
		if broker.IsFatal(err) {
			return retry.Permanent(err) // wrong credentials, no access to the vhost…
		}
		return err
	})
	switch {
	case err == nil:
	case ctx.Err() != nil:
		sum.Interrupted = true
		out.printf("interrupted before the topology was declared\n")
		if created { // anything declared so far is empty and ours
			if _, err := deleteTopology(cfg.URL, cfg.Queue, false, out); err != nil {
				out.printf("could not delete the queues: %v\n", err)
			}
		}
		return sum, nil
	case retry.IsPermanent(err) || broker.IsFatal(err):
		return nil, fmt.Errorf("could not use RabbitMQ at %s: %w", redact(cfg.URL), err)
	default:
		if lastErr == nil {
			lastErr = err
		}
		return nil, fmt.Errorf("could not connect to RabbitMQ at %s within %v: %w", redact(cfg.URL), cfg.Timeout, lastErr)
	}

	ledger := newLedger(map[string]int{"order-8": 2}) // order-8: two 503s, then OK
	handler := consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
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
		consumer.WithObserver(func(m *broker.Message, s consumer.Settlement, err error) {
			if err != nil {
				return // not settled (a stale delivery): the broker delivers it again
			}
			what := describe(s)
			if s == consumer.SettledDelayedRequeue {
				what += fmt.Sprintf(" (next delivery in %v or later)", backoff(retryBase, retryMax, m.Attempt))
			}
			out.printf("  %-8s attempt %d: %s\n", m.ID, m.Attempt, what)
			settled.add(m.ID, s)
		}),
	)
	if err != nil {
		return nil, err
	}

	sup := &consumer.Supervisor{
		Logger:       cfg.Logger,
		DrainTimeout: 10 * time.Second,
		OnEvent: func(e consumer.Event) {
			if e.Kind == consumer.EventDrained {
				out.printf("drained: %d in flight finished, %d given back, %d abandoned, in %v\n",
					e.Drain.Handled, e.Drain.GivenBack, e.Drain.Abandoned, e.Drain.Duration.Round(time.Millisecond))
			}
		},
	}
	if err := sup.Add("orders", c); err != nil {
		return nil, err
	}

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

	// At the end, once the worker has stopped, delete the queues — only if
	// this run created them, the user did not ask to keep them, and every
	// order was settled and its dead letters read back. A worker never
	// throws orders away, and never deletes queues it did not make.
	finished := false
	defer func() {
		_ = stopSupervisor()
		switch {
		case !fresh:
			out.printf("kept the queues: -queue %s was given, and the example deletes only queues it created\n", cfg.Queue)
			out.printf("delete the empty ones with: go run ./examples/rabbitmq-worker -queue %s -delete\n", cfg.Queue)
		case !finished:
			out.printf("kept the queues: orders may still be in %s or %s\n", cfg.Queue, retryQ)
			out.printf("finish them with: go run ./examples/rabbitmq-worker -queue %s\n", cfg.Queue)
		case cfg.Keep:
			out.printf("kept the queues (-keep); delete them with: go run ./examples/rabbitmq-worker -queue %s -delete\n", cfg.Queue)
		default:
			// created: the dead letters in dlq are this run's, just read back.
			if _, err := deleteTopology(cfg.URL, cfg.Queue, true, out); err != nil {
				out.printf("could not delete the queues: %v\n", err)
			}
		}
	}()

	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: dialer, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	defer pub.Close(context.Background())
	msgs := batch()
	out.printf("publishing %d orders; consuming them as they arrive\n", len(msgs))
	for _, msg := range msgs {
		// Publish returns once the broker has confirmed the message
		// (persistent, mandatory): from then on, the broker has it. If the
		// connection dropped before the confirm, the message may or may not
		// have been stored: publish it again (at-least-once; the consumer
		// sees the message ID twice at worst). A message returned as
		// unroutable would be returned again.
		err := retry.Do(limit, retry.MaxAttempts(retry.Exponential(100*time.Millisecond, 2*time.Second), 5), func(ctx context.Context) error {
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
		out.printf("all %d orders settled in %v; shutting down\n", len(sum.Published), time.Since(start).Round(time.Millisecond))
	case <-supDone:
		return nil, fmt.Errorf("worker stopped: %w", supErr)
	case <-limit.Done():
		if ctx.Err() != nil {
			sum.Interrupted = true
			out.printf("interrupted: %d of %d orders settled; shutting down\n", settled.count(), len(sum.Published))
			return sum, stopSupervisor()
		}
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
	sum.DeadLetters, sum.DeadLettersQueued, err = readDeadLetters(rctx, cfg.URL, dlq, maxShown)
	if err != nil {
		return nil, err
	}
	finished = true
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
// RequeueAfter, so it waits at least base, 2×base, 4×base… (at most max) in
// the retry queue before its next delivery, and no worker is held while it
// waits. At least, not exactly: the retry queue is one queue with a
// per-message TTL, and RabbitMQ expires messages only at its head, so a
// message with a short delay can wait behind one with a longer delay.
// Permanent errors pass through (the runtime dead-letters them at once), and
// so do errors that carry their own retry.After delay. On the last delivery
// of the budget the runtime dead-letters the message, whatever the delay.
//
// Put it outside Recover, so that panics are delayed too.
func retryLater(base, max time.Duration) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
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

// readDeadLetters reads up to max messages of the dead-letter queue without
// removing them (they are never acknowledged, so the broker puts them back
// when the channel closes), and returns them with the number of messages the
// queue held. It reads no more than a passive declaration counted first, so
// it ends even while dead letters keep arriving. The adapter has no API to
// browse a queue, so this uses amqp091-go directly.
func readDeadLetters(ctx context.Context, rawURL, dlq string, max int) ([]deadLetter, int, error) {
	var out []deadLetter
	var queued int
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
		q, err := ch.QueueDeclarePassive(dlq, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("read %s: %w", dlq, err)
		}
		queued = q.Messages
		for range min(queued, max) {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, ok, err := ch.Get(dlq, false)
			if err != nil {
				return fmt.Errorf("read %s: %w", dlq, err)
			}
			if !ok {
				return nil
			}
			attempts, _ := strconv.Atoi(fmt.Sprint(d.Headers[broker.HeaderAttempts]))
			out = append(out, deadLetter{
				ID:        d.MessageId,
				Attempts:  attempts,
				Permanent: fmt.Sprint(d.Headers[broker.HeaderPermanent]) == "true",
				Error:     fmt.Sprint(d.Headers[broker.HeaderError]),
			})
		}
		return nil
	})
	slices.SortFunc(out, func(a, b deadLetter) int { return strings.Compare(a.ID, b.ID) })
	return out, queued, err
}

// topologyObject is one queue or exchange of the default topology of a queue.
type topologyObject struct {
	name     string
	exchange bool
}

func (o topologyObject) String() string {
	if o.exchange {
		return "the exchange " + o.name
	}
	return o.name
}

// objects lists the default topology of queue, in the order deleteTopology
// deletes it: the retry queue before the queue its messages expire into,
// the dead-letter queue before the exchange bound to it.
func objects(queue string) []topologyObject {
	return []topologyObject{
		{name: queue + ".retry"}, {name: queue}, {name: queue + ".dlq"}, {name: queue + ".dlx", exchange: true},
	}
}

// checkUnused returns a permanent error if any object of queue's default
// topology exists: a run on a fresh name must create all of them, since it
// deletes them at the end.
func checkUnused(rawURL, queue string) error {
	s := &session{url: rawURL}
	defer s.close()
	for _, o := range objects(queue) {
		found, _, err := s.exists(o)
		if err != nil {
			return err
		}
		if found {
			return retry.Permanent(fmt.Errorf("%s exists already; the run would not have created it, so it stops here", o))
		}
	}
	return nil
}

// deleteTopology deletes queue, queue.retry, queue.dlq and the exchange
// queue.dlx (the default topology the source declared; the adapter deletes
// nothing), each only if it is unused (no consumer, no binding) and, except
// queue.dlq when dropDeadLetters is set, empty. It keeps the queue while its
// retry queue exists, since the messages waiting there expire into it, and
// the exchange while the dead-letter queue is bound to it. It prints what it
// deleted and what it kept, and returns how many objects it kept.
//
// dropDeadLetters is for a run that created the topology itself and has read
// its dead letters back; a queue named by the user is never deleted with
// messages in it.
func deleteTopology(rawURL, queue string, dropDeadLetters bool, out *printer) (kept int, err error) {
	s := &session{url: rawURL}
	defer s.close()
	gone := map[string]bool{}
	var deleted []string
	for _, o := range objects(queue) {
		anyway := dropDeadLetters && o.name == queue+".dlq"
		found, q, err := s.exists(o)
		if err != nil {
			return kept, err
		}
		if !found {
			gone[o.name] = true
			continue
		}
		var why string
		switch {
		case o.name == queue && !gone[queue+".retry"]:
			why = "its retry queue " + queue + ".retry is kept, and the messages waiting there expire into it"
		case q.Messages > 0 && !anyway:
			why = fmt.Sprintf("it holds %d messages", q.Messages)
		case q.Consumers > 0:
			why = fmt.Sprintf("it has %d consumers", q.Consumers)
		default:
			why, err = s.remove(o, anyway)
			if err != nil {
				return kept, err
			}
		}
		if why != "" {
			out.printf("kept %s: %s\n", o, why)
			kept++
			continue
		}
		gone[o.name] = true
		deleted = append(deleted, o.String())
	}
	if len(deleted) > 0 {
		out.printf("deleted %s\n", strings.Join(deleted, ", "))
	} else if kept == 0 {
		out.printf("nothing to delete: %s and its .retry, .dlq and .dlx do not exist\n", queue)
	}
	return kept, nil
}

// session is a plain amqp091-go connection for checking and deleting the
// topology, opened again when the broker closed it.
type session struct {
	url  string
	conn *amqp.Connection
}

// channel returns a new channel: a failed declaration or deletion closes
// its channel (and some errors the connection), so each gets its own.
func (s *session) channel() (*amqp.Channel, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.close()
		conn, err := dial(s.url)
		if err != nil {
			return nil, err
		}
		s.conn = conn
	}
	return s.conn.Channel()
}

func (s *session) close() {
	if s.conn != nil {
		_ = s.conn.Close()
		s.conn = nil
	}
}

// exists reports whether o exists, with its message and consumer counts for
// a queue, with a passive declaration.
func (s *session) exists(o topologyObject) (bool, amqp.Queue, error) {
	ch, err := s.channel()
	if err != nil {
		return false, amqp.Queue{}, err
	}
	defer ch.Close()
	var q amqp.Queue
	if o.exchange {
		err = ch.ExchangeDeclarePassive(o.name, amqp.ExchangeDirect, true, false, false, false, nil)
	} else {
		q, err = ch.QueueDeclarePassive(o.name, true, false, false, false, nil)
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return false, amqp.Queue{}, nil
	}
	if err != nil {
		return false, amqp.Queue{}, fmt.Errorf("check %s: %w", o, err)
	}
	return true, q, nil
}

// remove deletes o if it is unused and, unless anyway, empty. It returns why
// the broker kept it, or an error if it could not ask.
func (s *session) remove(o topologyObject, anyway bool) (string, error) {
	ch, err := s.channel()
	if err != nil {
		return "", err
	}
	defer ch.Close()
	if o.exchange {
		err = ch.ExchangeDelete(o.name, true, false)
	} else {
		_, err = ch.QueueDelete(o.name, true, !anyway, false)
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotImplemented && !o.exchange {
		// A quorum queue (RabbitMQ 3.x) refuses if-unused and if-empty, and
		// closes the connection. deleteTopology checked a moment ago that the
		// queue had no consumer and (unless anyway) no message; check again
		// and delete it plainly. A message published between this check and
		// the deletion would be lost: a window of one round trip, on a queue
		// of the example.
		found, q, err := s.exists(o)
		switch {
		case err != nil:
			return "", err
		case !found:
			return "", nil
		case q.Messages > 0 && !anyway:
			return fmt.Sprintf("it holds %d messages", q.Messages), nil
		case q.Consumers > 0:
			return fmt.Sprintf("it has %d consumers", q.Consumers), nil
		}
		ch, err := s.channel()
		if err != nil {
			return "", err
		}
		defer ch.Close()
		_, err = ch.QueueDelete(o.name, false, false, false)
		if err != nil {
			return "", fmt.Errorf("delete %s: %w", o, err)
		}
		return "", nil
	}
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		if o.exchange {
			return "a queue is still bound to it", nil
		}
		return "the broker refused: " + ae.Reason, nil
	}
	if err != nil {
		return "", fmt.Errorf("delete %s: %w", o, err)
	}
	return "", nil
}

// dial opens a plain amqp091-go connection, with a bounded dial, and keeps
// the password out of its errors. A refusal by the broker (wrong
// credentials, no access to the vhost) is permanent: retrying cannot help.
func dial(rawURL string) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Dial: amqp.DefaultDial(5 * time.Second),
		Properties: amqp.Table{
			"connection_name": "queuekit example rabbitmq-worker (inspection)",
		},
	})
	if err != nil {
		msg := strings.ReplaceAll(err.Error(), rawURL, redact(rawURL))
		if pw, ok := password(rawURL); ok {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.AccessRefused {
			return nil, retry.Permanent(errors.New(msg))
		}
		return nil, errors.New(msg)
	}
	return conn, nil
}

// password returns the password of u, if it has one.
func password(u string) (string, bool) {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		return "", false
	}
	pw, ok := p.User.Password()
	return pw, ok && pw != ""
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
	if s.DeadLettersQueued > len(s.DeadLetters) {
		out.printf("  dead-lettered: %d in %s.dlq, the first %d read back:\n", s.DeadLettersQueued, s.Queue, len(s.DeadLetters))
	} else {
		out.printf("  dead-lettered: %d, read back from %s.dlq:\n", len(s.DeadLetters), s.Queue)
	}
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

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
