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
//     TopologyDeclarer, DeadLetterSource), and DeadLetters, the dead letters
//     of a source.
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
//   - admin: the operator's web page and JSON API (an http.Handler) for the
//     consumers of a Supervisor and their dead letters.
//
// And, each in a module of its own so that a program's module graph holds
// only the clients it uses:
//
//   - broker/rabbitmq (amqp091-go) and broker/kafka (kafka-go): the adapters
//     for real brokers.
//   - middleware/promqueuekit (Prometheus) and middleware/otelqueuekit
//     (OpenTelemetry): metrics and tracing, each wired into a consumer with
//     one line (rec.Options()..., otelqueuekit.Options(system)...).
//   - cmd/queuekit: the queuekit command, which lists, redrives and purges
//     dead letters on RabbitMQ and Kafka from a shell.
//   - sql (PostgreSQL through pgx, SQLite without cgo): sql/inbox, the
//     idempotent consumer, which runs a handler's database effect and records
//     the message's idempotency key in one transaction, so that a duplicate
//     delivery changes nothing; sql/outbox, the transactional outbox, which
//     writes messages in the application's own transaction and relays them
//     to any broker.Publisher; and sql/sqlqueue, a durable queue on a table,
//     a broker adapter like the others.
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
// # Dead letters
//
// A message that fails for good — a permanent error, or its delivery budget
// spent — is dead-lettered with the reason in its headers. Every adapter
// gives its dead letters back through one interface,
// [github.com/queuekit/queuekit/broker.DeadLetters]: List browses them
// without consuming (each with its reason: error text, attempts, source,
// time), Count counts them, Redrive sends them back to their source for
// another try, Purge deletes them. The operator's workflow is: see why a
// message failed, fix the cause, redrive what the fix fixes (a dry run
// first) and purge what can never succeed. A redrive never loses a message:
// each copy is confirmed by the broker before its dead letter is removed. The
// copy starts a fresh delivery budget and counts its redrives, and a dead
// letter redriven broker.DefaultMaxRedrives (3) times is refused, so a
// poison message cannot loop.
//
// Take them from a consumer (consumer.Supervisor.DeadLetters(name),
// consumer.Consumer.DeadLetters), from a source (broker.DeadLetterSource),
// or with no consumer (rabbitmq.NewDeadLetters, kafka.NewDeadLetters). The
// queuekit command and package admin do the same from a shell and a
// browser; examples/rabbitmq-worker (-redrive) and examples/kafka-group run
// the whole workflow.
//
// # Promises
//
// At-least-once: a message is acknowledged only after its handler returned nil
// or after it was dead-lettered. Never retried forever: the delivery budget
// ends in the dead-letter destination, with the reason. Graceful drain: on
// shutdown, in-flight handlers finish within a deadline and everything else
// stays with the broker. One bad message never takes the service down.
// Resources are bounded by configuration, not by queue length. Effectively
// once: with the outbox a message is published if and only if the
// transaction that wrote it committed, and with the inbox a handler's effect
// in the database happens once, although delivery is at-least-once.
package queuekit
