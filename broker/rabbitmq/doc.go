// Package rabbitmq is the RabbitMQ adapter of queuekit, on
// github.com/rabbitmq/amqp091-go: a self-healing Source for consumer.New and
// a confirming Publisher.
//
// (Full guide in progress.)
package rabbitmq
