package main

import (
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// target names the dead letters a command works on: a RabbitMQ queue's or a
// Kafka topic's.
type target struct {
	amqpURL string // RabbitMQ when set
	queue   string
	dlq     string

	kafkaBrokers string   // the flag, as given
	brokers      []string // Kafka when set
	topic        string
	dlt          string

	timeout time.Duration
}

// redact returns the text of err without the password of amqpURL, in any
// spelling (rabbitmq.RedactError), and without any other URL's userinfo.
func redact(err error, amqpURL string) string {
	if amqpURL != "" {
		err = rabbitmq.RedactError(err, amqpURL)
	}
	text := err.Error()
	if amqpURL != "" && strings.Contains(text, amqpURL) {
		text = strings.ReplaceAll(text, amqpURL, rabbitmq.RedactURL(amqpURL))
	}
	return text
}
