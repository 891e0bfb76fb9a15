// Package health serves the liveness and readiness of queuekit consumers over
// HTTP, and watches for handler calls that hang.
//
// A Handler turns consumer.Supervisor.Health into JSON probes with status
// 200 or 503. It is a plain http.Handler: mount it in net/http as is, or in
// Gin with gin.WrapH:
//
//	h, err := health.NewHandler(supervisor, health.WithWatchdog(wd))
//	mux.Handle("/livez", h.Live())
//	mux.Handle("/readyz", h.Ready())
//	router.GET("/readyz", gin.WrapH(h.Ready())) // Gin
//
// The full report (ServeHTTP, FullReport) can also say what waits for each
// consumer at the broker: WithLag adds a Kafka consumer group's lag per
// partition (from *kafka.Source), WithDepth a RabbitMQ queue's depth and
// consumer count (from *rabbitmq.Source). The broker is asked at most once per
// BacklogInterval per consumer, each call bounded by 2 s; Ready and Live
// never ask it, so a slow broker cannot fail a probe.
//
// A Watchdog is middleware that notes when each handler call starts; a call
// running past its threshold is stuck. Stuck calls fail liveness, and the
// watchdog's Run loop logs each one and passes it to an OnStuck hook (feed a
// metric from it). For RabbitMQ, set BrokerTimeout to the server's
// consumer_timeout to be warned before the broker closes the channel.
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
// OnStuck runs on it, outside the watchdog's lock. FullReport asks the
// brokers of several runners at once, on goroutines that end before it
// returns.
//
// # Errors
//
// Constructors return errors wrapping consumer.ErrInvalidConfig. The
// handlers never fail: a failing probe is a 503 with the report as its body.
package health
