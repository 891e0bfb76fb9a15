//go:build !race

package middleware_test

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// nopRecorder is a Recorder that keeps nothing.
type nopRecorder struct{}

func (nopRecorder) HandlerStarted(*broker.Message)                    {}
func (nopRecorder) HandlerDone(*broker.Message, error, time.Duration) {}

// A handled message costs the standard middleware no allocation of its
// own: Metrics, Recover and Retry none (no closure or defer escapes, a
// retry's backoff is built only after a failure), and Timeout only the
// context.WithTimeoutCause it must make. Checked without the race
// detector, which allocates on its own.
func TestStandardChainAllocations(t *testing.T) {
	ok := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	policy := retry.MaxAttempts(retry.Exponential(time.Millisecond, 10*time.Millisecond), 3)
	ctx := context.Background()
	m := &broker.Message{ID: "m", Body: []byte("body"), Attempt: 1}

	withTimeout := testing.AllocsPerRun(1000, func() {
		tctx, cancel := context.WithTimeoutCause(ctx, time.Second, middleware.ErrHandlerTimeout)
		_ = ok.Handle(tctx, m)
		cancel()
	})
	for _, c := range []struct {
		name string
		mw   consumer.Middleware
		want float64
	}{
		{"Metrics", middleware.Metrics(nopRecorder{}), 0},
		{"Recover", middleware.Recover(), 0},
		{"Retry", middleware.Retry(policy), 0},
		{"Metrics, Recover, Retry", consumer.Chain(middleware.Metrics(nopRecorder{}), middleware.Recover(), middleware.Retry(policy)), 0},
		{"Timeout", middleware.Timeout(time.Second), withTimeout},
		{"Metrics, Recover, Retry, Timeout", consumer.Chain(middleware.Metrics(nopRecorder{}), middleware.Recover(),
			middleware.Retry(policy), middleware.Timeout(time.Second)), withTimeout},
	} {
		h := c.mw(ok)
		if got := testing.AllocsPerRun(1000, func() { _ = h.Handle(ctx, m) }); got != c.want {
			t.Errorf("%s: %v allocations per handled message; want %v", c.name, got, c.want)
		}
	}
}
