package middleware

// Internal tests: they read the limiters' state (tokens, buckets kept),
// which the API does not show.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

var okHandler = consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })

var quiet = consumer.WithLogger(slog.New(slog.DiscardHandler))

func tenant(m *broker.Message) string { return m.Header["tenant"] }

func msgOf(tenantName string) *broker.Message {
	return &broker.Message{ID: "m-" + tenantName, Topic: "calls", Header: map[string]string{"tenant": tenantName}, Attempt: 1}
}

func TestRateLimitRefusesAnInvalidConfigWithoutPanicking(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RateLimitConfig
	}{
		{"zero rate (the zero config)", RateLimitConfig{}},
		{"negative rate", RateLimitConfig{Rate: -1}},
		{"minus infinity", RateLimitConfig{Rate: rate.Limit(math.Inf(-1))}},
		{"NaN rate", RateLimitConfig{Rate: rate.Limit(math.NaN())}},
		{"negative burst", RateLimitConfig{Rate: 10, Burst: -1}},
		{"negative max keys", RateLimitConfig{Rate: 10, Key: tenant, MaxKeys: -1}},
		{"negative max keys without a key", RateLimitConfig{Rate: 10, MaxKeys: -5}},
	} {
		mw, err := RateLimit(tc.cfg)
		if !errors.Is(err, broker.ErrInvalidConfig) || mw != nil {
			t.Errorf("%s: RateLimit(%+v) = %v, %v; want nil, an error wrapping broker.ErrInvalidConfig", tc.name, tc.cfg, mw != nil, err)
		}
	}
	for _, tc := range []struct {
		name string
		cfg  RateLimitConfig
	}{
		{"rate.Inf", RateLimitConfig{Rate: rate.Inf}},
		{"+Inf float, taken as rate.Inf", RateLimitConfig{Rate: rate.Limit(math.Inf(1))}},
		{"a tiny rate", RateLimitConfig{Rate: rate.Limit(math.SmallestNonzeroFloat64)}},
		{"a huge burst", RateLimitConfig{Rate: 1, Burst: math.MaxInt}},
		{"keyed, defaults", RateLimitConfig{Rate: 1, Key: tenant}},
	} {
		mw, err := RateLimit(tc.cfg)
		if err != nil || mw == nil {
			t.Errorf("%s: RateLimit = %v; want a middleware", tc.name, err)
			continue
		}
		if err := mw(okHandler).Handle(context.Background(), msgOf("a")); err != nil {
			t.Errorf("%s: first message: %v; want it through (burst >= 1)", tc.name, err)
		}
	}
}

func TestRateLimitDefaults(t *testing.T) {
	cfg, err := RateLimitConfig{Rate: 5}.normalize()
	if err != nil || cfg.Burst != 1 || cfg.MaxKeys != defaultMaxKeys {
		t.Errorf("normalize({Rate: 5}) = burst %d, max keys %d, %v; want 1, %d, nil", cfg.Burst, cfg.MaxKeys, err, defaultMaxKeys)
	}
}

// ctxCancelledWhileWaiting returns a ctx cancelled once l has a waiter
// holding a reservation (its bucket's tokens below zero).
func ctxCancelledWhileWaiting(t *testing.T, b *bucket) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for b.lim.Tokens() >= 0 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	return ctx
}

func TestRateLimitCancelledWaitGivesTheTokenBackAndSkipsTheHandler(t *testing.T) {
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour)}))
	calls := 0
	h := l.wrap(consumer.HandlerFunc(func(context.Context, *broker.Message) error { calls++; return nil }))
	if err := h.Handle(context.Background(), msgOf("a")); err != nil || calls != 1 {
		t.Fatalf("first message: %v, %d calls; want it through on the burst", err, calls)
	}
	err := h.Handle(ctxCancelledWhileWaiting(t, l.one), msgOf("a"))
	if !errors.Is(err, consumer.ErrNotHandled) || calls != 1 {
		t.Fatalf("second message, ctx cancelled while it waited: %v, %d calls; want an error wrapping consumer.ErrNotHandled, the handler not called", err, calls)
	}
	if err.Error() != "queuekit: rate limit wait: "+consumer.ErrNotHandled.Error() {
		t.Errorf("error text %q", err)
	}
	if tok := l.one.lim.Tokens(); tok < -0.01 {
		t.Errorf("tokens after the cancelled wait = %.3f; want ~0: the reservation given back", tok)
	}
}

