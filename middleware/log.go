package middleware

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

type loggerKey struct{}

type messageLogger struct {
	l *slog.Logger
	m *broker.Message
}

// Log returns middleware that logs every handled message with log/slog: at
// Debug when the handler succeeded and at Warn when it failed (Error for a
// panic), with the attributes consumer (the consumer's name, when Log runs
// under a Consumer), topic, message_id, attempt, outcome (see Outcome),
// duration and, on failure, error. A nil logger means slog.Default().
//
// Inside Log, the handler can get a logger carrying the message's attributes
// with Logger(ctx).
func Log(l *slog.Logger) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			logger := l
			if logger == nil {
				logger = slog.Default()
			}
			start := time.Now()
			err := next.Handle(context.WithValue(ctx, loggerKey{}, &messageLogger{l: logger, m: m}), m)
			level := slog.LevelDebug
			switch {
			case err == nil:
			case isPanic(err):
				level = slog.LevelError
			default:
				level = slog.LevelWarn
			}
			if !logger.Enabled(ctx, level) {
				return err
			}
			attrs := make([]slog.Attr, 0, 8)
			if name, ok := consumer.NameFromContext(ctx); ok {
				attrs = append(attrs, slog.String("consumer", name))
			}
			attrs = append(attrs,
				slog.String("topic", m.Topic),
				slog.String("message_id", m.ID),
				slog.Int("attempt", m.Attempt),
				slog.String("outcome", Outcome(err)),
				slog.Duration("duration", time.Since(start)),
			)
			if err != nil {
				attrs = append(attrs, slog.String("error", consumer.ErrorText(err)))
			}
			logger.LogAttrs(ctx, level, "queuekit: message handled", attrs...)
			return err
		})
	}
}

// Logger returns a logger carrying the current consumer's name and message's
// topic, message_id and attempt when ctx comes from a handler inside Log, and
// slog.Default() otherwise.
func Logger(ctx context.Context) *slog.Logger {
	ml, ok := ctx.Value(loggerKey{}).(*messageLogger)
	if !ok {
		return slog.Default()
	}
	l := ml.l
	if name, ok := consumer.NameFromContext(ctx); ok {
		l = l.With("consumer", name)
	}
	return l.With("topic", ml.m.Topic, "message_id", ml.m.ID, "attempt", ml.m.Attempt)
}

// Outcome classifies a handler result for logs and metrics: "ok", "panic",
// "permanent" (retry.Permanent), "timeout" (ErrHandlerTimeout or a deadline)
// or "error".
func Outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case isPanic(err):
		return "panic"
	case retry.IsPermanent(err):
		return "permanent"
	case errors.Is(err, ErrHandlerTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "error"
}

func isPanic(err error) bool {
	var pe *consumer.PanicError
	return errors.As(err, &pe)
}
