// Package prometheus exports queuekit consumers' measurements as Prometheus
// metrics (github.com/prometheus/client_golang), registered on a Registerer
// the caller gives. It lives apart from package middleware so that programs
// that do not use Prometheus do not link it.
//
// A Recorder plugs into the three places that each see part of the picture:
//
//	rec, err := prometheus.New(registry, prometheus.WithConsumer("orders"))
//	c, err := consumer.New(src,
//		consumer.Chain(middleware.Recover(), middleware.Metrics(rec))(handler),
//		consumer.WithObserver(rec.Observe), // settlements: ack, requeue, dead-letter, stale…
//		consumer.WithEventHook(rec.Event),  // reconnects, drains (or Supervisor.OnEvent)
//	)
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
//	queuekit_drain_messages_total{consumer,outcome}      counter: handled, given-back, abandoned
//	queuekit_drain_duration_seconds{consumer}            histogram
//	queuekit_stuck_handlers_total{consumer}              counter: fed by a stuck-handler watchdog
//	queuekit_kafka_consumer_lag{consumer,topic,partition}     gauge (LagCollector)
//	queuekit_rabbitmq_queue_messages{consumer,queue}          gauge (DepthCollector)
//	queuekit_rabbitmq_queue_consumers{consumer,queue}         gauge (DepthCollector)
//	queuekit_collector_errors_total{consumer,collector}       counter
//
// Labels stay low-cardinality: the consumer label is a consumer name or a
// topic, never a message id, key or error text.
//
// # Concurrency
//
// Recorder and the collectors are safe for concurrent use. The collectors
// start no goroutines: they call their source during a scrape, at most once
// per CollectorConfig.MinInterval, and concurrent scrapes share that call.
//
// # Errors
//
// Constructors return an error wrapping consumer.ErrInvalidConfig for invalid
// configuration, and the Registerer's error when a metric is already
// registered. A failing broker source does not fail the scrape: its gauges
// are left out and queuekit_collector_errors_total counts the failure.
package promqueuekit