// Several waiters cut short at once (a Pause) leave the limiter as it was:
// without the gate of one reservation at a time, x/time/rate would restore
// only the last reservation's token and leave the bucket in debt.
func TestRateLimitManyCancelledWaitsLeaveNoDebt(t *testing.T) {
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour)}))
	if err := l.wait(context.Background(), msgOf("a")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	const waiters = 8
	var entered sync.WaitGroup
	errs := make(chan error, waiters)
	for range waiters {
		entered.Add(1)
		go func() {
			entered.Done()
			errs <- l.wait(ctx, msgOf("a"))
		}()
	}
	entered.Wait()
	for l.one.lim.Tokens() >= 0 { // one of them holds a reservation
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the others queue at the gate
	cancel()
	for range waiters {
		if err := <-errs; !errors.Is(err, consumer.ErrNotHandled) {
			t.Errorf("waiter: %v; want ErrNotHandled", err)
		}
	}
	if tok := l.one.lim.Tokens(); tok < -0.01 {
		t.Errorf("tokens after %d cancelled waits = %.3f; want ~0 (no debt)", waiters, tok)
	}
}

func TestRateLimitWithADoneContextTakesNoToken(t *testing.T) {
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: 1, Burst: 3}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := l.wrap(consumer.HandlerFunc(func(context.Context, *broker.Message) error { called = true; return nil })).Handle(ctx, msgOf("a"))
	if !errors.Is(err, consumer.ErrNotHandled) || called {
		t.Errorf("Handle(cancelled ctx) = %v, handler called %v; want ErrNotHandled, not called", err, called)
	}
	if tok := l.one.lim.Tokens(); tok < 2.99 {
		t.Errorf("tokens = %.3f; want the full burst 3", tok)
	}
}

func TestRateLimitGivesUpAtOnceWhenTheTokenComesAfterTheDeadline(t *testing.T) {
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour)}))
	_ = l.wait(context.Background(), msgOf("a"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour-time.Minute)
	defer cancel()
	if err := l.wait(ctx, msgOf("a")); !errors.Is(err, consumer.ErrNotHandled) || ctx.Err() != nil {
		t.Errorf("wait with a deadline before the token = %v (ctx %v); want ErrNotHandled before the deadline", err, ctx.Err())
	}
	if tok := l.one.lim.Tokens(); tok < -0.01 {
		t.Errorf("tokens = %.3f; want ~0: the reservation given back", tok)
	}
}

func TestRateLimitKeysHaveLimitersOfTheirOwn(t *testing.T) {
	var waited []string
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour), Key: tenant,
		OnWait: func(_ context.Context, m *broker.Message, d time.Duration) {
			if d <= 0 {
				t.Errorf("OnWait(%v); want > 0", d)
			}
			waited = append(waited, m.Header["tenant"])
		}}))
	for _, k := range []string{"acme", "globex", ""} {
		if err := l.wait(context.Background(), msgOf(k)); err != nil {
			t.Errorf("first message of key %q: %v; want it through, whatever the other keys did", k, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.wait(ctx, msgOf("acme")); !errors.Is(err, consumer.ErrNotHandled) {
		t.Errorf("second message of acme: %v; want it held (ErrNotHandled when its short ctx cannot wait)", err)
	}
	if len(waited) != 1 || waited[0] != "acme" {
		t.Errorf("OnWait called for %q; want once, for acme (messages with a token at hand do not call it)", waited)
	}
	if n := l.keys.len(); n != 3 {
		t.Errorf("buckets kept = %d; want 3", n)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Memory stays bounded however many keys come: 100,000 distinct keys (a
// million with QUEUEKIT_FULL=1) keep at most MaxKeys limiters, the least
// recently used going first. The first MaxKeys keys find a full bucket;
// past them, each new key starts with an empty one (its message, with a
// ctx shorter than 1/Rate, gives up at once).
func TestRateLimitKeysStayBounded(t *testing.T) {
	n := 100_000
	if os.Getenv("QUEUEKIT_FULL") == "1" {
		n = 1_000_000
	}
	const maxKeys = 1000
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour), Key: tenant, MaxKeys: maxKeys}))
	m := msgOf("")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hot := "hot"
	before := heapInUse()
	peak := 0
	for i := range n {
		m.Header["tenant"] = strconv.Itoa(i)
		err := l.wait(ctx, m)
		if full := i >= maxKeys-1; full != errors.Is(err, consumer.ErrNotHandled) || !full && err != nil {
			t.Fatalf("key %d: %v; want through below MaxKeys, given up at once past it", i, err)
		}
		if i%100 == 0 { // keep one key recently used
			if k, ok := l.keys.acquire(hot); !ok {
				l.keys.release(k)
			}
		}
		peak = max(peak, l.keys.len())
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("%d distinct keys, MaxKeys %d: at most %d limiters kept, heap grew %d KiB", n, maxKeys, peak, grown/1024)
	if peak > maxKeys {
		t.Errorf("limiters kept = %d; want at most %d", peak, maxKeys)
	}
	l.keys.mu.Lock()
	_, hotKept := l.keys.m[hot]
	_, oldKept := l.keys.m["0"]
	l.keys.mu.Unlock()
	if !hotKept || oldKept {
		t.Errorf("kept hot key %v, key 0 %v; want the recently used kept, the oldest forgotten", hotKept, oldKept)
	}
	// Unbounded, 100,000 limiters would take well over 10 MiB.
	if grown > 4<<20 {
		t.Errorf("heap grew %d KiB over %d keys; want bounded (< 4 MiB)", grown/1024, n)
	}
}

func mustNormalize(t *testing.T, cfg RateLimitConfig) RateLimitConfig {
	t.Helper()
	cfg, err := cfg.normalize()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// entries records, per message ID, the Attempt of each delivery that reached
// the rate limiter.
type entries struct {
	mu sync.Mutex
	m  map[string][]int
}

func (e *entries) wrap(next consumer.Handler) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		e.mu.Lock()
		if e.m == nil {
			e.m = map[string][]int{}
		}
		e.m[m.ID] = append(e.m[m.ID], m.Attempt)
		e.mu.Unlock()
		return next.Handle(ctx, m)
	})
}

