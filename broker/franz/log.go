package franz

import (
	"context"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kgoLogger passes kgo's warnings and errors to the Source's slog logger.
// kgo's info and debug logs (every join, every fetch session) are left
// out. kgo does not log credentials: SASL mechanisms and TLS configs are
// not part of its log lines.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	switch level {
	case kgo.LogLevelError:
		lv = slog.LevelError
	case kgo.LogLevelWarn:
	default:
		return
	}
	k.l.Log(context.Background(), lv, "kgo: "+msg, keyvals...)
}
