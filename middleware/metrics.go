package middleware

import (
	"context"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// A Recorder receives measurements from Metrics. Implementations must be safe
// for concurrent use and cheap: they run on every message. The Prometheus
// implementation is package middleware/promqueuekit, whose Recorder.Options
// adds Metrics to a consumer together with what else it records; a
// Recorder that labels by consumer reads the name with
// consumer.NameFromContext in a middleware of its own, since these methods
// get no context.
type Recorder interface {
	// HandlerStarted is called when a handler starts on m.
	HandlerStarted(m *broker.Message)
	// HandlerDone is called when it returns, with its error and duration.
	// Outcome(err) classifies the error.
	HandlerDone(m *broker.Message, err error, d time.Duration)
}

// Metrics returns middleware that reports every handler call to r. A nil
// Recorder records nothing.
func Metrics(r Recorder) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		if r == nil {
			return next
		}
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) (err error) {
			r.HandlerStarted(m)
			start := time.Now()
			// Deferred, so that a panic passing through (Recover placed
			// outside Metrics) still ends the measurement; it is recorded as
			// a panic and re-raised for the Recover outside to handle.
			defer func() {
				if p := recover(); p != nil {
					r.HandlerDone(m, &consumer.PanicError{Value: p}, time.Since(start))
					panic(p)
				}
				r.HandlerDone(m, err, time.Since(start))
			}()
			return next.Handle(ctx, m)
		})
	}
}