func (e *entries) of(id string) []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]int(nil), e.m[id]...)
}

// eventually polls cond every millisecond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func publish(t *testing.T, b *memory.Broker, queue string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := b.Publish(context.Background(), queue, &broker.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// runConsumer runs c in the background; the returned func waits for Run.
func runConsumer(t *testing.T, c *consumer.Consumer) (wait func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	t.Cleanup(func() { _ = c.Close() })
	return func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
			return nil
		}
	}
}

// attemptsOnRedelivery consumes queue without any limit until id comes and
// returns its Attempt.
func attemptOnRedelivery(t *testing.T, b *memory.Broker, queue, id string) int {
	t.Helper()
	src, err := b.Source(queue, memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	attempt := 0
	c, err := consumer.New(src, consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if m.ID == id {
			attempt = m.Attempt
			cancel()
		}
		return nil
	}), quiet)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Run(ctx)
	if attempt == 0 {
		t.Fatalf("message %s was not redelivered", id)
	}
	return attempt
}

// Issue 14: Pause while a message waits for its token gives the message
// back (the token too) without spending an attempt: its next delivery, after
// Resume, has the same Attempt.
func TestRateLimitPauseDuringALongWaitGivesTheMessageBack(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "calls", "first", "second")
	src, err := b.Source("calls", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour)}))
	var seen entries
	var handled atomic.Int64
	c, err := consumer.New(src, seen.wrap(l.wrap(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		handled.Add(1)
		return nil
	}))), consumer.WithName("calls"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	wait := runConsumer(t, c)
	eventually(t, "the second message to wait for its token", func() bool { return handled.Load() == 1 && l.one.lim.Tokens() < 0 })

	ctx := context.Background()
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the waiting message to be given back", func() bool { return c.Stats().GivenBack == 1 })
	if tok := l.one.lim.Tokens(); tok < -0.01 {
		t.Errorf("tokens after the wait was cut short = %.3f; want ~0 (the reservation given back)", tok)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second message to be delivered again", func() bool { return len(seen.of("second")) == 2 })
	if got := seen.of("second"); got[1] != got[0] {
		t.Errorf("Attempt of the second message: %d, then %d after Pause and Resume; want the same (not spent)", got[0], got[1])
	}
	if s := c.Stats(); s.Failed != 0 || s.Handled != 1 {
		t.Errorf("stats %+v; want 1 handled, no failure", s)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Shutdown(sctx); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	_ = wait()
	if got := attemptOnRedelivery(t, b, "calls", "second"); got != seen.of("second")[0] {
		t.Errorf("Attempt on redelivery = %d; want %d", got, seen.of("second")[0])
	}
}

// Issue 14 must-show: Shutdown while a message waits for its token (0.1
// message/s, burst 1: a 10 s wait) returns within the drain budget, and the
// message is redelivered with its Attempt unchanged.
func TestRateLimitShutdownDuringALongWaitReturnsWithinTheDrainBudget(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "calls", "first", "second")
	src, err := b.Source("calls", memory.SourceConfig{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	var waited atomic.Int64
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: 0.1, Burst: 1, OnWait: func(_ context.Context, _ *broker.Message, d time.Duration) {
		waited.Store(int64(d))
	}}))
	var handled atomic.Int64
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		handled.Add(1)
		return nil
	}), consumer.WithMiddleware(l.wrap), consumer.WithConcurrency(2), consumer.WithDrainTimeout(30*time.Second), quiet)
	if err != nil {
		t.Fatal(err)
	}
	wait := runConsumer(t, c)
	eventually(t, "the first message handled and the second waiting", func() bool {
		return handled.Load() == 1 && l.one.lim.Tokens() < 0 // a reservation held: the 10 s wait began
	})
	const budget = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	err = c.Shutdown(ctx)
	took := time.Since(start)
	t.Logf("Shutdown during a 10 s rate-limit wait returned %v after %v (budget %v); the wait ended after %v",
		err, took.Round(10*time.Microsecond), budget, time.Duration(waited.Load()).Round(10*time.Microsecond))
	if err != nil {
		t.Fatalf("Shutdown = %v; want nil, within the budget", err)
	}
	if werr := wait(); !errors.Is(werr, consumer.ErrConsumerClosed) {
		t.Errorf("Run = %v; want ErrConsumerClosed", werr)
	}
	if s := c.Stats(); s.GivenBack != 1 || s.Failed != 0 || s.Abandoned != 0 || s.Handled != 1 {
		t.Errorf("stats %+v; want 1 handled, 1 given back, no failure, none abandoned", s)
	}
	if got := attemptOnRedelivery(t, b, "calls", "second"); got != 1 {
		t.Errorf("Attempt of the redelivered message = %d; want 1 (the wait spent none)", got)
	}
}

