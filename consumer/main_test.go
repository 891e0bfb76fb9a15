package consumer_test

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quiet is a logger for tests whose log lines are not under test.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
