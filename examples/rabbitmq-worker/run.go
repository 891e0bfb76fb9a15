package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

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
	// Until the Supervisor runs the consumer, which closes it when it
	// stops, the source is the run's to close.
	ownSource := true
	defer func() {
		if ownSource {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = src.Close(cctx)
		}
	}()
	dlq, retryQ := cfg.Queue+".dlq", cfg.Queue+".retry" // the Topology defaults
	out.printf("queue %s on %s (quorum; dead letters go to %s, delayed retries wait in %s)\n",
		cfg.Queue, rabbitmq.RedactURL(cfg.URL), dlq, retryQ)

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
	// the queue does not exist. The source declares what it would declare
	// when it connects (broker.TopologyDeclarer), on its own connection. A
	// fresh name is first checked to be unused.
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
		err := src.DeclareTopology(ctx)
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
		return nil, fmt.Errorf("could not use RabbitMQ at %s: %w", rabbitmq.RedactURL(cfg.URL), err)
	default:
		if lastErr == nil {
			lastErr = err
		}
		return nil, fmt.Errorf("could not connect to RabbitMQ at %s within %v: %w", rabbitmq.RedactURL(cfg.URL), cfg.Timeout, lastErr)
	}

	ledger := newLedger(map[string]int{"order-8": 2}) // order-8: two 503s, then OK
	var fixed atomic.Bool                             // set by the fix of a -redrive run
	handler := consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
		convert := toEUR
		if fixed.Load() {
			convert = toEURFixed
		}
		cents, err := convert(o.Amount, o.Currency)
		if err != nil {
			return retry.Permanent(err) // bad data: retrying cannot help
		}
		if err := ledger.Post(ctx, o.ID, cents); err != nil {
			return err
		}
		sum.record(m.ID, m.Attempt, broker.Redriven(m.Header))
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
		consumer.WithConcurrency(concurrency),
		consumer.WithMaxDeliveries(maxDeliveries),
		consumer.WithDrainTimeout(5*time.Second),
		consumer.WithLogger(cfg.Logger),
		consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, err error) {
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
		Logger: cfg.Logger,
		OnEvent: func(e consumer.Event) {
			if e.Kind == consumer.EventDrained {
				out.printf("drained: %d in flight finished, %d given back, %d abandoned, in %v\n",
					e.Drain.Handled, e.Drain.GivenBack, e.Drain.Abandoned, e.Drain.Duration.Round(time.Millisecond))
			}
		},
	}
	if err := sup.Add("orders", c); err != nil { // names the consumer: logs, events, health
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
	ownSource = false
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
	msgs := batch(cfg.Queue)
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
			err := pub.Publish(pctx, "", msg)
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
			return nil, fmt.Errorf("publish %s: %w", msg.ID, err)
		}
		sum.Published = append(sum.Published, msg.ID)
	}
	out.printf("published %d orders, each confirmed by the broker\n", len(sum.Published))

	start := time.Now()
	select {
	case <-settled.expect(sum.Published):
		next := "shutting down"
		if cfg.Redrive {
			next = "the operator's turn"
		}
		out.printf("all %d orders settled in %v; %s\n", len(sum.Published), time.Since(start).Round(time.Millisecond), next)
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

	// The dead letters, through the library's dead-letter API: the same
	// as `queuekit dlq` and the admin page use. It connects on first use,
	// and is closed before the queues are deleted.
	dls, err := rabbitmq.NewDeadLetters(rabbitmq.DeadLetterConfig{Dialer: dialer, Queue: cfg.Queue, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = dls.Close(cctx)
	}()

	// -redrive: the operator's part, while the worker runs.
	if cfg.Redrive {
		err := redriveAfterFix(limit, dls, cfg.Queue, func() { fixed.Store(true) }, settled, sum, out)
		if err != nil {
			_ = stopSupervisor()
			if ctx.Err() != nil {
				sum.Interrupted = true
				out.printf("interrupted: %v; shutting down\n", err)
				return sum, nil
			}
			return nil, err
		}
		out.printf("shutting down\n")
	}
	if err := stopSupervisor(); err != nil {
		return nil, err
	}

	// Read the dead letters back, with the reasons the runtime wrote in
	// their headers. They stay in the dead-letter queue (unless deleted
	// below): this is what an operator would look at.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	sum.DeadLetters, sum.DeadLettersQueued, err = readDeadLetters(rctx, dls, maxShown)
	if err != nil {
		return nil, err
	}
	finished = true
	sum.print(out)
	return sum, nil
}
