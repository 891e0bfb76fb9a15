package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// This file is all that differs between brokers: one constructor each, which
// returns a broker.Publisher and a broker.Source for dest. The program (run)
// takes them and never asks which broker it is on.

// prefetch is how many deliveries a source holds at once: twice the
// handlers, so that none waits for the broker.
const prefetch = 2 * concurrency

// onMemory returns a publisher and a source for the queue dest of b, the
// in-process broker.
func onMemory(b *memory.Broker, dest string) (broker.Publisher, broker.Source, error) {
	src, err := b.Source(dest, memory.SourceConfig{Prefetch: prefetch})
	if err != nil {
		return nil, nil, err
	}
	return b.Publisher(), src, nil
}

// onRabbitMQ returns a confirming publisher and a source for the RabbitMQ
// broker at url. The source's queue is dest, bound with "#" to a topic
// exchange also called dest: the program publishes to dest with the
// customer as the routing key, as it does on Kafka with the customer as the
// partition key. The source declares all of it (DeclareTopology, and again
// on every reconnect), with a dead-letter exchange and queue and a retry
// queue: dest.dlx, dest.dlq, dest.retry.
func onRabbitMQ(url, dest string, logger *slog.Logger) (broker.Publisher, broker.Source, error) {
	dialer := rabbitmq.Dialer{URL: url, Name: "queuekit-example-portable"}
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:   dialer,
		Queue:    dest,
		Prefetch: prefetch,
		Topology: rabbitmq.Topology{
			Exchanges: []rabbitmq.Exchange{{Name: dest, Kind: "topic"}},
			Bindings:  []rabbitmq.Binding{{Exchange: dest, RoutingKey: "#"}},
		},
		Logger: logger,
	})
	if err != nil {
		return nil, nil, err
	}
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: dialer, Logger: logger})
	if err != nil {
		return nil, nil, errors.Join(err, src.Close(context.Background()))
	}
	return pub, src, nil
}

// onKafka returns a publisher and a consumer-group source for the topic dest
// on the Kafka brokers, creating the topic (and its dead-letter topic,
// dest.dlt) if it does not exist. The group is dest.group: a second run
// starts where the first one's commits ended.
func onKafka(ctx context.Context, brokers []string, dest string, logger *slog.Logger) (broker.Publisher, broker.Source, error) {
	if err := createTopics(ctx, brokers, dest, dest+".dlt"); err != nil {
		return nil, nil, err
	}
	src, err := kafka.NewSource(kafka.Config{
		Brokers: brokers,
		GroupID: dest + ".group",
		Topic:   dest,
		Logger:  logger,
	})
	if err != nil {
		return nil, nil, err
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers})
	if err != nil {
		return nil, nil, errors.Join(err, src.Close(context.Background()))
	}
	return pub, src, nil
}

// onFranz is onKafka on the franz-go adapter (broker/franz): the same
// topic, group and settings. Its Source creates the topics itself
// (DeclareTopology), which the kafka-go Source could do as well.
func onFranz(ctx context.Context, brokers []string, dest string, logger *slog.Logger) (broker.Publisher, broker.Source, error) {
	src, err := franz.NewSource(franz.Config{
		Brokers:  brokers,
		GroupID:  dest + ".group",
		Topic:    dest,
		Topology: franz.Topology{Partitions: kafkaPartitions},
		Logger:   logger,
	})
	if err != nil {
		return nil, nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := src.DeclareTopology(dctx); err != nil {
		return nil, nil, errors.Join(err, src.Close(context.Background()))
	}
	pub, err := franz.NewPublisher(franz.PublisherConfig{Brokers: brokers})
	if err != nil {
		return nil, nil, errors.Join(err, src.Close(context.Background()))
	}
	return pub, src, nil
}

// kafkaPartitions is the partition count of a topic onKafka creates.
const kafkaPartitions = 4

// createTopics creates the topics, with the cluster's default replication
// factor; a topic that exists is used as it is.
func createTopics(ctx context.Context, brokers []string, topics ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tr := &kafkago.Transport{}
	defer tr.CloseIdleConnections()
	admin := &kafkago.Client{Addr: kafkago.TCP(brokers...), Transport: tr}
	req := &kafkago.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafkago.TopicConfig{Topic: t, NumPartitions: kafkaPartitions, ReplicationFactor: -1})
	}
	resp, err := admin.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create the topics %v: %w", topics, err)
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
			return fmt.Errorf("create the topic %s: %w", t, err)
		}
	}
	return nil
}
