package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// backend is the broker the service runs on: where POST /orders publishes and
// where the consumer's Source comes from. Only newBackend knows which broker
// it is; the rest of the service sees consumer.Source and publish.
type backend struct {
	name   string
	source broker.Source
	// publish sends one order; it returns only once the broker has taken it
	// (memory: queued; RabbitMQ: confirmed; Kafka: acknowledged by replicas).
	publish func(ctx context.Context, m broker.Message) error
	// left reports the orders still in the queue, after the consumers
	// stopped; ok is false where the service cannot tell.
	left func(ctx context.Context) (n int, ok bool)
	// full reports whether the broker should take no more orders for now
	// (nil: the broker applies its own limits).
	full  func() bool
	close func() error
}

// headerOrderID carries the order id with every message: the consumer's
// Message.ID is the broker's message id, which on Kafka is topic/partition/offset.
const headerOrderID = "order-id"

// newBackend builds the backend cfg asks for: RabbitMQ if an AMQP URL is set,
// Kafka if brokers are, the embedded in-memory broker otherwise.
func newBackend(ctx context.Context, cfg config, logger *slog.Logger) (*backend, error) {
	switch {
	case cfg.amqpURL != "" && cfg.kafkaBrokers != "":
		return nil, errors.New("choose one broker: RabbitMQ (-amqp-url, AMQP_URL) or Kafka (-kafka-brokers, KAFKA_BROKERS), not both")
	case cfg.amqpURL != "":
		return newRabbitMQBackend(cfg, logger)
	case cfg.kafkaBrokers != "":
		return newKafkaBackend(ctx, cfg, logger)
	default:
		return newMemoryBackend(cfg)
	}
}

func newMemoryBackend(cfg config) (*backend, error) {
	b := memory.NewBroker()
	src, err := b.Source(cfg.queue, memory.SourceConfig{Prefetch: 2 * cfg.concurrency})
	if err != nil {
		b.Close()
		return nil, err
	}
	return &backend{
		name:   "memory",
		source: src,
		publish: func(ctx context.Context, m broker.Message) error {
			return b.Publish(ctx, cfg.queue, &m)
		},
		left: func(context.Context) (int, bool) {
			st := b.Stats(cfg.queue)
			return st.Ready + st.Unacked + st.Delayed, true
		},
		// The in-memory queue has no limit of its own: bound it here, so a
		// paused or slow consumer cannot make the process grow without end.
		full:  func() bool { return b.Stats(cfg.queue).Ready >= cfg.maxQueued },
		close: func() error { b.Close(); return nil },
	}, nil
}

func newRabbitMQBackend(cfg config, logger *slog.Logger) (*backend, error) {
	// One connection for both directions would do too (rabbitmq.Connection);
	// separate ones keep a slow consumer from throttling publishes.
	dialer := rabbitmq.Dialer{URL: cfg.amqpURL, Name: "queuekit-gin-example"}
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:   dialer,
		Queue:    cfg.queue,
		Prefetch: 2 * cfg.concurrency,
		Topology: rabbitmq.Topology{QueueType: cfg.amqpQueueType},
		Logger:   logger,
	})
	if err != nil {
		return nil, err
	}
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: dialer, Logger: logger})
	if err != nil {
		src.Close(context.Background())
		return nil, err
	}
	return &backend{
		name:   "rabbitmq",
		source: src,
		publish: func(ctx context.Context, m broker.Message) error {
			// The default exchange routes by queue name. The queue is declared
			// by the source when it first connects: until then a publish is
			// returned as unroutable (and the service is not ready yet).
			return pub.Publish(ctx, "", cfg.queue, amqp.Publishing{
				MessageId:   m.ID,
				ContentType: "application/json",
				Timestamp:   time.Now(),
				Headers:     amqp.Table{headerOrderID: m.Header[headerOrderID]},
				Body:        m.Body,
			})
		},
		left: func(ctx context.Context) (int, bool) {
			// The consuming source is closed by now: ask on a connection
			// of its own, declaring nothing.
			probe, err := rabbitmq.NewSource(rabbitmq.Config{Dialer: dialer, Queue: cfg.queue, Topology: rabbitmq.Topology{Passive: true}, Logger: logger})
			if err != nil {
				return 0, false
			}
			defer probe.Close(context.Background())
			n, _, err := probe.QueueDepth(ctx)
			return n, err == nil
		},
		close: func() error {
			return errors.Join(pub.Close(context.Background()), src.Close(context.Background()))
		},
	}, nil
}

func newKafkaBackend(ctx context.Context, cfg config, logger *slog.Logger) (*backend, error) {
	brokers := strings.Split(cfg.kafkaBrokers, ",")
	for i := range brokers {
		brokers[i] = strings.TrimSpace(brokers[i])
	}
	if err := ensureTopics(ctx, brokers, cfg.kafkaPartitions, cfg.queue, cfg.queue+".dlt"); err != nil {
		// Clusters where the service may not create topics have them
		// provisioned elsewhere: say so and go on.
		logger.Warn("could not create the Kafka topics; they must exist", "topic", cfg.queue, "error", err)
	}
	src, err := kafka.NewSource(kafka.Config{
		Brokers: brokers,
		GroupID: cfg.queue + "-service",
		Topic:   cfg.queue,
		// Orders are keyed by their id, so ByKey handles up to
		// -concurrency of them at once instead of one per partition.
		Ordering: kafka.ByKey,
		Logger:   logger,
	})
	if err != nil {
		return nil, err
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers, Topic: cfg.queue})
	if err != nil {
		src.Close(context.Background())
		return nil, err
	}
	return &backend{
		name:   "kafka",
		source: src,
		publish: func(ctx context.Context, m broker.Message) error {
			m.Key = []byte(m.ID)
			return pub.Publish(ctx, &m)
		},
		left: func(context.Context) (int, bool) { return 0, false },
		close: func() error {
			return errors.Join(pub.Close(context.Background()), src.Close(context.Background()))
		},
	}, nil
}

// ensureTopics creates the topics with the given number of partitions and
// the cluster's default replication factor (Kafka 2.4 and later) unless they
// exist.
func ensureTopics(ctx context.Context, brokers []string, partitions int, topics ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr := &kafkago.Transport{Dial: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	cli := &kafkago.Client{Addr: kafkago.TCP(brokers...), Transport: tr}
	req := &kafkago.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafkago.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: -1})
	}
	resp, err := cli.CreateTopics(ctx, req)
	if err != nil {
		return err
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	return nil
}
