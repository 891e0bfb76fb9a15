package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/promqueuekit"
	"github.com/queuekit/queuekit/retry"
)

// publishTimeout bounds a publish made for POST /orders: a client waits at
// most this long for its 202 or 503.
const publishTimeout = 5 * time.Second

// HTTP timeouts. The largest request, a 64 KiB POST /orders body, arrives
// within readTimeout even at 8 KB/s, a poor mobile link; a client slower
// than that holds a connection for no good reason (issue 9: trickling
// clients used to hold theirs for 30 s each). Idle keep-alive connections
// are closed after -idle-timeout (see config).
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
)

// maxHeaderBytes bounds a request's headers (Go's default is 1 MiB): the
// service needs a few KB (an Authorization and an Idempotency-Key of at most
// 200 bytes), and with the default 400 connections each sending an
// unfinished 1 MiB header took 463 MB of memory (issue 9, hostile review).
// Larger headers get 431.
const maxHeaderBytes = 16 << 10

// connLinger bounds the wait, after intake closed, for clients to leave
// their keep-alive connections before the HTTP server closes them: see
// awaitConnsClosed.
const connLinger = time.Second

// connQuiet is how long no connection must be open for awaitConnsClosed to
// end before connLinger.
const connQuiet = 100 * time.Millisecond

// service holds what the HTTP handlers and the consumer need.
type service struct {
	cfg     config
	log     *slog.Logger
	backend *backend
	store   *store
	sup     *consumer.Supervisor
	reg     *prometheus.Registry
	metrics *promqueuekit.Recorder
	wd      *health.Watchdog
	probes  *health.Handler
	admin   http.Handler // the admin page and API (admin.go)
	// unavailable holds the items the handler refuses for good
	// (-unavailable-items; see processOrder).
	unavailable atomic.Pointer[map[string]bool]
	// secret keys the derivation of order ids from Idempotency-Keys.
	secret []byte
	// conns counts the HTTP connections open (http.Server.ConnState).
	conns atomic.Int64
	// idle lists the idle keep-alive connections, closed first when a new
	// connection waits for one of the -max-conns slots.
	idle idleConns

	// notReady turns /readyz to 503: the first step of shutdown.
	notReady atomic.Bool
	// intake gates POST /orders: handlers hold it shared while they publish;
	// stopIntake takes it exclusively, so that once intakeClosed is set no
	// publish is in progress and none starts.
	intake       sync.RWMutex
	intakeClosed atomic.Bool

	drainMu sync.Mutex
	drains  []consumer.DrainReport
	// leftAtStop is the report's left: the orders waiting at the broker
	// after the consumers stopped, -1 when the broker did not say. Set by
	// report, at the end of run.
	leftAtStop int
}

// run serves HTTP on ln and consumes orders until ctx is done, then shuts
// down in order (see the package documentation). It returns nil after a clean
// shutdown.
func run(ctx context.Context, cfg config, ln net.Listener, logger *slog.Logger) error {
	return runWith(ctx, cfg, ln, logger, nil)
}

