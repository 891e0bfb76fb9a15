package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

type nilErr struct{ code int }

func (e *nilErr) Error() string { return "code " + string(rune('0'+e.code)) }

// Issue 9 item 1: a handler returning a typed nil error (a nil *nilErr in a
// non-nil error) made Log panic on its Error method; the standard chain must
// pass the error on, described, without a panic.
func TestIssue9StandardChainSurvivesTypedNilError(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		var e *nilErr
		return e
	})
	chain := consumer.Chain(middleware.Log(logger), middleware.Recover(), middleware.Retry(retry.MaxAttempts(retry.Constant(0), 2)))
	err := chain(h).Handle(context.Background(), &broker.Message{ID: "m1", Attempt: 1})
	if err == nil {
		t.Fatal("Handle = nil; want the typed nil error passed on")
	}
	var pe *consumer.PanicError
	if errors.As(err, &pe) {
		t.Fatalf("Handle = %v; want the handler's error, not a panic of the middleware", pe)
	}
	if got := buf.String(); !strings.Contains(got, "typed nil") {
		t.Fatalf("log = %q; want the error described as a typed nil", got)
	}
}
