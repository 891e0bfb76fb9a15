package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// backend is the broker the service runs on, and all the service knows of
// it: a broker.Publisher, through which the outbox relay publishes the
// orders POST /orders committed, and a constructor of broker.Sources, from
// which the consumer reads (and the shutdown report asks what is left).
// Only the constructors below name a broker.
//
// The orders are published to the destination named like the queue (-queue)
// with the order id as the key, on every broker: memory takes them in that
// queue; RabbitMQ routes them from a topic exchange of that name to the
// queue; Kafka writes them to that topic, in the partition of their key.
type backend struct {
	name string
	pub  broker.Publisher
	// source makes a Source for the queue. The consumer gets the first one;
	// the shutdown report makes another to ask the broker, with Backlog,
	// what was left after the consumer closed its own.
	source func() (broker.Source, error)
	// full, if set, reports whether the broker should take no more orders
	// for now: the in-memory queue has no limit of its own (RabbitMQ and
	// Kafka have theirs). An error says it could not tell (the database,
	// which holds the outbox, is unavailable).
	full func(ctx context.Context) (bool, error)
	// close, if set, releases what the backend holds besides the publisher
	// and the sources (the in-memory broker).
	close func()
	// left, if set, counts the orders in the queue, leased ones included
	// (the SQL queue), for the shutdown report.
	left func(ctx context.Context) (int, error)
}

// headerOrderID carries the order id with every message: the consumer's
// Message.ID is the broker's message id, which on Kafka is topic/partition/offset.
const headerOrderID = "order-id"

// newBackend builds the backend cfg asks for: RabbitMQ if an AMQP URL is set,
// Kafka if brokers are, otherwise the SQL queue in the orders' database db
// (the default) or, with -broker memory, the in-process broker.
func newBackend(ctx context.Context, cfg config, logger *slog.Logger, db *database) (*backend, error) {
	switch {
	case cfg.amqpURL != "" && cfg.kafkaBrokers != "":
		return nil, errors.New("choose one broker: RabbitMQ (-amqp-url, AMQP_URL) or Kafka (-kafka-brokers, KAFKA_BROKERS), not both")
	case cfg.amqpURL != "":
		return newRabbitMQBackend(cfg, logger)
	case cfg.kafkaBrokers != "":
		return newKafkaBackend(ctx, cfg, logger)
	case cfg.brokerKind == "memory":
		return newMemoryBackend(cfg, db), nil
	default:
		return newSQLBackend(cfg, logger, db)
	}
}

// newSQLBackend is the default: a durable queue in a table of the orders'
// database (sqlqueue), so that orders queued when the service stops, or is
// killed, are processed after it restarts, with no broker to run.
func newSQLBackend(cfg config, logger *slog.Logger, db *database) (*backend, error) {
	pub, err := sqlqueue.NewPublisher(db.db, sqlqueue.PublisherConfig{})
	if err != nil {
		return nil, err
	}
	return &backend{
		name: "sql",
		pub:  pub,
		source: func() (broker.Source, error) {
			return sqlqueue.NewSource(db.db, sqlqueue.Config{Queue: cfg.queue, Prefetch: 2 * cfg.concurrency, Visibility: cfg.sqlVisibility, Logger: logger})
		},
		left: func(ctx context.Context) (int, error) {
			var n int
			err := db.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+sqlqueue.DefaultTable+` WHERE queue = $1`, cfg.queue).Scan(&n)
			return n, err
		},
	}, nil
}

func newMemoryBackend(cfg config, db *database) *backend {
	b := memory.NewBroker()
	return &backend{
		name: "memory",
		pub:  b.Publisher(),
		source: func() (broker.Source, error) {
			return b.Source(cfg.queue, memory.SourceConfig{Prefetch: 2 * cfg.concurrency})
		},
		// Bounded here, so a paused or slow consumer cannot make the
		// process grow without end: what waits in the memory queue and
		// what waits in the outbox for the relay to hand it over.
		full: func(ctx context.Context) (bool, error) {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			unsent, err := db.unsent(ctx)
			if err != nil {
				return true, err
			}
			return b.Stats(cfg.queue).Ready+unsent >= cfg.maxQueued, nil
		},
		close: func() { b.Close() },
	}
}

