// Command supervisor runs three consumers (orders, emails, invoices) under one
// consumer.Supervisor on the embedded in-memory broker, and shows what the
// Supervisor does when one of them fails: the broker cancels the emails
// subscription, every start of that consumer fails until the queue is back,
// and the Supervisor restarts it with a growing, jittered delay while the
// other two keep handling their messages. It prints the Supervisor's events
// and its Health snapshot along the way, then stops everything gracefully, as
// on SIGTERM, with work in flight, and prints each consumer's drain report.
//
//	go run ./examples/supervisor
//
// The failure here is not fatal, so it is restarted. An error that restarting
// cannot fix — one marked with broker.Fatal, or invalid configuration
// (broker.ErrInvalidConfig) — is not: the Supervisor stops every runner and
// Run returns that error. Each "failed" line says which of the two it was.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

const (
	// work is how long a handler takes per message (pretend database write).
	work = 50 * time.Millisecond
	// batch is how many messages each queue gets per round.
	batch = 4
	// lastOrders is how many orders the last round publishes; the program
	// stops while the first of them are being handled.
	lastOrders = 10
)

var queues = []string{"orders", "emails", "invoices"}

// errQueueGone is why the broker cancels the emails subscription: in
// RabbitMQ terms, the queue was deleted (basic.cancel) and is not back yet.
var errQueueGone = errors.New("queue emails was deleted")

func main() {
	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Warnings and errors (a runner failed, a message was dead-lettered) go
	// to stderr; what the example narrates goes to stdout.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "supervisor:", err)
		os.Exit(1)
	}
}

