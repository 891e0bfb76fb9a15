// Package promqueuekit exports queuekit consumers' measurements as
// Prometheus metrics (github.com/prometheus/client_golang), registered on a
// Registerer the caller gives. It is a module of its own, so that programs
// that do not use Prometheus do not have it in their module graph, and it is
// not named prometheus, so that importing it next to client_golang needs no
// alias.
//
// # Wiring
//
// Make one Recorder per program and give each consumer its options, in one
// line; add the backlog collector once per Supervisor:
//
//	rec, err := promqueuekit.New(prometheus.DefaultRegisterer)
//	c, err := consumer.New(src, middleware.Recover()(h), rec.Options()...)
//	sup.Add("orders", c) // every series of this consumer says consumer="orders"
//
//	bc, err := promqueuekit.NewBacklogCollector(sup)
//	prometheus.MustRegister(bc)
//
//	wd, err := health.NewWatchdog(health.WatchdogConfig{Threshold: time.Minute, OnStuck: rec.HandlerStuck})
//
//	rl, err := middleware.RateLimit(middleware.RateLimitConfig{Rate: 50, OnWait: rec.OnWait})
//
// Options gives the consumer the metrics middleware (handler calls), an
// observer (what the runtime did with each delivery) and an event hook
// (reconnects, restarts, drains): each sees something the others cannot,
// and none can be forgotten. Each call they get says which consumer it is
// about, so one Options result may serve any number of consumers. Wrap the
// handler in middleware.Recover before New, so that the metrics middleware,
// outside it, counts panics as such.
//
// # Metrics
//
// With the default namespace "queuekit":
//
//	queuekit_messages_handled_total{consumer,outcome}    counter: one per settled delivery; outcome is
//	                                                     ack, requeue, delayed-requeue, dead-letter,
//	                                                     give-back, abandon, stale or settle-failed
//	queuekit_handler_duration_seconds{consumer,result}   histogram: handler calls; result is
//	                                                     middleware.Outcome: ok, error, permanent,
//	                                                     timeout, panic
//	queuekit_handlers_in_flight{consumer}                gauge
//	queuekit_delivery_attempts{consumer}                 histogram: attempt number of settled deliveries
//	queuekit_events_total{consumer,event}                counter: lifecycle events by kind
//	queuekit_reconnects_total{consumer}                  counter
//	queuekit_restarts_total{consumer}                    counter
//	queuekit_rebalances_total{consumer}                  counter: Kafka consumer-group generations ended
//	queuekit_drain_messages_total{consumer,outcome}      counter: handled, given-back, abandoned
//	queuekit_drain_duration_seconds{consumer}            histogram
//	queuekit_stuck_handlers_total{consumer}              counter: fed by health's stuck-handler watchdog
//	queuekit_ratelimit_wait_seconds{consumer}            histogram: waits for a rate limiter's token, fed by
//	                                                     Recorder.OnWait as middleware.RateLimitConfig.OnWait
//	queuekit_kill_switch_state{consumer}                 gauge: 0 closed, 1 probing, 2 tripped (consumer.WithKillSwitch);
//	                                                     no series until the switch first trips
//	queuekit_backlog_messages{consumer}                       gauge (BacklogCollector)
//	queuekit_backlog_consumers{consumer}                      gauge (BacklogCollector)
//	queuekit_backlog_partition_messages{consumer,partition}   gauge (BacklogCollector)
//	queuekit_backlog_up{consumer}                             gauge (BacklogCollector)
//
// # Labels
//
// The consumer label is the consumer's one name: the name it was added to
// its Supervisor under, or its WithName when it runs alone. Labels stay
// low-cardinality: never a message id, key or error text. A label value
// that is not valid UTF-8 (a topic, a name given to WithConsumer or For) is
// recorded with its invalid bytes replaced by U+FFFD: metrics never fail a
// message or a scrape.
//
// # Concurrency
//
// Recorder and BacklogCollector are safe for concurrent use. The collector
// keeps no cache of its own: during a scrape it reads each consumer's
// Backlog, which asks the broker at most once per consumer.BacklogInterval
// for every reader together (package health's full report included).
//
// # Errors
//
// Constructors return an error wrapping broker.ErrInvalidConfig for invalid
// configuration, and the Registerer's error when a metric is already
// registered. A broker that cannot say its backlog does not fail the scrape:
// that consumer's gauges are left out and its queuekit_backlog_up is 0.
package promqueuekit
