package main

import (
	"errors"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/retry"
)

// dial opens a plain amqp091-go connection, with a bounded dial, and keeps
// the password out of its errors. A refusal by the broker (wrong
// credentials, no access to the vhost) is permanent: retrying cannot help.
func dial(rawURL string) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Dial: amqp.DefaultDial(5 * time.Second),
		Properties: amqp.Table{
			"connection_name": "queuekit example rabbitmq-worker (inspection)",
		},
	})
	if err != nil {
		msg := strings.ReplaceAll(err.Error(), rawURL, redact(rawURL))
		if pw, ok := password(rawURL); ok {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.AccessRefused {
			return nil, retry.Permanent(errors.New(msg))
		}
		return nil, errors.New(msg)
	}
	return conn, nil
}

// password returns the password of u, if it has one.
func password(u string) (string, bool) {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		return "", false
	}
	pw, ok := p.User.Password()
	return pw, ok && pw != ""
}

// redact returns u with its password replaced by "xxxxx".
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(an AMQP URL that does not parse)"
	}
	return p.Redacted()
}
