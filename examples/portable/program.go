package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

// This file is the program. It imports no adapter: it sees a broker.Publisher
// and a broker.Source, and would run unchanged on a broker that does not
// exist yet.

// Order is what the program publishes and consumes, as JSON.
type Order struct {
	// Run identifies the run that published the order, so that orders an
	// earlier, interrupted run left behind are told apart.
	Run      string `json:"run"`
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Cents    int    `json:"amount_cents"`
}

// config is what run needs besides the publisher and the source.
type config struct {
	// Dest is where the orders are published, and where the source reads
	// them from: a queue (memory), an exchange that routes to the queue of
	// the same name (RabbitMQ), or a topic (Kafka).
	Dest string
	// Orders is how many orders to publish (default 20).
	Orders int
	// Timeout bounds the run: declaring, publishing and handling every
	// order (default 1 minute).
	Timeout time.Duration
	// Logger receives the runtime's and the middleware's logs.
	Logger *slog.Logger
}

// customers key the orders: the routing key on RabbitMQ, the partition key on
// Kafka (so one customer's orders stay in one partition, in order).
var customers = []string{"ada", "grace", "edsger", "barbara"}

// concurrency is the number of handlers that run at once.
const concurrency = 4

// report is what a run observed.
type report struct {
	Dest      string
	Published int
	// Handled maps the ID of every order of this run that the handler took
	// to the number of times it took it: 1 everywhere in a clean run.
	Handled map[string]int
	// Earlier counts orders of an earlier run found in the queue or topic:
	// handled, acknowledged and not counted in Handled.
	Earlier int
	// Settled counts what the runtime did with the deliveries: in a clean run
	// only acknowledgements, one per order.
	Settled map[consumer.Settlement]int
	// Drain is the outcome of the graceful stop.
	Drain consumer.DrainReport
	// Interrupted is true when ctx ended (Ctrl-C) before every order was
	// handled.
	Interrupted bool
}

// run publishes cfg.Orders orders to cfg.Dest through pub, consumes them
// from src until every one was handled, stops the consumer gracefully and
// prints what happened. It owns pub and src: it closes both.
//
// Nothing in it depends on the broker. The one capability it looks for,
// broker.TopologyDeclarer, it finds by a type assertion, the way database/sql
// finds what a driver offers.
func run(ctx context.Context, pub broker.Publisher, src broker.Source, cfg config, stdout io.Writer) (*report, error) {
	if cfg.Orders <= 0 {
		cfg.Orders = 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	out := &printer{w: stdout}
	rep := &report{Dest: cfg.Dest, Handled: map[string]int{}, Settled: map[consumer.Settlement]int{}}
	runID := fmt.Sprintf("%08x", rand.Uint32())

	// limit bounds the run; ctx ending (Ctrl-C) ends it too, as an
	// interruption rather than a failure.
	limit, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = pub.Close(cctx)
	}()

	// The consumer, made first so that it owns src from here on: its
	// Shutdown closes it, on every path below.
	var mu sync.Mutex // guards rep while the handlers run
	all := make(chan struct{})
	handler := consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
		mu.Lock()
		defer mu.Unlock()
		if o.Run != runID {
			rep.Earlier++
			return nil
		}
		rep.Handled[o.ID]++
		if len(rep.Handled) == cfg.Orders && rep.Handled[o.ID] == 1 {
			close(all)
		}
		return nil
	})
	c, err := consumer.New(src, handler,
		consumer.WithName("orders"),
		consumer.WithConcurrency(concurrency),
		consumer.WithLogger(cfg.Logger),
		consumer.WithMiddleware(middleware.Log(cfg.Logger), middleware.Recover()),
		consumer.WithObserver(func(_ context.Context, _ *broker.Message, s consumer.Settlement, err error) {
			if err == nil {
				mu.Lock()
				rep.Settled[s]++
				mu.Unlock()
			}
		}),
		consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventDrained {
				mu.Lock()
				rep.Drain = e.Drain
				mu.Unlock()
			}
		}),
	)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return nil, errors.Join(err, src.Close(cctx))
	}
	shutdown := func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		return c.Shutdown(sctx)
	}
	stopped := func() (*report, error) {
		if err := shutdown(); err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			rep.Interrupted = true
			out.printf("interrupted: %d of %d orders handled\n", len(rep.Handled), rep.Published)
			return rep, nil
		}
		return nil, fmt.Errorf("only %d of %d orders handled within %v", len(rep.Handled), rep.Published, cfg.Timeout)
	}

	// A source that can declare its queue or topic does so before anything
	// is published: on RabbitMQ, until the queue is bound, the broker
	// returns the publisher's (mandatory) messages as unroutable.
	if d, ok := src.(broker.TopologyDeclarer); ok {
		if err := d.DeclareTopology(limit); err != nil {
			if limit.Err() != nil {
				return stopped()
			}
			return nil, errors.Join(fmt.Errorf("declare the topology: %w", err), shutdown())
		}
	}

	// Publish: each PublishJSON returns once the broker has taken the order
	// (queued; confirmed; acknowledged by the replicas).
	out.printf("publishing %d orders to %s, keyed by customer\n", cfg.Orders, cfg.Dest)
	for i := 1; i <= cfg.Orders; i++ {
		o := Order{Run: runID, ID: fmt.Sprintf("order-%d", i), Customer: customers[i%len(customers)], Cents: 100 * i}
		if err := broker.PublishJSON(limit, pub, cfg.Dest, []byte(o.Customer), o); err != nil {
			if limit.Err() != nil {
				return stopped()
			}
			// It may or may not have arrived; this run stops here.
			return nil, errors.Join(fmt.Errorf("publish %s: %w", o.ID, err), shutdown())
		}
		rep.Published++
	}
	out.printf("published %d orders, each taken by the broker before PublishJSON returned\n", rep.Published)

	// Consume until every order was handled.
	start := time.Now()
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-all:
	case err := <-runDone:
		return nil, fmt.Errorf("the consumer stopped: %w", err)
	case <-limit.Done():
		r, err := stopped()
		<-runDone
		return r, err
	}
	took := time.Since(start)
	if err := shutdown(); err != nil {
		return nil, fmt.Errorf("shut down: %w", err)
	}
	if err := <-runDone; err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
		return nil, fmt.Errorf("the consumer: %w", err)
	}

	mu.Lock()
	defer mu.Unlock()
	once, more := 0, 0
	for _, n := range rep.Handled {
		if n == 1 {
			once++
		} else {
			more++
		}
	}
	out.printf("handled %d of %d orders in %v: %d once, %d more than once\n",
		len(rep.Handled), rep.Published, took.Round(time.Millisecond), once, more)
	if rep.Earlier > 0 {
		out.printf("also handled %d orders an earlier run left behind\n", rep.Earlier)
	}
	var settled []string
	for _, s := range slices.Sorted(maps.Keys(rep.Settled)) {
		settled = append(settled, fmt.Sprintf("%d %s", rep.Settled[s], s))
	}
	out.printf("settled: %s\n", strings.Join(settled, ", "))
	out.printf("shut down gracefully: %d in flight finished, %d given back, %d abandoned\n",
		rep.Drain.Handled, rep.Drain.GivenBack, rep.Drain.Abandoned)
	return rep, nil
}

// printer serialises writes from the handlers and run.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, a...)
}