func newRabbitMQBackend(cfg config, logger *slog.Logger) (*backend, error) {
	// One connection for both directions would do too (rabbitmq.Connection);
	// separate ones keep a slow consumer from throttling publishes.
	dialer := rabbitmq.Dialer{URL: cfg.amqpURL, Name: "queuekit-gin-example"}
	// The publisher declares the exchange on every (re)connect; the source
	// declares the queue and binds it, when it connects. Until then the
	// broker returns the (mandatory) publishes as unroutable: a 503, while
	// the service is not ready yet anyway.
	exchange := rabbitmq.Exchange{Name: cfg.queue, Kind: "topic"}
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: dialer, Exchanges: []rabbitmq.Exchange{exchange}, Logger: logger})
	if err != nil {
		return nil, err
	}
	return &backend{
		name: "rabbitmq",
		pub:  pub,
		source: func() (broker.Source, error) {
			return rabbitmq.NewSource(rabbitmq.Config{
				Dialer:   dialer,
				Queue:    cfg.queue,
				Prefetch: 2 * cfg.concurrency,
				Topology: rabbitmq.Topology{
					QueueType: cfg.amqpQueueType,
					Exchanges: []rabbitmq.Exchange{exchange},
					Bindings:  []rabbitmq.Binding{{Exchange: cfg.queue, RoutingKey: "#"}},
				},
				Logger: logger,
			})
		},
	}, nil
}

func newKafkaBackend(ctx context.Context, cfg config, logger *slog.Logger) (*backend, error) {
	brokers := strings.Split(cfg.kafkaBrokers, ",")
	for i := range brokers {
		brokers[i] = strings.TrimSpace(brokers[i])
	}
	// Orders are keyed by their id, so ByKey handles up to -concurrency of
	// them at once instead of one per partition. The two Kafka adapters
	// take the same settings; only the constructors differ (-kafka-client).
	group := cfg.queue + "-service"
	var (
		pub    broker.Publisher
		source func() (broker.Source, error)
		err    error
	)
	switch cfg.kafkaClient {
	case "franz":
		pub, err = franz.NewPublisher(franz.PublisherConfig{Brokers: brokers})
		source = func() (broker.Source, error) {
			return franz.NewSource(franz.Config{
				Brokers: brokers, GroupID: group, Topic: cfg.queue,
				Ordering: franz.ByKey,
				Topology: franz.Topology{Partitions: cfg.kafkaPartitions},
				Logger:   logger,
			})
		}
	default:
		pub, err = kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers})
		source = func() (broker.Source, error) {
			return kafka.NewSource(kafka.Config{
				Brokers: brokers, GroupID: group, Topic: cfg.queue,
				Ordering: kafka.ByKey,
				Topology: kafka.Topology{Partitions: cfg.kafkaPartitions},
				Logger:   logger,
			})
		}
	}
	if err != nil {
		return nil, err
	}
	if err := ensureTopics(ctx, source); err != nil {
		// Clusters where the service may not create topics have them
		// provisioned elsewhere: say so and go on.
		logger.Warn("could not create the Kafka topics; they must exist", "topic", cfg.queue, "error", err)
	}
	return &backend{name: "kafka", pub: pub, source: source}, nil
}

// ensureTopics creates the topic and its dead-letter topic, with the
// partitions of -kafka-partitions and the cluster's default replication
// factor (Kafka 2.4 and later), unless they exist: DeclareTopology of a
// Source that never joins the group.
func ensureTopics(ctx context.Context, source func() (broker.Source, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	src, err := source()
	if err != nil {
		return err
	}
	defer src.Close(context.WithoutCancel(ctx))
	return src.(broker.TopologyDeclarer).DeclareTopology(ctx)
}
