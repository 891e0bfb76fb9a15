package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"

	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
)

// Exit codes, documented in doc.go and in the usage text.
const (
	exitOK       = 0 // everything selected was handled
	exitPartial  = 1 // some selected or named dead letters were missing or skipped
	exitUsage    = 2 // bad command line or configuration
	exitConnect  = 3 // the broker cannot be reached, or refused the credentials
	exitFailed   = 4 // the operation failed, timed out or was interrupted
	exitCodesDoc = `Exit codes:
  0  done: every selected dead letter was listed, redriven or purged
  1  partly done: some named dead letters are missing (or show found none,
     or the dead letter a --cursor names is gone),
     or some selected ones were skipped (redrive limit, no source); the
     output says which
  2  usage error: bad flags or arguments, an empty selection, bad configuration
  3  cannot connect: the broker cannot be reached or refused the credentials
     or the vhost
  4  the operation failed: the broker refused it (e.g. no such queue), it
     did not finish within --timeout (also when a host accepted the
     connection but never answered), or it was interrupted; what was done
     before is reported
`
)

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitCode returns the exit code for an error that stopped a command.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue), errors.Is(err, broker.ErrInvalidConfig), errors.Is(err, broker.ErrEmptySelection):
		return exitUsage
	case isConnectError(err):
		return exitConnect
	case isPartial(err):
		// A dead letter that is not there (a cursor's, since removed):
		// exit 1, as for a missing --id.
		return exitPartial
	default:
		return exitFailed
	}
}

// isConnectError reports whether err says that the broker could not be
// reached or refused the credentials: a network error on dial, a TLS
// failure, or an authentication refusal.
func isConnectError(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		// The operation's own deadline: reported as a failed operation
		// (exit 4), as it may have got half-way.
		return false
	}
	var (
		op      *net.OpError
		dns     *net.DNSError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		cert    *tls.CertificateVerificationError
		rec     tls.RecordHeaderError
		kerr    kafkago.Error
	)
	switch {
	case errors.Is(err, amqp.ErrCredentials), errors.Is(err, amqp.ErrSASL), isVhostRefused(err):
		return true
	case errors.As(err, &op) && op.Op == "dial", errors.As(err, &dns):
		return true
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &cert), errors.As(err, &rec):
		return true
	case errors.As(err, &kerr):
		switch kerr {
		case kafkago.SASLAuthenticationFailed, kafkago.UnsupportedSASLMechanism, kafkago.IllegalSASLState:
			return true
		}
	}
	return false
}

// isVhostRefused reports whether err is RabbitMQ's refusal of the URL's
// vhost: 530 NOT_ALLOWED in answer to connection.open ("vhost x not found",
// "access to vhost 'x' refused for user 'u'"), or amqp091's own ErrVhost
// when the broker closed the socket without a word.
func isVhostRefused(err error) bool {
	var aerr *amqp.Error
	return errors.Is(err, amqp.ErrVhost) || errors.As(err, &aerr) && aerr.Server && aerr.Code == amqp.NotAllowed
}
