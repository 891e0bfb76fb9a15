package correlation

import (
	"context"
	"crypto/rand"
	"log/slog"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Header is the message header that carries the correlation id, unless
// Middleware is given another.
const Header = "x-correlation-id"

type key struct{}

// Middleware returns middleware that gives each handler call a correlation
// id: the value of the header (Header when header is empty) if the message
// has one, or a new random id otherwise. The handler reads it with ID(ctx),
// logs it with Attr(ctx), and passes it on to the messages it publishes with
// Inject, so that the work caused by one request can be followed from
// service to service without a tracing system.
func Middleware(header string) consumer.Middleware {
	if header == "" {
		header = Header
	}
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			id := m.Header[header]
			if id == "" {
				id = rand.Text()
			}
			return next.Handle(WithID(ctx, id), m)
		})
	}
}

// WithID returns a copy of ctx carrying the correlation id id, for a
// publisher that starts a new piece of work (an HTTP request, a job).
func WithID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, key{}, id)
}

// ID returns the correlation id carried by ctx, or "".
func ID(ctx context.Context) string {
	id, _ := ctx.Value(key{}).(string)
	return id
}

// Attr returns the correlation id of ctx as the log attribute
// correlation_id, for logger.With(correlation.Attr(ctx)).
func Attr(ctx context.Context) slog.Attr {
	return slog.String("correlation_id", ID(ctx))
}

// Inject writes the correlation id of ctx into header under Header and
// returns header; a nil header is replaced by a new map. It does nothing
// when ctx carries no id.
func Inject(ctx context.Context, header map[string]string) map[string]string {
	id := ID(ctx)
	if id == "" {
		return header
	}
	if header == nil {
		header = make(map[string]string, 1)
	}
	header[Header] = id
	return header
}
