// Package health serves the liveness and readiness of queuekit consumers over
// HTTP, and watches for handler calls that hang.
//
// # Probes
//
// A Handler turns a consumer.Supervisor's Health into JSON probes that
// answer 200 or 503. It is a plain http.Handler: mount it in net/http as
// is, or in Gin with gin.WrapH:
//
//	h, err := health.NewHandler(sup, health.WithWatchdog(wd))
//	mux.Handle("/livez", h.Live())
//	mux.Handle("/readyz", h.Ready())
//	mux.Handle("/healthz", h)                     // the full report
//	router.GET("/readyz", gin.WrapH(h.Ready())) // Gin
//
// Ready fails while any consumer is not running (starting, paused,
// draining, reconnecting, stalled, tripped, failed, stopped), so that a load
// balancer or Kubernetes stops sending work. Live fails only while a
// handler call is stuck: a failed or reconnecting consumer is already being
// restarted or reconnected, and restarting the process would not help.
//
// # Backlog
//
// The full report (ServeHTTP, FullReport) also says what waits for each
// consumer at the broker — a RabbitMQ queue's ready messages and consumers,
// a Kafka consumer group's lag per partition — for every consumer whose
// source reports it (a broker.BacklogReporter). Nothing needs wiring: the
// report reads Supervisor.Backlog, which reads each consumer's Backlog. The
// consumer asks the broker at most once per consumer.BacklogInterval, for
// health reports and metrics scrapes together, each call bounded by 2 s;
// Ready and Live never ask it, so a slow broker cannot fail a probe.
//
// # Stuck handlers
//
// A Watchdog is middleware that notes when each handler call starts; a call
// running past its threshold is stuck. Stuck calls fail liveness, and the
// watchdog's Run loop logs each one and passes it to an OnStuck hook (feed a
// metric from it, such as promqueuekit's Recorder.HandlerStuck). For
// RabbitMQ, set BrokerTimeout to the server's consumer_timeout to be warned
// before the broker closes the channel.
//
//	wd, err := health.NewWatchdog(health.WatchdogConfig{Threshold: time.Minute, OnStuck: rec.HandlerStuck})
//	c, err := consumer.New(src, h, consumer.WithMiddleware(wd.Middleware()))
//	sup.Add("orders", c)
//	sup.Add("watchdog", wd)
//
// Stuck calls are named after the consumer that runs them: the name it was
// added to its Supervisor under.
//
// # Lifecycle
//
// Handler has nothing to start or stop. Watchdog.Run loops until its context
// is done; add the watchdog to the same Supervisor as the consumers
// (Supervisor.Add("watchdog", wd)) so that it stops with them.
//
// # Concurrency
//
// Handler and Watchdog are safe for concurrent use. Watchdog.Run is the only
// long-lived goroutine of this package, and only when the caller starts it;
// OnStuck runs on it, outside the watchdog's lock. FullReport asks for the
// backlogs of several consumers at once, on goroutines that end before it
// returns.
//
// # Errors
//
// Constructors return errors wrapping broker.ErrInvalidConfig. The
// handlers never fail: a failing probe is a 503 with the report as its body,
// and a broker that cannot say its backlog gives an error text in that
// consumer's backlog, not a failed report: {"backlog":{"error":"…"}}, with
// no numbers that would read as an empty queue.
package health
