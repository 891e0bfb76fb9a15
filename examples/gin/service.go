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
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// storeTimeout bounds the transaction of POST /orders (the order and its
// outbox row): a client waits at most this long for its 202 or 503.
const storeTimeout = 5 * time.Second

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
	db      *database // the orders, the outbox, the inbox (database.go)
	relay   *outbox.Relay
	sup     *consumer.Supervisor
	orders  *consumer.Consumer // the orders consumer, runner cfg.queue of sup
	reg     *prometheus.Registry
	metrics *promqueuekit.Recorder
	wd      *health.Watchdog
	probes  *health.Handler
	admin   http.Handler // the admin page and API (admin.go)
	// unavailable holds the items the handler refuses for good
	// (-unavailable-items; see processOrder).
	unavailable atomic.Pointer[map[string]bool]
	// reasons holds, by message, the error its handling ended with (see
	// keepReason).
	reasons sync.Map
	// secret keys the derivation of order ids from Idempotency-Keys.
	secret []byte
	// conns counts the HTTP connections open (http.Server.ConnState).
	conns atomic.Int64
	// idle lists the idle keep-alive connections, closed first when a new
	// connection waits for one of the -max-conns slots.
	idle idleConns

	// started is set once the database was reached and everything built:
	// until then /readyz answers 503 and the API 503 (see afterStart).
	started atomic.Bool
	// dbErr is the last error reaching the database at start (redacted),
	// for /readyz.
	dbErr atomic.Pointer[string]
	// fileGone, once set, says why the SQLite database file is no longer
	// the one opened (see watchFile): /readyz and POST /orders answer 503.
	fileGone atomic.Pointer[string]
	// notReady turns /readyz to 503: the first step of shutdown.
	notReady atomic.Bool
	// intake gates POST /orders: handlers hold it shared while they store
	// an order; stopIntake takes it exclusively, so that once intakeClosed
	// is set no order is being stored and none starts.
	intake       sync.RWMutex
	intakeClosed atomic.Bool

	// Counts of this process, for the shutdown report: orders it stored
	// (new ones, not retries), effects it committed, orders it recorded as
	// failed.
	accepted, processed, failed atomic.Int64

	drainMu sync.Mutex
	drains  []consumer.DrainReport
	// leftAtStop is the report's left: the orders waiting at the broker
	// after the consumers stopped plus those still in the outbox, -1 when
	// the broker did not say. Set by report, at the end of run.
	leftAtStop int
}

