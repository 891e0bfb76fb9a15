package rabbitmq

import (
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Errors of the publisher.
var (
	// ErrNacked is returned by Publish when the broker refused the message
	// (basic.nack): it was not stored.
	ErrNacked = errors.New("rabbitmq: publish nacked by the broker")
	// ErrReturned is returned by Publish when a mandatory message could not
	// be routed to any queue (basic.return). Use errors.As with *ReturnError
	// for the broker's reason.
	ErrReturned = errors.New("rabbitmq: publish returned unroutable")
)

// ReturnError is the error of a mandatory publish the broker returned.
type ReturnError struct {
	// Exchange and RoutingKey are those of the returned publish.
	Exchange, RoutingKey string
	// Code is the broker's reply code (312, NO_ROUTE).
	Code int
	// Reason is the broker's reply text.
	Reason string
}

// Error says where the publish went and why the broker returned it.
func (e *ReturnError) Error() string {
	return "rabbitmq: publish to exchange " + quoteName(e.Exchange) + " with routing key " +
		quoteName(e.RoutingKey) + " returned: " + e.Reason
}

// Unwrap returns ErrReturned.
func (e *ReturnError) Unwrap() error { return ErrReturned }

func quoteName(s string) string {
	if s == "" {
		return `"" (default)`
	}
	return `"` + s + `"`
}

// unfixable reports whether err is an AMQP error that reconnecting cannot
// fix: the broker refused access, or an existing object does not match what
// we declare. NOT_FOUND is unfixable only where the caller says so (passive
// declaration), since a declared topology creates what is missing, and
// never for a queue that exists on a node that is down (queueNodeDown).
//
// A dial to several nodes that all failed is unfixable only when every node
// refused for such a reason: a node that was merely unreachable (refused,
// timed out, still booting) may come back, so one node that refuses the
// user (logged by the Connection) must not end a Source or Publisher whose
// other nodes are down for a while. A vhost that is down (530 NOT_ALLOWED
// "… is down", a node still booting) and a connection limit that is reached
// (530 "… connection limit (N) is reached") are transient too (see
// capacityRefusal), as is a node that stalls or drops the connection after
// the credentials were sent (see Dialer.dial).
func unfixable(err error, notFoundToo bool) bool {
	var ne *nodesError
	if errors.As(err, &ne) {
		for _, e := range ne.errs {
			if !unfixable(e, notFoundToo) {
				return false
			}
		}
		return true
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.Code {
	case amqp.NotAllowed:
		return !capacityRefusal(ae.Reason)
	case amqp.AccessRefused, amqp.PreconditionFailed, amqp.CommandInvalid:
		return true
	case amqp.NotFound:
		return notFoundToo && !queueNodeDown(err)
	}
	return false
}

// capacityRefusal reports whether reason, that of a 530 NOT_ALLOWED, is a
// refusal that ends by itself: a vhost that is down (a node still booting)
// or a connection limit that is reached ("connection limit (N) is
// reached", per vhost or per user), which frees up as other clients
// disconnect. Access refused to the vhost is not.
func capacityRefusal(reason string) bool {
	r := strings.ToLower(reason)
	return strings.Contains(r, " is down") || strings.Contains(r, " is reached")
}

// backoff is a capped exponential backoff with full jitter: the n-th wait is
// drawn uniformly from [min/2, min(max, min·2^n)]. It never returns less than
// min/2, so a loop using it can never spin hot. Owned by one goroutine.
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	ceil := b.min << min(b.n, 30)
	if ceil > b.max || ceil <= 0 {
		ceil = b.max
	}
	if b.n < 31 {
		b.n++
	}
	lo := b.min / 2
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo)
}

func (b *backoff) reset() { b.n = 0 }