// runWith is run with a hook that sees the service once it is built (tests
// use it).
func runWith(ctx context.Context, cfg config, ln net.Listener, logger *slog.Logger, built func(*service)) (err error) {
	defer ln.Close()
	s := &service{cfg: cfg, log: logger, store: newStore(cfg.maxOrders), reg: prometheus.NewRegistry(), secret: cfg.orderIDSecret}
	if len(s.secret) == 0 {
		if s.secret, err = newOrderIDSecret(); err != nil {
			return fmt.Errorf("order id secret: %w", err)
		}
		logger.Info("order ids are derived from Idempotency-Keys with a secret of this process: set ORDER_ID_SECRET so that a retry names the same order after a restart or on another replica")
	}
	if s.backend, err = newBackend(ctx, cfg, logger); err != nil {
		return err
	}
	defer func() {
		// The consumer closed its source when it stopped; the publisher
		// is the service's to close, once intake stopped.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if cerr := s.backend.pub.Close(cctx); cerr != nil && err == nil {
			err = fmt.Errorf("closing the publisher: %w", cerr)
		}
		if s.backend.close != nil {
			s.backend.close()
		}
	}()
	if err := s.build(); err != nil {
		return err
	}
	if built != nil {
		built(s)
	}

	gin.SetMode(gin.ReleaseMode)
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       s.cfg.idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState: func(c net.Conn, st http.ConnState) {
			s.idle.track(c, st)
			switch st {
			case http.StateNew:
				s.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				s.conns.Add(-1)
			}
		},
	}

	// The supervisor runs on a context of its own so that it stops after the
	// intake of orders has: an order accepted until the very end is either
	// processed or left in the queue.
	supCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	supDone := make(chan error, 1)
	go func() { supDone <- s.sup.Run(supCtx) }()
	srvDone := make(chan error, 1)
	// At most -max-conns connections at once: each costs a file descriptor
	// and buffers, and slow clients could otherwise open them until the
	// process runs out of descriptors.
	limited := newLimitListener(ln, cfg.maxConns)
	limited.reclaim = s.idle.closeOldest
	go func() { srvDone <- srv.Serve(limited) }()
	logger.Info("listening", "addr", ln.Addr().String(), "broker", s.backend.name, "queue", cfg.queue)
	if s.backend.name == "memory" {
		logger.Warn("in-memory broker: queued orders end with the process; for development and tests (set AMQP_URL or KAFKA_BROKERS for a real broker)")
	}
	if cfg.adminToken == "" {
		logger.Info("admin endpoints answer loopback requests to localhost, 127.0.0.1 or [::1] only (set ADMIN_TOKEN to allow others with a bearer token)")
	}

	select {
	case <-ctx.Done():
	case err := <-srvDone:
		s.stopIntake()
		stopConsumers()
		<-supDone
		return fmt.Errorf("http server: %w", err)
	case err := <-supDone:
		// A fatal consumer error (say, a queue that cannot be declared):
		// stop serving and exit non-zero, so the orchestrator sees it.
		s.stopIntake()
		shutdownHTTP(srv, logger)
		<-srvDone
		return fmt.Errorf("consumers: %w", err)
	}

	logger.Info("shutting down: readiness off, then order intake, then consumers, then HTTP")
	s.notReady.Store(true) // /readyz answers 503 from now on
	if cfg.shutdownDelay > 0 {
		// Orders are still accepted while load balancers notice.
		time.Sleep(cfg.shutdownDelay)
	}
	s.stopIntake()
	lingerUntil := time.Now().Add(connLinger)
	stopConsumers()
	supErr := <-supDone
	s.awaitConnsClosed(lingerUntil, connQuiet)
	shutdownHTTP(srv, logger)
	if err := <-srvDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("http server", "error", err)
	}
	s.report()
	// Run returns an error only for a fatal failure. A drain that ran out
	// of time is no failure of the service: the abandoned orders are
	// redelivered, and the report counts them.
	if supErr != nil {
		return fmt.Errorf("consumers: %w", supErr)
	}
	return nil
}

// build makes the metrics, the watchdog, the consumer and the Supervisor.
func (s *service) build() error {
	var err error
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if s.metrics, err = promqueuekit.New(s.reg); err != nil {
		return err
	}
	// A handler running past 30 s is stuck: liveness fails, a metric counts it.
	s.wd, err = health.NewWatchdog(health.WatchdogConfig{
		Threshold: 30 * time.Second,
		Logger:    s.log,
		OnStuck:   s.metrics.HandlerStuck,
	})
	if err != nil {
		return err
	}
	src, err := s.backend.source()
	if err != nil {
		return err
	}
	opts := []consumer.Option{
		consumer.WithConcurrency(s.cfg.concurrency),
		consumer.WithMaxDeliveries(5),
		consumer.WithDrainTimeout(s.cfg.drainTimeout),
		consumer.WithLogger(s.log),
		consumer.WithObserver(s.observe),
	}
	// The metrics, in one line: the Recorder's middleware, observer and
	// event hook, labelled with the name the consumer is added under.
	orders, err := consumer.New(src, s.ordersHandler(), append(opts, s.metrics.Options()...)...)
	if err != nil {
		return errors.Join(err, closeSource(src))
	}
	s.sup = &consumer.Supervisor{Logger: s.log, OnEvent: s.onEvent}
	// The name the consumer is added under is its name in logs, metrics
	// and health, and on /admin/.
	if err := s.sup.Add(s.cfg.queue, orders); err != nil {
		return err
	}
	if err := s.sup.Add("watchdog", s.wd); err != nil {
		return err
	}
	// The backlog at the broker — the RabbitMQ queue's ready messages, the
	// Kafka group's lag — as metrics, read through the consumer's cache,
	// which the full health report shares.
	backlog, err := promqueuekit.NewBacklogCollector(s.sup)
	if err != nil {
		return err
	}
	if err := s.reg.Register(backlog); err != nil {
		return err
	}
	s.probes, err = health.NewHandler(s.sup, health.WithWatchdog(s.wd))
	if err != nil {
		return err
	}
	s.setUnavailable(s.cfg.unavailableItems)
	s.admin, err = s.newAdmin()
	return err
}