// run plays the scenario and returns when every consumer has stopped. It
// returns nil after a graceful stop, also when ctx ends early (Ctrl-C).
func run(ctx context.Context, out io.Writer, logger *slog.Logger) error {
	out = &lockedWriter{w: out} // the event hook and this goroutine both print
	b := memory.NewBroker()
	defer b.Close()

	events := &eventLog{}
	sup := &consumer.Supervisor{
		// Restart is left nil, the default for production: the n-th restart
		// waits between half and all of 100ms·2ⁿ⁻¹, capped at 30s, so the
		// delay never shrinks between failures, and starts over once a
		// runner has stayed up for RestartReset (1 minute).
		Logger: logger,
		// OnEvent runs on one goroutine of the Supervisor, in order; it must
		// be quick. Here it prints and records.
		OnEvent: func(e consumer.Event) {
			printEvent(out, e)
			events.add(e)
		},
	}

	// One publisher for every queue: a broker.Publisher, as on RabbitMQ
	// and Kafka.
	pub := b.Publisher()
	defer pub.Close(context.Background())
	sources := make(map[string]*memory.Source)
	for _, q := range queues {
		src, err := b.Source(q, memory.SourceConfig{Prefetch: 2})
		if err != nil {
			return err
		}
		sources[q] = src
		h := consumer.Chain(middleware.Log(logger), middleware.Recover())(handler(work))
		c, err := consumer.New(src, h,
			consumer.WithConcurrency(2),
			// On shutdown, in-flight handlers get this long to finish;
			// then their contexts are cancelled and their messages given
			// back.
			consumer.WithDrainTimeout(10*time.Second),
			consumer.WithLogger(logger),
		)
		if err != nil {
			return err
		}
		// Add names the consumer, for its logs, events and health.
		if err := sup.Add(q, c); err != nil {
			return err
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	supErr := make(chan error, 1)
	go func() { supErr <- sup.Run(runCtx) }()

	err := scenario(runCtx, out, b, pub, sources, sup, events)
	cancel() // graceful stop of every runner, as on SIGTERM
	if serr := <-supErr; serr != nil {
		return fmt.Errorf("supervisor: %w", serr)
	}
	if err != nil && ctx.Err() == nil {
		return err
	}

	fmt.Fprintln(out, "\n== stopped")
	printHealth(out, sup.Health())
	for _, q := range queues {
		st := b.Stats(q)
		fmt.Fprintf(out, "%-8s published %2d, acked %2d, still queued %d, unacked %d, dead-lettered %d\n",
			q, st.Published, st.Acked, st.Ready, st.Unacked, st.DeadLettered)
	}
	return nil
}

// scenario publishes, injects the failure, and waits for each step. It
// returns ctx's error if ctx ends first.
func scenario(ctx context.Context, out io.Writer, b *memory.Broker, pub broker.Publisher, sources map[string]*memory.Source,
	sup *consumer.Supervisor, events *eventLog) error {
	acked := func(q string, n int) func() bool {
		return func() bool { return b.Stats(q).Acked >= n }
	}

	fmt.Fprintln(out, "== three consumers start; each gets", batch, "messages")
	if err := publish(ctx, pub, batch, queues...); err != nil {
		return err
	}
	if err := waitFor(ctx, "first batch handled", acked("orders", batch), acked("emails", batch), acked("invoices", batch)); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n== the broker cancels the emails subscription; until the queue is back, every start of that consumer fails")
	sources["emails"].Cancel(errQueueGone)
	if err := publish(ctx, pub, batch, queues...); err != nil {
		return err
	}
	// The other two go on; emails fails and is restarted, twice at least.
	if err := waitFor(ctx, "emails restarted twice while the others handled their second batch",
		func() bool { return events.count("emails", consumer.EventRestarting) >= 2 },
		acked("orders", 2*batch), acked("invoices", 2*batch)); err != nil {
		return err
	}
	fmt.Fprintln(out, "\n== health while emails waits for its next restart")
	printHealth(out, sup.Health())

	fmt.Fprintln(out, "\n== the emails queue is back")
	if err := sources["emails"].Resume(ctx); err != nil {
		return err
	}
	if err := waitFor(ctx, "emails caught up", acked("emails", 2*batch),
		func() bool { return sup.Health().Ready }); err != nil {
		return err
	}
	fmt.Fprintln(out, "\n== health after the restart")
	printHealth(out, sup.Health())

	fmt.Fprintln(out, "\n== stop, as on SIGTERM, while 2 of", lastOrders, "new orders are being handled")
	if err := publish(ctx, pub, lastOrders, "orders"); err != nil {
		return err
	}
	return waitFor(ctx, "2 orders in flight", func() bool { return b.Stats("orders").Unacked == 2 })
}

// handler pretends to write each message to a database, which takes d. It
// gives up when its context is cancelled (at the drain deadline), so that a
// stuck message cannot hold up the shutdown.
func handler(d time.Duration) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
}

// publish puts n messages on each of the queues.
func publish(ctx context.Context, pub broker.Publisher, n int, queues ...string) error {
	for _, q := range queues {
		for range n {
			if err := pub.Publish(ctx, q, &broker.Message{Body: []byte("{}")}); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitFor polls until every condition holds, ctx ends, or a generous
// deadline passes.
func waitFor(ctx context.Context, what string, conds ...func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		ok := true
		for _, c := range conds {
			ok = ok && c()
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

func printEvent(out io.Writer, e consumer.Event) {
	var detail string
	switch e.Kind {
	case consumer.EventFailed:
		kind := "will be restarted"
		if broker.IsFatal(e.Err) {
			kind = "fatal, not restarted"
		}
		detail = fmt.Sprintf("(%s): %v", kind, e.Err)
	case consumer.EventRestarting:
		detail = fmt.Sprintf("restart %d in %v", e.Restarts, e.Delay.Round(time.Millisecond))
	case consumer.EventDrained:
		detail = fmt.Sprintf("%d handled, %d given back, %d abandoned", e.Drain.Handled, e.Drain.GivenBack, e.Drain.Abandoned)
	default:
		// EventStopped carries nil for a clean stop, and an error wrapping
		// consumer.ErrDrainTimeout when in-flight handlers had to be
		// abandoned at the drain deadline.
		if e.Err != nil {
			detail = e.Err.Error()
		}
	}
	line := fmt.Sprintf("  event %-8s %-10s %s", e.Runner, e.Kind, detail)
	fmt.Fprintln(out, strings.TrimRight(line, " "))
}

func printHealth(out io.Writer, h consumer.Health) {
	fmt.Fprintf(out, "  ready=%v\n", h.Ready)
	for _, r := range h.Runners {
		line := fmt.Sprintf("  %-8s %-8s restarts=%d", r.Name, r.State, r.Restarts)
		if r.LastError != "" {
			line += " last_error=" + r.LastError
		}
		fmt.Fprintln(out, line)
	}
}

// eventLog counts the events the hook saw, by runner and kind, for the
// scenario to wait on.
type eventLog struct {
	mu   sync.Mutex
	seen map[string]int
}

func (l *eventLog) add(e consumer.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = make(map[string]int)
	}
	l.seen[e.Runner+"/"+e.Kind.String()]++
}

func (l *eventLog) count(runner string, k consumer.EventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[runner+"/"+k.String()]
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