// Issue 14 must-show: the rate achieved through a consumer under a limit of
// 100 messages/s, over 5 s (30 s with QUEUEKIT_FULL=1). The figure is
// logged; the assertion is loose (25 %; 5 % at full size), as the machine
// may be busy.
func TestRateLimitAchievedRate(t *testing.T) {
	const limit = 100
	secs, tolerance := 5, 0.25
	if os.Getenv("QUEUEKIT_FULL") == "1" {
		secs, tolerance = 30, 0.05
	}
	n := limit*secs + 1 // the first passes on the burst: n-1 intervals of 1/limit
	b := memory.NewBroker()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	publish(t, b, "calls", ids...)
	src, err := b.Source("calls", memory.SourceConfig{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := RateLimit(RateLimitConfig{Rate: limit})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu          sync.Mutex
		first, last time.Time
		count       int
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if count == 0 {
			first = now
		}
		last = now
		if count++; count == n {
			cancel()
		}
		return nil
	}), consumer.WithMiddleware(rl), consumer.WithConcurrency(4), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if count != n || c.Stats().Handled != int64(n) {
		t.Fatalf("handled %d (stats %+v); want %d", count, c.Stats(), n)
	}
	elapsed := last.Sub(first)
	got := float64(n-1) / elapsed.Seconds()
	dev := (got - limit) / limit
	t.Logf("limit %d msg/s, 4 workers: %d messages in %v: %.2f msg/s, deviation %+.2f %%", limit, n, elapsed.Round(time.Millisecond), got, 100*dev)
	if math.Abs(dev) > tolerance {
		t.Errorf("achieved %.2f msg/s under a limit of %d; want within %.0f %%", got, limit, 100*tolerance)
	}
}