// counts returns the counts of this process (see service).
func (s *service) counts() (accepted, processed, failed int) {
	return int(s.accepted.Load()), int(s.processed.Load()), int(s.failed.Load())
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
	s := &service{cfg: cfg, log: logger, reg: prometheus.NewRegistry(), secret: cfg.orderIDSecret}

	// HTTP first: while the database cannot be reached, the probes answer
	// (live, not ready) and the API answers 503, rather than nothing.
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
	srvDone := make(chan error, 1)
	// At most -max-conns connections at once: each costs a file descriptor
	// and buffers, and slow clients could otherwise open them until the
	// process runs out of descriptors.
	limited := newLimitListener(ln, cfg.maxConns)
	limited.reclaim = s.idle.closeOldest
	go func() { srvDone <- srv.Serve(limited) }()
	logger.Info("listening", "addr", ln.Addr().String())
	stopHTTP := func() {
		s.stopIntake()
		shutdownHTTP(srv, logger)
		<-srvDone
	}

	if s.db, err = openDatabase(ctx, cfg, logger, s.setDBErr); err != nil {
		stopHTTP()
		if ctx.Err() != nil {
			logger.Info("stopped before the database could be reached", "error", err)
			return nil
		}
		return err
	}
	defer s.db.db.Close() // last: after the consumers, the relay and the publisher
	if len(s.secret) == 0 {
		// Read before started is set, which orders it before every
		// handler's read.
		s.secret = s.db.orderIDSecret
	}
	if s.db.file != nil {
		stopWatch := s.watchFile()
		defer stopWatch()
	}
	if s.backend, err = newBackend(ctx, cfg, logger, s.db); err != nil {
		stopHTTP()
		return err
	}
	defer func() {
		// The consumer closed its source when it stopped; the publisher
		// is the service's to close, once intake and the relay stopped.
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
		stopHTTP()
		return err
	}
	// Started before the hook: a test that got the service from it may
	// send requests at once (TestPostOrderRejectsBadInput got a 503 from
	// afterStart in the moment between the two).
	s.started.Store(true)
	if built != nil {
		built(s)
	}

	// The supervisor runs on a context of its own so that it stops after the
	// intake of orders has: an order accepted until the very end is either
	// processed or left in the queue.
	supCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	supDone := make(chan error, 1)
	go func() { supDone <- s.sup.Run(supCtx) }()
	logger.Info("started", "database", sqldb.Redact(cfg.databaseURL), "dialect", s.db.dialect.String(), "broker", s.backend.name, "queue", cfg.queue)
	if s.backend.name == "memory" {
		logger.Warn("in-memory broker: orders the relay handed to it and not yet processed end with the process (the outbox keeps only what it did not hand over); for development and tests")
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
		consumer.WithMaxDeliveries(maxDeliveries),
		consumer.WithDrainTimeout(s.cfg.drainTimeout),
		consumer.WithLogger(s.log),
		consumer.WithObserver(s.observe),
	}
	if s.cfg.killSwitch {
		// While the database is unavailable the consumer pauses instead
		// of spending the orders' delivery budgets (killswitch.go).
		opts = append(opts, consumer.WithKillSwitch(s.killSwitchConfig()))
	}
	// The metrics, in one line: the Recorder's middleware, observer and
	// event hook, labelled with the name the consumer is added under.
	orders, err := consumer.New(src, s.ordersHandler(), append(opts, s.metrics.Options()...)...)
	if err != nil {
		return errors.Join(err, closeSource(src))
	}
	s.orders = orders
	s.sup = &consumer.Supervisor{Logger: s.log, OnEvent: s.onEvent}
	// The name the consumer is added under is its name in logs, metrics
	// and health, and on /admin/.
	if err := s.sup.Add(s.cfg.queue, orders); err != nil {
		return err
	}
	if err := s.sup.Add("watchdog", s.wd); err != nil {
		return err
	}
	// The outbox relay: what POST /orders committed, it publishes to the
	// broker, and marks sent once the broker confirmed it (the memory
	// broker: once it took it). It publishes each order at least once,
	// across crashes; the inbox makes the effect happen once.
	if s.relay, err = s.db.outbox.Relay(s.backend.pub, outbox.RelayConfig{Logger: s.log}); err != nil {
		return err
	}
	if err := s.sup.Add("outbox-relay", s.relay); err != nil {
		return err
	}
	// Inbox keys older than its retention (7 days) are deleted: a
	// duplicate later than that would be processed again.
	if err := s.sup.Add("inbox-cleaner", s.db.inbox.Cleaner(time.Hour)); err != nil {
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

// maxDeliveries is the orders' delivery budget: an order that fails this
// many deliveries is dead-lettered.
const maxDeliveries = 5

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
		s.keepReason,
		middleware.Log(s.log),
		s.wd.Middleware(),
		middleware.Recover(),
		middleware.Retry(retry.MaxAttempts(retry.Exponential(50*time.Millisecond, time.Second), 3)),
		middleware.Timeout(5*time.Second),
	)(consumer.JSON(s.processOrder))
}

// keepReason records the error a message's handling ended with, for
// observe to store as the reason of an order that is dead-lettered (issue
// 12 review R4 #7: the order's error said "dead-lettered after attempt 1").
// The consumer settles the *broker.Message it handled, and observe deletes
// the entry at every settlement, so the map holds only messages in flight.
func (s *service) keepReason(next consumer.Handler) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		err := next.Handle(ctx, m)
		if err != nil {
			s.reasons.Store(m, err.Error())
		}
		return err
	})
}

