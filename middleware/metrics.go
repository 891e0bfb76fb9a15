package middleware

import (
	"context"
	"time"

	"github.com/queuekit/queuekit/consumer"
)

// A Recorder receives measurements from Metrics. Implementations must be safe
// for concurrent use and cheap: they run on every message. The Prometheus
// implementation is in middleware/prometheus.
type Recorder interface {
	// HandlerStarted is called when a handler starts on m.
	HandlerStarted(m *consumer.Message)
	// HandlerDone is called when it returns, with its error and duration.
	// Outcome(err) classifies the error.
	HandlerDone(m *consumer.Message, err error, d time.Duration)
}

// Metrics returns middleware that reports every handler call to r. A nil
// Recorder records nothing.
func Metrics(r Recorder) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		if r == nil {
			return next
		}
		return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
			r.HandlerStarted(m)
			start := time.Now()
			err := next.Handle(ctx, m)
			r.HandlerDone(m, err, time.Since(start))
			return err
		})
	}
}
