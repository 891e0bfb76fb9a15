package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/rabbitmq"
)

func TestExitCode(t *testing.T) {
	const raw = "amqp://u:pw@h/"
	dialRefused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"a usage error", &usageError{"bad"}, exitUsage},
		{"invalid configuration", fmt.Errorf("x: %w", broker.ErrInvalidConfig), exitUsage},
		{"an empty selection", fmt.Errorf("x: %w", broker.ErrEmptySelection), exitUsage},
		{"credentials refused, redacted", fmt.Errorf("dial: %w", rabbitmq.RedactError(amqp.ErrCredentials, raw)), exitConnect},
		{"vhost refused", fmt.Errorf("dial: %w", amqp.ErrVhost), exitConnect},
		{"connection refused", fmt.Errorf("dial: %w", dialRefused), exitConnect},
		{"no such host", fmt.Errorf("x: %w", &net.DNSError{Err: "no such host", Name: "h", IsNotFound: true}), exitConnect},
		{"Kafka SASL refused", fmt.Errorf("x: %w", kafkago.SASLAuthenticationFailed), exitConnect},
		{"the deadline", fmt.Errorf("connecting: %w", context.DeadlineExceeded), exitFailed},
		{"a deadline around a dial error", fmt.Errorf("%w: %w", context.DeadlineExceeded, dialRefused), exitFailed},
		{"interrupted", context.Canceled, exitFailed},
		{"no such queue", fmt.Errorf("x: %w", &amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND"}), exitFailed},
		{"a read error mid-operation", &net.OpError{Op: "read", Err: errors.New("reset")}, exitFailed},
		// Review of issue 11's CLI, findings 3 and 4.
		{"the cursor's dead letter is gone", fmt.Errorf("list: cursor \"5:m\": %w", broker.ErrDeadLetterNotFound), exitPartial},
		{"a missing dead letter among broker failures", errors.Join(broker.ErrDeadLetterNotFound, &amqp.Error{Code: amqp.NotFound}), exitFailed},
		{"vhost not found (530 from the broker)", fmt.Errorf("dial: %w", rabbitmq.RedactError(&amqp.Error{Code: amqp.NotAllowed, Server: true, Reason: "NOT_ALLOWED - vhost nope not found"}, raw)), exitConnect},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("%s: exitCode(%v) = %d; want %d", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestIsPartial(t *testing.T) {
	res := broker.DeadLetterResult{
		Missing: []string{"a"},
		Skipped: []broker.Skipped{broker.NewSkipped("b", broker.ErrRedriveLimit), broker.NewSkipped("c", broker.ErrNoSource)},
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"the result's own error", res.Err(), true},
		{"the result's error wrapped", fmt.Errorf("rabbitmq: redrive: %w", res.Err()), true},
		{"a missing id alone", fmt.Errorf("%w: \"x\"", broker.ErrDeadLetterNotFound), true},
		{"a failure among the skips", errors.Join(res.Err(), errors.New("channel closed")), false},
		{"a failure among the skips, wrapped", fmt.Errorf("redrive: %w", errors.Join(res.Err(), errors.New("channel closed"))), false},
		{"a skip of an adapter's wrapping", fmt.Errorf("x: %w", broker.NewSkipped("d", fmt.Errorf("rabbitmq: limit: %w", broker.ErrRedriveLimit))), true},
		{"the deadline", errors.Join(res.Err(), context.DeadlineExceeded), false},
		{"a broker error", errors.New("channel closed"), false},
	} {
		if got := isPartial(tc.err); got != tc.want {
			t.Errorf("%s: isPartial(%v) = %v; want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
