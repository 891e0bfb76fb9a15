// Command rabbitmq-worker shows a RabbitMQ worker that never loses a message
// and never retries one forever: what it cannot handle goes to a dead-letter
// queue with the reason, and transient failures are retried later through a
// delayed-retry queue, without holding a worker while they wait.
//
// It declares its topology (a quorum queue, its dead-letter exchange and queue,
// and its retry queue) with its source's DeclareTopology, as a real producer does
// before publishing, publishes a batch of orders with publisher confirms —
// good ones, one whose body does not decode, one that the (simulated) ledger
// refuses twice with a 503 before taking it, and one that hits a bug every time
// — consumes them under a Supervisor with the standard middleware, waits until
// every order is settled, shuts down gracefully, reads the dead letters back
// with their reasons (rabbitmq.NewDeadLetters(…).List, which consumes
// nothing), deletes the queues it made and prints a summary.
//
// With -redrive it adds what an operator does next, while the worker still
// runs: list the dead letters and why they failed, fix the bug (a switch in
// the worker stands in for a new release), redrive the dead letters of that
// bug (selected by their reason, a dry run first), and wait until the worker
// handled them. The order whose body does not decode stays a dead letter: no
// fix of the worker changes it.
//
//	go run ./examples/rabbitmq-worker      # local broker, amqp://guest:guest@127.0.0.1:5672/
//	go run ./examples/rabbitmq-worker -redrive
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
//
// One concept per file:
//
//	main.go         flags, the environment, signals
//	run.go          the program: declare, consume, publish, wait, drain, read back
//	orders.go       the orders, the (simulated) ledger and the conversion bug
//	retrylater.go   the middleware that sends failures through the retry queue
//	settlements.go  knowing when every order had its final settlement
//	summary.go      what is printed
//	deadletters.go  the dead letters: read back, and -redrive's list, fix, redrive
//	topology.go     checking and deleting only the queues the run created
//	dial.go         the plain amqp091-go connection topology.go uses
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/queuekit/queuekit/broker/rabbitmq"
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

// config is what run needs from main.
type config struct {
	// URL of the broker. It may hold a password: print rabbitmq.RedactURL(URL) only.
	URL string
	// Queue to use, which must start with queuePrefix; the run keeps it at
	// the end, since it may not have created it. Empty means a fresh name,
	// for queues that the run creates and deletes at the end.
	Queue string
	// Keep leaves the fresh queues in place at the end (to look at the dead
	// letters in the management UI or with `queuekit dlq`) instead of
	// deleting them.
	Keep bool
	// Redrive adds the operator's part once every order is settled: list
	// the dead letters with their reasons, fix the bug, redrive the dead
	// letters it caused, and wait until the worker handled them.
	Redrive bool
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
dead-lettered with the reason. With -redrive, then lists the dead letters,
fixes the bug and redrives the dead letters it caused. The broker URL comes
from $QUEUEKIT_AMQP_URL.

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
	flag.StringVar(&cfg.URL, "url", "", "AMQP URL of the broker; other users can read it in ps, so prefer $QUEUEKIT_AMQP_URL (default: $QUEUEKIT_AMQP_URL, else "+rabbitmq.RedactURL(defaultURL)+")")
	flag.StringVar(&cfg.Queue, "queue", "", "use this queue, whose name must start with "+strconv.Quote(queuePrefix)+", and keep it at the end (default: a fresh queue, deleted at the end)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the fresh queues at the end instead of deleting them")
	flag.BoolVar(&cfg.Redrive, "redrive", false, "once every order is settled, list the dead letters, fix the bug, redrive the dead letters it caused and wait until they are handled")
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

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
