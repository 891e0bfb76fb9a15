package main

import (
	"log/slog"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// openTarget opens the dead letters t names, on RabbitMQ when it has a URL,
// else on Kafka. It connects nothing yet: the first operation does.
func openTarget(t target) (deadLetters, error) {
	// The adapters' warnings would go to slog.Default, whose text is not
	// escaped for the terminal; the command reports what matters itself.
	logger := slog.New(slog.DiscardHandler)
	if t.amqpURL != "" {
		return rabbitmq.NewDeadLetters(rabbitmq.DeadLetterConfig{
			Dialer: rabbitmq.Dialer{
				URL: t.amqpURL,
				// A heartbeat within the command's bound notices a broker
				// that stops answering.
				Heartbeat: min(10*time.Second, max(t.timeout/3, time.Second)),
				Name:      "queuekit cli",
			},
			Queue:           t.queue,
			DeadLetterQueue: t.dlq,
			Logger:          logger,
		})
	}
	return openKafka(t, logger)
}

// openKafka opens the dead letters of a Kafka topic.
func openKafka(t target, logger *slog.Logger) (deadLetters, error) {
	return kafka.NewDeadLetters(kafka.DeadLetterConfig{
		Brokers: t.brokers,
		// Each dial is bounded within the command's own bound.
		Dialer:          &kafkago.Dialer{Timeout: min(10*time.Second, t.timeout), DualStack: true, ClientID: "queuekit-cli"},
		Topic:           t.topic,
		DeadLetterTopic: t.dlt,
		Logger:          logger,
	})
}
