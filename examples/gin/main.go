// Command gin is what a real service embedding queuekit looks like: a Gin HTTP
// API that accepts orders and publishes them to a queue, a consumer that
// processes them in the background under a Supervisor, health endpoints for
// Kubernetes probes, admin endpoints to pause and resume intake, and a
// graceful shutdown that stops the HTTP server first and then drains the
// consumers, so that no accepted order is lost.
//
// It runs on the embedded in-memory broker, with no set-up:
//
//	go run ./examples/gin
//	curl -s -XPOST localhost:8080/orders -d '{"id":"o-1","sku":"book","quantity":2}'
//	curl -s localhost:8080/readyz
//	curl -s localhost:8080/metrics | grep queuekit_
//
// The same program runs on RabbitMQ or Kafka by swapping the Source built in
// newOrdersSource for one from broker/rabbitmq or broker/kafka.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
	"github.com/queuekit/queuekit/middleware"
	qprom "github.com/queuekit/queuekit/middleware/prometheus"
	"github.com/queuekit/queuekit/retry"
)

// Order is what POST /orders accepts and the consumer processes.
type Order struct {
	ID       string `json:"id" binding:"required"`
	SKU      string `json:"sku" binding:"required"`
	Quantity int    `json:"quantity" binding:"required,min=1"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "HTTP listen address")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		logger.Error("listen", "error", err)
		os.Exit(1)
	}
	logger.Info("listening", "addr", ln.Addr().String())
	if err := run(ctx, ln, logger); err != nil {
		logger.Error("exiting", "error", err)
		os.Exit(1)
	}
}

// service holds what the HTTP handlers need.
type service struct {
	broker  *memory.Broker
	sup     *consumer.Supervisor
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *qprom.Recorder
	wd      *health.Watchdog
	probes  *health.Handler
}

// run serves HTTP on ln and consumes orders until ctx is done, then shuts down
// in order: HTTP first (no new orders accepted), then the consumers (in-flight
// orders finish; the rest stay queued).
func run(ctx context.Context, ln net.Listener, logger *slog.Logger) error {
	return runWith(ctx, ln, logger, nil)
}

// runWith is run with a hook that sees the service once it is built (tests use it).
func runWith(ctx context.Context, ln net.Listener, logger *slog.Logger, built func(*service)) error {
	s := &service{broker: memory.NewBroker(), log: logger, reg: prometheus.NewRegistry()}
	defer s.broker.Close()

	var err error
	if s.metrics, err = qprom.New(s.reg); err != nil {
		return err
	}
	// A handler running past 30s is stuck: liveness fails, a metric counts it.
	s.wd, err = health.NewWatchdog(health.WatchdogConfig{
		Threshold: 30 * time.Second,
		Logger:    logger,
		OnStuck:   func(st health.Stuck) { s.metrics.HandlerStuck(st.Consumer) },
	})
	if err != nil {
		return err
	}

	src, err := s.broker.Source("orders", memory.SourceConfig{Prefetch: 16})
	if err != nil {
		return err
	}
	orders, err := consumer.New(src, s.ordersHandler(),
		consumer.WithName("orders"),
		consumer.WithConcurrency(8),
		consumer.WithMaxDeliveries(5),
		consumer.WithDrainTimeout(15*time.Second),
		consumer.WithLogger(logger),
		consumer.WithObserver(s.metrics.Observe),
	)
	if err != nil {
		return err
	}
	s.sup = &consumer.Supervisor{
		DrainTimeout: 15 * time.Second,
		Logger:       logger,
		OnEvent: func(e consumer.Event) {
			s.metrics.Event(e)
			switch e.Kind {
			case consumer.EventDrained:
				logger.Info("consumer drained", "runner", e.Runner, "handled", e.Drain.Handled,
					"given_back", e.Drain.GivenBack, "abandoned", e.Drain.Abandoned)
			case consumer.EventRestarting:
				logger.Warn("consumer restarting", "runner", e.Runner, "error", e.Err, "delay", e.Delay)
			}
		},
	}
	if err := s.sup.Add("orders", orders); err != nil {
		return err
	}
	if err := s.sup.Add("watchdog", s.wd); err != nil {
		return err
	}
	if s.probes, err = health.NewHandler(s.sup, health.WithWatchdog(s.wd)); err != nil {
		return err
	}

	if built != nil {
		built(s)
	}
	gin.SetMode(gin.ReleaseMode)
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}

	// The supervisor runs on its own context so that, at shutdown, it can
	// be stopped after the HTTP server: orders accepted until the very end
	// are either handled or left safely in the queue.
	supCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	supDone := make(chan error, 1)
	go func() { supDone <- s.sup.Run(supCtx) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()

	select {
	case <-ctx.Done():
	case err := <-srvDone:
		stopConsumers()
		<-supDone
		return fmt.Errorf("http server: %w", err)
	case err := <-supDone:
		// A fatal consumer error (say, invalid configuration): stop serving.
		shutdownHTTP(srv, logger)
		<-srvDone
		return fmt.Errorf("consumers: %w", err)
	}

	logger.Info("shutting down: HTTP first, then consumers")
	shutdownHTTP(srv, logger)
	<-srvDone
	stopConsumers()
	err = <-supDone
	st := s.broker.Stats("orders")
	logger.Info("stopped", "acked", st.Acked, "dead_lettered", st.DeadLettered, "still_queued", st.Ready)
	return err
}

func shutdownHTTP(srv *http.Server, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		logger.Warn("http shutdown", "error", err)
	}
}

// ordersHandler processes one order: decode (a bad payload is dead-lettered
// at once), then "reserve stock", with the standard middleware around it.
func (s *service) ordersHandler() consumer.Handler {
	process := consumer.JSON(func(ctx context.Context, m *consumer.Message, o Order) error {
		if o.Quantity > 1000 {
			return retry.Permanent(fmt.Errorf("order %s: quantity %d over the limit", o.ID, o.Quantity))
		}
		select {
		case <-time.After(20 * time.Millisecond): // reserve stock in a database
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		middleware.Logger(ctx).Debug("order reserved", "order", o.ID, "sku", o.SKU)
		return nil
	})
	return consumer.Chain(
		middleware.Log(s.log),
		middleware.Metrics(s.metrics),
		s.wd.Middleware("orders"),
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(50*time.Millisecond, time.Second), 3)),
		middleware.Timeout(5*time.Second),
	)(process)
}

func (s *service) routes() http.Handler {
	r := gin.New()
	r.Use(gin.Recovery())

	r.POST("/orders", s.postOrder)
	r.GET("/orders/stats", func(c *gin.Context) {
		c.JSON(http.StatusOK, gin.H{"orders": s.broker.Stats("orders"), "dead_letters": s.broker.Stats(memory.DeadLetterQueue("orders"))})
	})

	// Kubernetes probes: liveness fails for a stuck handler, readiness
	// unless every consumer is running (not starting, paused, draining,
	// reconnecting or failed). 200 or 503, with a JSON report.
	r.GET("/livez", gin.WrapH(s.probes.Live()))
	r.GET("/readyz", gin.WrapH(s.probes.Ready()))
	r.GET("/health", gin.WrapH(s.probes))
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})))

	admin := r.Group("/admin/consumers/:name")
	admin.POST("/pause", func(c *gin.Context) { s.pauseResume(c, s.sup.Pause) })
	admin.POST("/resume", func(c *gin.Context) { s.pauseResume(c, s.sup.Resume) })
	return r
}

func (s *service) postOrder(c *gin.Context) {
	var o Order
	if err := c.ShouldBindJSON(&o); err != nil {
		c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return
	}
	body, _ := json.Marshal(o) // the consumer decodes with encoding/json (consumer.JSON)
	if err := s.broker.Publish(c.Request.Context(), "orders", consumer.Message{ID: o.ID, Body: body}); err != nil {
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "queue unavailable"})
		return
	}
	c.JSON(http.StatusAccepted, gin.H{"id": o.ID, "status": "queued"})
}

func (s *service) pauseResume(c *gin.Context, op func(context.Context, string) error) {
	err := op(c.Request.Context(), c.Param("name"))
	switch {
	case errors.Is(err, consumer.ErrUnknownRunner):
		c.JSON(http.StatusNotFound, gin.H{"error": err.Error()})
	case err != nil:
		c.JSON(http.StatusConflict, gin.H{"error": err.Error()})
	default:
		c.JSON(http.StatusOK, s.sup.Health())
	}
}