// closeSource closes a source that no consumer took, bounded.
func closeSource(src broker.Source) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return src.Close(ctx)
}

// ordersHandler is the consumer's handler: decode (a bad payload is
// dead-lettered at once), then process, inside the standard middleware in
// the recommended order (see the middleware package). The metrics
// middleware, from the Recorder's options, goes around all of it.
func (s *service) ordersHandler() consumer.Handler {
	return consumer.Chain(
		middleware.Log(s.log),
		s.wd.Middleware(),
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(50*time.Millisecond, time.Second), 3)),
		middleware.Timeout(5*time.Second),
	)(consumer.JSON(s.processOrder))
}

// observe sees every settlement (as the Recorder's observer does, for the
// metrics): it records the orders that were dead-lettered.
func (s *service) observe(_ context.Context, m *broker.Message, st consumer.Settlement, err error) {
	if st == consumer.SettledDeadLetter && err == nil {
		id := orderID(m)
		// The order, when the message holds a valid one, so that a
		// forgotten order is taken in again with its digest (see
		// store.finish); an invalid one is not stored.
		var o *Order
		var dec Order
		if json.Unmarshal(m.Body, &dec) == nil && (OrderRequest{Item: dec.Item, Quantity: dec.Quantity}).validate() == nil {
			o = &dec
		}
		if s.store.finish(id, statusFailed, m.Attempt, "dead-lettered after attempt "+fmt.Sprint(m.Attempt), o) {
			s.log.Warn("order failed: dead-lettered", "order", id, "attempt", m.Attempt)
		}
	}
}

// orderID is the id of the order m carries: its order-id header, or, for a
// message published by other means, the broker's message id.
func orderID(m *broker.Message) string {
	if id := m.Header[headerOrderID]; id != "" {
		return id
	}
	return m.ID
}

// onEvent sees the Supervisor's events (the Recorder counts them through the
// consumer's own hook).
func (s *service) onEvent(e consumer.Event) {
	switch e.Kind {
	case consumer.EventDrained:
		s.drainMu.Lock()
		s.drains = append(s.drains, e.Drain)
		s.drainMu.Unlock()
	case consumer.EventRestarting:
		s.log.Warn("consumer restarting", "runner", e.Runner, "error", e.Err, "delay", e.Delay)
	}
}

// stopIntake refuses new orders and waits for the publishes in progress.
func (s *service) stopIntake() {
	s.notReady.Store(true)
	s.intake.Lock()
	s.intakeClosed.Store(true)
	s.intake.Unlock()
}