// BenchmarkRateLimit measures what RateLimit costs a message when it does
// not make it wait, against the bare handler, in one run:
//
//	go test -run '^$' -bench BenchmarkRateLimit -benchmem ./middleware
func BenchmarkRateLimit(b *testing.B) {
	m := msgOf("acme")
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		cfg  *RateLimitConfig
	}{
		{"bare", nil},
		{"rate=Inf", &RateLimitConfig{Rate: rate.Inf}},
		{"rate=1e9", &RateLimitConfig{Rate: 1e9, Burst: 1000}},
		{"rate=1e9/keyed", &RateLimitConfig{Rate: 1e9, Burst: 1000, Key: tenant}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := consumer.Handler(okHandler)
			if bc.cfg != nil {
				rl, err := RateLimit(*bc.cfg)
				if err != nil {
					b.Fatal(err)
				}
				h = rl(h)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := h.Handle(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Review M6: a key the set does not keep, once it is full, starts with an
// empty bucket, and a bucket in use is never forgotten, so that a producer
// cycling more keys than MaxKeys gets no more through than each key's limit.
// 3 keys (then 10) at 2 messages/s, burst 1, MaxKeys 2, 100 messages of
// each key waiting at once for 1 s of fake time: at most 1 + 2 = 3 per key.
func TestRateLimitCyclingMoreKeysThanMaxKeysGetsNoMoreThrough(t *testing.T) {
	for _, nkeys := range []int{3, 10} {
		synctest.Test(t, func(t *testing.T) {
			l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: 2, Burst: 1, MaxKeys: 2,
				Key: func(m *broker.Message) string { return m.ID }}))
			var passed atomic.Int64
			h := l.wrap(consumer.HandlerFunc(func(context.Context, *broker.Message) error { passed.Add(1); return nil }))
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			var wg sync.WaitGroup
			for i := range 100 * nkeys {
				wg.Go(func() { _ = h.Handle(ctx, &broker.Message{ID: strconv.Itoa(i % nkeys)}) })
			}
			wg.Wait()
			limit := int64(nkeys * (1 + 2))
			t.Logf("%d keys at 2/s, burst 1, MaxKeys 2, 1 s: %d messages through (limit %d); %d limiters kept",
				nkeys, passed.Load(), limit, l.keys.len())
			if passed.Load() > limit {
				t.Errorf("%d messages through; want at most %d (burst + rate x 1 s per key)", passed.Load(), limit)
			}
		})
	}
}

// Review M6: below MaxKeys a new key starts with a full bucket; once the set
// is full, a key it does not keep (new, or forgotten) starts empty: its first
// message waits 1/Rate.
func TestRateLimitKeyNotKeptStartsEmptyOnceTheSetIsFull(t *testing.T) {
	l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour), Key: tenant, MaxKeys: 2}))
	for _, k := range []string{"a", "b"} {
		if err := l.wait(context.Background(), msgOf(k)); err != nil {
			t.Errorf("first message of %q below MaxKeys: %v; want it through at once", k, err)
		}
	}
	for _, k := range []string{"c", "a", "b"} { // each forgets the least recently used
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := l.wait(ctx, msgOf(k))
		cancel()
		if !errors.Is(err, consumer.ErrNotHandled) {
			t.Errorf("message of %q, not kept, set full: %v; want it held (an empty bucket)", k, err)
		}
	}
	if n := l.keys.len(); n != 2 {
		t.Errorf("buckets kept = %d; want 2", n)
	}
}

// Review M6: memory is bounded in bytes, not only in keys: a key longer than
// maxKeyLen is kept as a digest, and a short key is copied, so that it does
// not hold the (large) string it was cut from.
func TestRateLimitLongKeysTakeBoundedMemory(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		name string
		key  func(i int) string
	}{
		{"1 MiB keys", func(i int) string { return fmt.Sprintf("%08d", i) + big }},
		{"8-byte keys cut from 1 MiB strings", func(i int) string { return (fmt.Sprintf("%08d", i) + big)[:8] }},
	} {
		var cur string
		l := newRateLimiter(mustNormalize(t, RateLimitConfig{Rate: rate.Every(time.Hour), MaxKeys: 1000,
			Key: func(*broker.Message) string { return cur }}))
		before := heapInUse()
		for i := range 100 {
			cur = tc.key(i)
			if err := l.wait(context.Background(), msgOf("")); err != nil {
				t.Fatalf("%s: key %d: %v; want it through (first of its key)", tc.name, i, err)
			}
		}
		cur = ""
		grown := int64(heapInUse()) - int64(before)
		t.Logf("%s: 100 keys kept, heap grew %d KiB", tc.name, grown/1024)
		if grown > 1<<20 {
			t.Errorf("%s: heap grew %d KiB for 100 keys; want < 1 MiB", tc.name, grown/1024)
		}
		l.keys.mu.Lock()
		for k := range l.keys.m {
			if len(k) > maxKeyLen {
				t.Errorf("%s: a key of %d bytes kept; want at most %d", tc.name, len(k), maxKeyLen)
				break
			}
		}
		l.keys.mu.Unlock()
		// The same long key is the same limiter.
		cur = tc.key(7)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := l.wait(ctx, msgOf("")); !errors.Is(err, consumer.ErrNotHandled) {
			t.Errorf("%s: second message of key 7: %v; want it held (its limiter kept)", tc.name, err)
		}
		cancel()
	}
}

