// Package queuekit runs queue consumers — RabbitMQ, Kafka, or the embedded
// in-memory broker — with the lifecycle done for you: bounded concurrency,
// acknowledgement only after a handler succeeded, retries with backoff, a
// dead-letter destination for messages that keep failing, panics contained to
// one message, restarts of failed consumers, health reports, and a graceful
// shutdown that neither loses nor needlessly duplicates messages.
//
// This package holds no code; it is the guided overview. The code is in:
//
//   - consumer: what handler authors and operators use — Handler,
//     Middleware, Chain, JSON, the runtime (Consumer, Supervisor), its
//     options and events. Start here.
//   - broker: the contract between the runtime and the broker adapters, the
//     way database/sql/driver is for database/sql — Message (what a handler
//     receives), Publisher (what every broker's publisher implements, with
//     NewJSON and PublishJSON), Source and Delivery, and the optional
//     capabilities (Pauser, StatusReporter, EventSource, BacklogReporter,
//     TopologyDeclarer).
//   - retry: backoff policies (Exponential, Constant, MaxAttempts, MaxElapsed),
//     Do, and error classification (Permanent, After).
//   - middleware: Recover, Retry, Timeout, Log and Metrics, and the order to
//     put them in; middleware/correlation: a correlation id for programs
//     without tracing.
//   - health: liveness/readiness probes from Supervisor.Health, the backlog
//     of each consumer, and a stuck-handler watchdog.
//   - broker/memory: an in-process broker with a real broker's semantics, for
//     examples, tests and development.
//   - broker/brokertest: the conformance suite every adapter passes.
//
// And, each in a module of its own so that a program's module graph holds
// only the clients it uses:
//
//   - broker/rabbitmq (amqp091-go) and broker/kafka (kafka-go): the adapters
//     for real brokers.
//   - middleware/promqueuekit (Prometheus) and middleware/otelqueuekit
//     (OpenTelemetry): metrics and tracing, each wired into a consumer with
//     one line (rec.Options()..., otelqueuekit.Options(system)...).
//
// # A consumer in five steps
//
// Write a handler; wrap it in middleware; open a source on a broker; build a
// consumer; run it under a supervisor with a context that ends on SIGTERM:
//
//	h := consumer.Chain(middleware.Recover(), middleware.Retry(nil))(
//		consumer.JSON(func(ctx context.Context, m *broker.Message, o Order) error {
//			return store.Save(ctx, o)
//		}))
//	mb := memory.NewBroker()
//	src, _ := mb.Source("orders", memory.SourceConfig{Prefetch: 16})
//	c, _ := consumer.New(src, h, consumer.WithConcurrency(8))
//	sup := &consumer.Supervisor{}
//	sup.Add("orders", c) // the consumer's one name: logs, metrics, health
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
//	defer stop()
//	err := sup.Run(ctx)
//
// The runnable version is the package example below; examples/quickstart is a
// complete program.
//
// # Publishing
//
// Every broker's publisher is a broker.Publisher: Publish(ctx, dest, msgs...)
// returns once the broker has taken every message (queued; confirmed by
// RabbitMQ; acknowledged by the Kafka replicas), and broker.PublishJSON
// publishes a value as JSON for a consumer.JSON handler. Code written against
// broker.Publisher and broker.Source moves between brokers by changing its
// constructors only; examples/portable runs one program on all three.
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
