// Package queuekit runs queue consumers — RabbitMQ, Kafka, or the embedded
// in-memory broker — with the lifecycle done for you: bounded concurrency,
// acknowledgement only after a handler succeeded, retries with backoff, a
// dead-letter destination for messages that keep failing, panics contained to
// one message, restarts of failed consumers, health reports, and a graceful
// shutdown that neither loses nor needlessly duplicates messages.
//
// This package holds no code; it is the guided overview. The code is in:
//
//   - consumer: the contract (Message, Handler, Middleware, Source, Delivery)
//     and the runtime (Consumer, Supervisor). Start here.
//   - retry: backoff policies (Exponential, Constant, MaxAttempts, MaxElapsed),
//     Do, and error classification (Permanent, After).
//   - middleware: Recover, Retry, Timeout, Log and Metrics, and the order to
//     put them in.
//   - broker/memory: an in-process broker with a real broker's semantics, for
//     examples, tests and development.
//   - broker/rabbitmq and broker/kafka: the adapters for real brokers.
//   - broker/brokertest: the conformance suite every adapter passes.
//   - middleware/prometheus, middleware/otel, middleware/correlation and
//     health: metrics, tracing, correlation ids, and liveness/readiness
//     probes with a stuck-handler watchdog.
//
// # A consumer in five steps
//
// Write a handler; wrap it in middleware; open a source on a broker; build a
// consumer; run it under a supervisor with a context that ends on SIGTERM:
//
//	h := consumer.Chain(middleware.Recover(), middleware.Retry(nil))(
//		consumer.JSON(func(ctx context.Context, m *consumer.Message, o Order) error {
//			return store.Save(ctx, o)
//		}))
//	src, _ := broker.Source("orders", memory.SourceConfig{Prefetch: 16})
//	c, _ := consumer.New(src, h, consumer.WithConcurrency(8))
//	sup := &consumer.Supervisor{}
//	sup.Add("orders", c)
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
//	defer stop()
//	err := sup.Run(ctx)
//
// The runnable version is the package example below; examples/quickstart is a
// complete program.
//
// # Promises
//
// At-least-once: a message is acknowledged only after its handler returned nil
// or after it was dead-lettered. Never retried forever: the delivery budget
// ends in the dead-letter destination, with the reason. Graceful drain: on
// shutdown, in-flight handlers finish within a deadline and everything else
// stays with the broker. One bad message never takes the service down.
// Resources are bounded by configuration, not by queue length.
package queuekit