// handleRecovering calls h and reports a panic instead of crashing the test.
func handleRecovering(h consumer.Handler, ctx context.Context, m *broker.Message) (err error, panicked any) {
	defer func() { panicked = recover() }()
	return h.Handle(ctx, m), nil
}

// Review LOW: a Key that panics does not crash the process, nor is it taken
// for the handler's failure: the handler is not called, and the error names
// RateLimitConfig.Key and the panic and is permanent (the same message would
// panic again; a kill switch does not count it).
func TestRateLimitPanickingKeyIsAPermanentErrorAndSkipsTheHandler(t *testing.T) {
	mw, err := RateLimit(RateLimitConfig{Rate: 10, Key: func(m *broker.Message) string { return m.Header["tenant"][:3] }})
	if err != nil {
		t.Fatal(err)
	}
	called := false
	h := mw(consumer.HandlerFunc(func(context.Context, *broker.Message) error { called = true; return nil }))
	err, p := handleRecovering(h, context.Background(), msgOf("a"))
	if p != nil {
		t.Fatalf("Handle panicked: %v; want an error", p)
	}
	var pe *consumer.PanicError
	if called || !retry.IsPermanent(err) || !errors.As(err, &pe) || !strings.Contains(err.Error(), "RateLimitConfig.Key") ||
		!strings.Contains(err.Error(), "out of range") {
		t.Errorf("handler called %v, error %v; want the handler skipped and a permanent error naming RateLimitConfig.Key and the panic", called, err)
	}
	if err := h.Handle(context.Background(), msgOf("acme")); err != nil || !called {
		t.Errorf("a message Key can read: %v, handler called %v; want it through", err, called)
	}
}

// Review LOW: a panicking OnWait loses no message: the panic is recovered and
// the message goes on as if OnWait had returned (to the handler after a
// wait, back to the broker after a wait cut short).
func TestRateLimitPanickingOnWaitLosesNoMessage(t *testing.T) {
	mw, err := RateLimit(RateLimitConfig{Rate: 1000, OnWait: func(context.Context, *broker.Message, time.Duration) { panic("metrics down") }})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	h := mw(consumer.HandlerFunc(func(context.Context, *broker.Message) error { calls++; return nil }))
	for i := range 3 { // the first takes the burst; the others wait ~1 ms
		if err, p := handleRecovering(h, context.Background(), msgOf("a")); err != nil || p != nil {
			t.Errorf("message %d: error %v, panic %v; want it handled", i, err, p)
		}
	}
	if calls != 3 {
		t.Errorf("handler called %d times; want 3", calls)
	}
	mw, _ = RateLimit(RateLimitConfig{Rate: rate.Every(time.Hour), OnWait: func(context.Context, *broker.Message, time.Duration) { panic("metrics down") }})
	h = mw(okHandler)
	_ = h.Handle(context.Background(), msgOf("a"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err, p := handleRecovering(h, ctx, msgOf("a")); !errors.Is(err, consumer.ErrNotHandled) || p != nil {
		t.Errorf("a wait cut short: error %v, panic %v; want ErrNotHandled", err, p)
	}
}

// Review LOW, through the runtime: messages whose Key panics are
// dead-lettered on their first delivery, the handler never sees them, the
// process does not crash, and a kill switch that would trip on 2 failures
// stays closed.
func TestRateLimitPanickingKeyDoesNotTripAKillSwitch(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "calls", "p1", "p2", "p3", "p4")
	src, err := b.Source("calls", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := RateLimit(RateLimitConfig{Rate: 1000, Key: func(m *broker.Message) string { return m.Header["tenant"][:3] }})
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		handled.Add(1)
		return nil
	}), consumer.WithMiddleware(rl), consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 2, Threshold: 0.5}), quiet)
	if err != nil {
		t.Fatal(err)
	}
	wait := runConsumer(t, c)
	eventually(t, "the 4 messages dead-lettered", func() bool { return c.Stats().DeadLettered == 4 })
	if ks, s := c.KillSwitch(), c.Stats(); ks.State != "closed" || handled.Load() != 0 || s.Requeued != 0 {
		t.Errorf("kill switch %+v, handled %d, stats %+v; want closed, none handled, none requeued", ks, handled.Load(), s)
	}
	_ = c.Close()
	_ = wait()
}