// observe sees every settlement (as the Recorder's observer does, for the
// metrics): it records the orders that were dead-lettered.
func (s *service) observe(_ context.Context, m *broker.Message, st consumer.Settlement, err error) {
	reason, _ := s.reasons.LoadAndDelete(m)
	if st == consumer.SettledDeadLetter && err == nil {
		id := orderID(m)
		why, _ := reason.(string)
		if why == "" {
			why = "dead-lettered"
		}
		// The order, when the message holds a valid one, so that an order
		// published by other means is recorded with its digest; an
		// invalid one is recorded by id only.
		var o *Order
		var dec Order
		if json.Unmarshal(m.Body, &dec) == nil && (OrderRequest{Item: dec.Item, Quantity: dec.Quantity}).validate() == nil {
			o = &dec
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		changed, err := s.db.markFailed(ctx, id, o, m.Attempt, boundReason(why))
		switch {
		case err != nil:
			s.log.Error("order dead-lettered; recording it as failed failed", "order", id, "error", err)
		case changed:
			s.failed.Add(1)
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

// fileCheckInterval is how often the service checks that the SQLite
// database's path still names the file it opened.
const fileCheckInterval = time.Second

// watchFile checks every fileCheckInterval that the SQLite database file is
// still there (database.fileGone); once it is not, /readyz and POST /orders
// answer 503 with the reason, and an ERROR is logged, once. It returns a
// function that stops the checks and waits for them.
func (s *service) watchFile() (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(fileCheckInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if why := s.db.fileGone(); why != "" {
				s.fileGone.Store(&why)
				s.log.Error("database file gone: not ready, refusing orders", "reason", why)
				return // for good: the open file cannot come back at its path
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// stopIntake refuses new orders and waits for those being stored.
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

// left asks the broker how many orders wait in the queue, through the
// backend's own count or a source of its own (the consumer's is closed by
// now): the SQL queue's rows, the memory or RabbitMQ queue's ready
// messages, or the Kafka group's lag. ok is false when the broker does not
// say.
func (s *service) left(ctx context.Context) (n int, ok bool) {
	if s.backend.left != nil {
		n, err := s.backend.left(ctx)
		return n, err == nil
	}
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

// report logs what became of the orders this process accepted: processed
// (here: effects committed by this process, of whichever run's orders),
// failed, and left: left_queue at the broker plus left_outbox, the outbox
// rows the relay has not handed over yet (the next run relays them). With
// no order from an earlier run, processed + failed + left = accepted.
// left_queue is kept by the SQL queue, RabbitMQ and Kafka for the next run;
// on the memory broker it is lost with the process.
func (s *service) report() {
	accepted, processed, failed := s.counts()
	attrs := []any{"broker", s.backend.name, "accepted", accepted, "processed", processed, "failed", failed}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.leftAtStop = -1
	unsent, uerr := s.db.unsent(ctx)
	if queued, ok := s.left(ctx); ok && uerr == nil {
		s.leftAtStop = queued + unsent
		attrs = append(attrs, "left", queued+unsent, "left_queue", queued, "left_outbox", unsent)
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

	r.POST("/orders", s.afterStart, s.postOrder)
	r.GET("/orders/:id", s.afterStart, s.getOrder)

	// Kubernetes probes: liveness fails for a stuck handler; readiness
	// unless the database was reached and every runner is running (not
	// starting, paused, draining, reconnecting or failed), and from the
	// first moment of shutdown.
	r.GET("/healthz", s.healthz)
	r.GET("/readyz", s.readyz)
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})))

	// The admin page and JSON API (package admin, see admin.go), under
	// http.StripPrefix so that it serves its routes exactly; "/admin" is
	// redirected to "/admin/" by Gin.
	r.Any("/admin/*any", s.afterStart, func(c *gin.Context) {
		http.StripPrefix("/admin", s.admin).ServeHTTP(c.Writer, c.Request)
	})
	return r
}

// afterStart answers 503 until the service has started (the database was
// reached): what it guards reads fields that build sets.
func (s *service) afterStart(c *gin.Context) {
	if !s.started.Load() {
		c.Header("Retry-After", "1")
		c.AbortWithStatusJSON(http.StatusServiceUnavailable, gin.H{"error": "starting: waiting for the database"})
	}
}

// setDBErr records the outcome of an attempt to reach the database at
// start, for /readyz.
func (s *service) setDBErr(err error) {
	if err == nil {
		s.dbErr.Store(nil)
		return
	}
	msg := sqldb.RedactError(err, s.cfg.databaseURL)
	s.dbErr.Store(&msg)
}

func (s *service) healthz(c *gin.Context) {
	if !s.started.Load() {
		// Alive, waiting for the database: restarting would not help.
		c.JSON(http.StatusOK, gin.H{"status": "starting", "live": true})
		return
	}
	s.probes.Live().ServeHTTP(c.Writer, c.Request)
}

func (s *service) readyz(c *gin.Context) {
	if !s.started.Load() {
		reason := "connecting to the database"
		if e := s.dbErr.Load(); e != nil {
			reason = "database unreachable: " + *e
		}
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "starting", "ready": false, "live": true, "reason": reason})
		return
	}
	if why := s.fileGone.Load(); why != nil && !s.notReady.Load() {
		rep := s.probes.Report()
		rep.Status, rep.Ready = "unavailable", false
		c.JSON(http.StatusServiceUnavailable, struct {
			health.Report
			Reason string `json:"reason"`
		}{rep, *why})
		return
	}
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
	if s.fileGone.Load() != nil {
		// The reason, with the file's path, is on /readyz and in the log.
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "the order database is unavailable"})
		return
	}
	if s.backend.full != nil {
		full, err := s.backend.full(context.WithoutCancel(c.Request.Context()))
		switch {
		case err != nil:
			// Counting the outbox failed: the database is unavailable
			// (issue 14: this answered "too many orders waiting").
			s.log.Warn("order not stored", "error", sqldb.RedactError(err, s.cfg.databaseURL))
			c.Header("Retry-After", "1")
			c.JSON(http.StatusServiceUnavailable, gin.H{"error": "the order database is unavailable; try again (with the same Idempotency-Key to avoid a duplicate order)"})
			return
		case full:
			c.Header("Retry-After", "1")
			c.JSON(http.StatusServiceUnavailable, gin.H{"error": "too many orders waiting; try again shortly"})
			return
		}
	}
	// With an Idempotency-Key, a client that retries (after a timeout, say)
	// gets the same order id, which the orders table holds once: the
	// retry is answered with the order, and nothing is stored twice.
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
	// The order id is the message's key (RabbitMQ's routing key, Kafka's
	// partition key) and its idempotency key, which the consumer's inbox
	// records with the order's effect.
	msg.ID, msg.Key = id, []byte(id)
	msg.Header[headerOrderID], msg.Header[broker.HeaderIdempotencyKey] = id, id
	// The order and its outbox row in one transaction, which does not end
	// when the client goes away: the relay publishes the row once it is
	// committed. No publish here: a crash after the commit loses nothing,
	// a crash before it stores nothing.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), storeTimeout)
	defer cancel()
	prev, cl, err := s.db.insertOrder(ctx, o, digestHex(req.digest()), s.cfg.queue, msg)
	if err != nil {
		s.log.Warn("order not stored", "order", id, "error", sqldb.RedactError(err, s.cfg.databaseURL))
		// A failed commit may still have happened: retrying with the same
		// Idempotency-Key is safe.
		c.Header("Retry-After", "1")
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "the order database is unavailable; try again (with the same Idempotency-Key to avoid a duplicate order)"})
		return
	}
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
	s.accepted.Add(1)
	c.Header("Location", "/orders/"+id)
	c.JSON(http.StatusAccepted, gin.H{"id": id, "status": statusAccepted})
}

// publish sends m to the queue directly, bypassing the outbox, as another
// producer would (tests use it for messages the API would never make).
// Every broker takes the same call: the destination is named like the
// queue.
func (s *service) publish(ctx context.Context, m *broker.Message) error {
	return s.backend.pub.Publish(ctx, s.cfg.queue, m)
}

func (s *service) getOrder(c *gin.Context) {
	if !validOrderID(c.Param("id")) {
		c.JSON(http.StatusNotFound, gin.H{"error": "no such order"})
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), storeTimeout)
	defer cancel()
	o, ok, err := s.db.getOrder(ctx, c.Param("id"))
	switch {
	case err != nil:
		s.log.Warn("order not read", "order", c.Param("id"), "error", sqldb.RedactError(err, s.cfg.databaseURL))
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "the order database is unavailable; try again"})
	case !ok:
		c.JSON(http.StatusNotFound, gin.H{"error": "no such order"})
	default:
		c.JSON(http.StatusOK, o)
	}
}
