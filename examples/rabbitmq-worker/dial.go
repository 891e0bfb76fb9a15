package main

import (
	"errors"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/retry"
)

// dial opens a plain amqp091-go connection, with a bounded dial, and keeps
// the password out of its errors. A refusal by the broker (wrong
// credentials, no access to the vhost) is permanent: retrying cannot help.
//
// The worker and its dead letters connect through the adapter; this
// connection is for what the adapter does not do: checking and deleting
// queues (topology.go).
func dial(rawURL string) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Dial: amqp.DefaultDial(5 * time.Second),
		Properties: amqp.Table{
			"connection_name": "queuekit example rabbitmq-worker (inspection)",
		},
	})
	if err != nil {
		// amqp091-go may quote the URL, or the password alone, in its
		// errors: the library's RedactError takes out every spelling.
		err = rabbitmq.RedactError(err, rawURL)
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.AccessRefused {
			return nil, retry.Permanent(err)
		}
		return nil, err
	}
	return conn, nil
}