// awaitConnsClosed waits until no HTTP connection has been open for quiet,
// or until deadline. Since readiness went off, every answer carries
// Connection: close (see closeWhenNotReady), so a client that is still
// sending leaves its keep-alive connection after its next answer. Closing
// the connection under it instead, as http.Server.Shutdown does with idle
// connections, races that client's next request, which then gets EOF or a
// reset rather than an answer (issue 9: 6-9 requests at every shutdown
// under load).
//
// The count is 0 for a moment whenever the last client was answered and
// has not reconnected yet: ending the wait then closed the listener with
// the reconnecting clients in its accept queue, and they got resets
// (issue 9, hostile review). Hence the quiet period. A client that goes on
// sending after its 503 for longer than deadline can still have a new
// connection reset when the listener closes: nothing can tell the kernel
// to stop queueing connections and refuse them at once.
func (s *service) awaitConnsClosed(deadline time.Time, quiet time.Duration) {
	var zeroSince time.Time
	for time.Now().Before(deadline) {
		if s.conns.Load() > 0 {
			zeroSince = time.Time{}
		} else if zeroSince.IsZero() {
			zeroSince = time.Now()
		} else if time.Since(zeroSince) >= quiet {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closeWhenNotReady asks clients, from the start of shutdown, to close
// their connection after each answer (see awaitConnsClosed).
func (s *service) closeWhenNotReady(c *gin.Context) {
	if s.notReady.Load() {
		c.Header("Connection", "close")
	}
}

// left asks the broker, through a source of its own (the consumer's is
// closed by now), how many orders wait in the queue: the queue's ready
// messages, or the Kafka group's lag. ok is false when the broker does not
// say.
func (s *service) left(ctx context.Context) (n int, ok bool) {
	src, err := s.backend.source()
	if err != nil {
		return 0, false
	}
	defer closeSource(src)
	br, isReporter := src.(broker.BacklogReporter)
	if !isReporter {
		return 0, false
	}
	b, err := br.Backlog(ctx)
	return int(b.Messages), err == nil
}

// report logs what became of the orders this process accepted. On the
// in-memory broker, whose queue ends with the process, processed + left +
// failed accounts for every accepted order (when no order was processed
// twice). On RabbitMQ, left is the queue's ready messages after the drain,
// and on Kafka the group's lag after its last commit: what the next run
// processes.
func (s *service) report() {
	accepted, processed, failed := s.store.counts()
	attrs := []any{"broker", s.backend.name, "accepted", accepted, "processed", processed, "failed", failed}
	attrs = append(attrs, "forgotten", s.store.forgottenCount()) // by the bounded order store
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.leftAtStop = -1
	if left, ok := s.left(ctx); ok {
		s.leftAtStop = left
		attrs = append(attrs, "left", left) // in the queue, for the next run (RabbitMQ: all of it, other producers' too)
	} else {
		attrs = append(attrs, "left", "unknown")
	}
	var handled, givenBack, abandoned int
	s.drainMu.Lock()
	for _, d := range s.drains {
		handled, givenBack, abandoned = handled+d.Handled, givenBack+d.GivenBack, abandoned+d.Abandoned
	}
	s.drainMu.Unlock()
	attrs = append(attrs, "drain_handled", handled, "drain_given_back", givenBack, "drain_abandoned", abandoned)
	s.log.Info("shutdown report", attrs...)
}

func shutdownHTTP(srv *http.Server, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		logger.Warn("http shutdown", "error", err)
	}
}

func (s *service) routes() http.Handler {
	r := gin.New()
	r.Use(gin.Recovery(), s.closeWhenNotReady)

	r.POST("/orders", s.postOrder)
	r.GET("/orders/:id", s.getOrder)

	// Kubernetes probes: liveness fails for a stuck handler; readiness
	// unless every consumer is running (not starting, paused, draining,
	// reconnecting or failed), and from the first moment of shutdown.
	r.GET("/healthz", gin.WrapH(s.probes.Live()))
	r.GET("/readyz", s.readyz)
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})))

	// The admin page and JSON API (package admin, see admin.go), under
	// http.StripPrefix so that it serves its routes exactly; "/admin" is
	// redirected to "/admin/" by Gin.
	r.Any("/admin/*any", gin.WrapH(http.StripPrefix("/admin", s.admin)))
	return r
}

func (s *service) readyz(c *gin.Context) {
	if !s.notReady.Load() {
		s.probes.Ready().ServeHTTP(c.Writer, c.Request)
		return
	}
	// Shutting down: not ready, whatever the consumers' states; the body is
	// the usual report, with the reason.
	rep := s.probes.Report()
	rep.Status, rep.Ready = "unavailable", false
	c.JSON(http.StatusServiceUnavailable, struct {
		health.Report
		Reason string `json:"reason"`
	}{rep, "shutting down"})
}

