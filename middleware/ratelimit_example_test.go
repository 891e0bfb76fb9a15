package middleware_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/time/rate"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

// A per-tenant limit of 20 calls a second to a partner API: each tenant's
// messages wait for their own tokens, and a Pause or Shutdown during a wait
// gives the message back unspent.
func ExampleRateLimit() {
	b := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, tenant := range []string{"acme", "globex", "acme", "globex", "acme", "globex"} {
		_ = b.Publish(ctx, "calls", &broker.Message{Header: map[string]string{"tenant": tenant}})
	}
	src, _ := b.Source("calls", memory.SourceConfig{Prefetch: 2})

	rl, err := middleware.RateLimit(middleware.RateLimitConfig{
		Rate: rate.Every(50 * time.Millisecond), // 20 a second, per tenant
		Key:  func(m *broker.Message) string { return m.Header["tenant"] },
		// OnWait: rec.OnWait, with a promqueuekit Recorder, for a histogram of the waits.
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	handled := map[string]int{}
	start := time.Now()
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		handled[m.Header["tenant"]]++ // one worker: no lock needed
		if handled["acme"]+handled["globex"] == 6 {
			cancel()
		}
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithMiddleware(rl), consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = c.Run(ctx)
	// Each tenant's first message passes at once, the next two 50 ms apart.
	fmt.Println("handled:", handled)
	fmt.Println("took at least 100ms:", time.Since(start) >= 100*time.Millisecond)

	_, err = middleware.RateLimit(middleware.RateLimitConfig{}) // Rate is required
	fmt.Println(err)
	// Output:
	// handled: map[acme:3 globex:3]
	// took at least 100ms: true
	// queuekit: invalid configuration: rate limit: rate 0, want > 0 (rate.Inf for no limit)
}