func (s *service) postOrder(c *gin.Context) {
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxBodySize)
	req, err := decodeOrderRequest(c.Request.Body)
	if err != nil {
		var (
			tooLarge *http.MaxBytesError
			readErr  *bodyReadError
			netErr   net.Error
		)
		switch {
		case errors.As(err, &tooLarge):
			c.JSON(http.StatusRequestEntityTooLarge, gin.H{"error": fmt.Sprintf("body larger than %d bytes", maxBodySize)})
		case errors.As(err, &netErr) && netErr.Timeout():
			c.Header("Connection", "close")
			c.JSON(http.StatusRequestTimeout, gin.H{"error": fmt.Sprintf("the body did not arrive within %v", readTimeout)})
		case errors.As(err, &readErr):
			c.Header("Connection", "close")
			c.JSON(http.StatusBadRequest, gin.H{"error": "cannot read the body"})
		default:
			c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		}
		return
	}
	key := c.GetHeader("Idempotency-Key")
	if len(key) > maxIdempotencyKey {
		c.JSON(http.StatusBadRequest, gin.H{"error": fmt.Sprintf("Idempotency-Key longer than %d bytes", maxIdempotencyKey)})
		return
	}

	s.intake.RLock()
	defer s.intake.RUnlock()
	if s.intakeClosed.Load() {
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "shutting down: not accepting orders"})
		return
	}
	if s.backend.full != nil && s.backend.full() {
		c.Header("Retry-After", "1")
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "too many orders waiting; try again shortly"})
		return
	}
	// With an Idempotency-Key, a client that retries (after a timeout, say)
	// gets the same order id: the order is published again at worst, and
	// processing, keyed by id, handles it once.
	id, err := newOrderID(s.secret, key)
	if err != nil {
		c.JSON(http.StatusInternalServerError, gin.H{"error": "cannot make an order id"})
		return
	}
	o := Order{ID: id, Item: req.Item, Quantity: req.Quantity, AcceptedAt: time.Now().UTC()}
	msg, err := broker.NewJSON(o) // the counterpart of the consumer's consumer.JSON
	if err != nil {
		c.JSON(http.StatusInternalServerError, gin.H{"error": "cannot encode the order"})
		return
	}
	msg.ID, msg.Key, msg.Header[headerOrderID] = id, []byte(id), id
	// Reserved before publishing: the consumer may be faster than this
	// handler, and a concurrent retry must not publish it too.
	prev, cl := s.store.reserve(o, req.digest())
	switch cl {
	case claimedSame:
		c.Header("Location", "/orders/"+id)
		c.JSON(http.StatusAccepted, gin.H{"id": id, "status": prev.Status})
		return
	case claimedOther:
		// As payment APIs do: the key names one order; silently
		// answering with the first one would drop the second.
		c.JSON(http.StatusUnprocessableEntity, gin.H{"error": "this Idempotency-Key was used for another order: use a new key for a new order"})
		return
	case claimedBusy:
		c.Header("Retry-After", "1")
		c.JSON(http.StatusConflict, gin.H{"error": "a request with this Idempotency-Key is in progress; try again shortly"})
		return
	}
	// The publish does not end when the client goes away: a publish cut
	// off half-way leaves the order in an unknown state.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), publishTimeout)
	defer cancel()
	if err := s.publish(ctx, msg); err != nil {
		s.store.forget(id)
		s.log.Warn("publish failed", "order", id, "error", err)
		// A failed publish may still have reached the broker (a lost
		// confirm): retrying with the same Idempotency-Key is safe.
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "the order queue is unavailable; try again (with the same Idempotency-Key to avoid a duplicate order)"})
		return
	}
	s.store.published(id)
	c.Header("Location", "/orders/"+id)
	c.JSON(http.StatusAccepted, gin.H{"id": id, "status": statusAccepted})
}

// publish sends m to the queue, and returns once the broker has it (memory:
// queued; RabbitMQ: confirmed; Kafka: acknowledged by the replicas). Every
// broker takes the same call: the destination is named like the queue, and
// m.Key (the order id) is RabbitMQ's routing key and Kafka's partition key.
func (s *service) publish(ctx context.Context, m *broker.Message) error {
	return s.backend.pub.Publish(ctx, s.cfg.queue, m)
}

func (s *service) getOrder(c *gin.Context) {
	o, ok := s.store.get(c.Param("id"))
	if !ok {
		c.JSON(http.StatusNotFound, gin.H{"error": "no such order in this process"})
		return
	}
	c.JSON(http.StatusOK, o)
}
