package middleware

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// RateLimitConfig configures RateLimit. Only Rate is required; the zero
// value of every other field means its documented default.
type RateLimitConfig struct {
	// Rate is how many messages per second may reach the handler, on
	// average. rate.Inf means no limit (RateLimit then returns the handler
	// unwrapped); rate.Every(d) gives one message every d. A Rate of zero,
	// less, or NaN is an invalid configuration.
	Rate rate.Limit
	// Burst is how many messages may pass at once after the limiter has been
	// idle: the size of the token bucket. Default 1; negative is invalid.
	Burst int
	// Key, when set, gives each message's key a limiter of its own, each at
	// Rate and Burst (a per-customer or per-tenant limit, say); when nil,
	// all the messages of the handler share one limiter. Key must be safe
	// for concurrent use and cheap: it runs on every message. Any string is
	// a key, "" included.
	Key func(*broker.Message) string
	// MaxKeys bounds the per-key limiters kept (default 10000; negative is
	// invalid), so that memory stays bounded however many keys come: past
	// it, the least recently used is forgotten. A key seen again after its
	// limiter was forgotten starts with a full bucket, so make MaxKeys
	// larger than the number of keys active within a few 1/Rate periods.
	MaxKeys int
	// OnWait, when set, is called once for each message that had to wait
	// (a message that found a token at once does not call it), when the
	// wait ends, with the time waited: until a token came, or until the
	// wait was cut short (see RateLimit). It runs on the handler's
	// goroutine, before the handler: keep it cheap. promqueuekit's
	// Recorder.OnWait records it as a histogram.
	OnWait func(ctx context.Context, m *broker.Message, waited time.Duration)
}

// defaultMaxKeys is RateLimitConfig.MaxKeys's default.
const defaultMaxKeys = 10000

// errRateLimitWait is what a cut-short wait returns. One value for every
// message: the slow path allocates no error.
var errRateLimitWait = fmt.Errorf("queuekit: rate limit wait: %w", consumer.ErrNotHandled)

// RateLimit returns middleware that lets messages reach the handler at most
// at cfg.Rate per second (in bursts of at most cfg.Burst), overall or per
// key (cfg.Key), with the token bucket of golang.org/x/time/rate. A message
// that finds no token waits for one, holding its consumer slot.
//
// Each handler the middleware wraps has limiters of its own: given to
// several consumers (consumer.WithMiddleware), it limits each of them
// separately, all the workers of a consumer sharing its limiters. To share
// one limit among consumers, wrap one handler and give it to each.
//
// The wait respects the handler's context and the consumer's intake: when
// ctx is done (Close, the drain deadline, a Timeout outside), when intake
// stops (Pause, a kill-switch trip, Shutdown: see consumer.IntakeStopped),
// or when ctx's deadline comes before the token would, the wait ends at
// once, its reservation is cancelled (the token goes back to the bucket) and
// the handler is not called: the middleware returns an error wrapping
// consumer.ErrNotHandled, so that the runtime gives the message back to the
// broker with its Attempt not spent. (With intake open — a Timeout outside
// RateLimit expiring, say — that error is an ordinary failure, which spends
// an attempt.) A message whose ctx is already done when it arrives takes no
// token and gets the same error.
//
// Waiting messages are served in the order they began to wait, one
// reservation at a time per limiter, so that a wait cut short gives its
// whole token back: x/time/rate restores only the last of several
// outstanding reservations.
//
// RateLimit returns an error wrapping broker.ErrInvalidConfig for an invalid
// cfg (see RateLimitConfig).
func RateLimit(cfg RateLimitConfig) (consumer.Middleware, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	return func(next consumer.Handler) consumer.Handler {
		if cfg.Rate == rate.Inf {
			return next
		}
		return newRateLimiter(cfg).wrap(next)
	}, nil
}

// normalize applies the defaults and checks cfg.
func (cfg RateLimitConfig) normalize() (RateLimitConfig, error) {
	switch r := float64(cfg.Rate); {
	case math.IsNaN(r):
		return cfg, fmt.Errorf("%w: rate limit: rate is NaN", broker.ErrInvalidConfig)
	case r <= 0:
		return cfg, fmt.Errorf("%w: rate limit: rate %v, want > 0 (rate.Inf for no limit)", broker.ErrInvalidConfig, r)
	case r >= float64(rate.Inf):
		// +Inf as well as rate.Inf: x/time/rate treats only rate.Inf as
		// no limit, and would compute NaN token counts with +Inf.
		cfg.Rate = rate.Inf
	}
	switch {
	case cfg.Burst < 0:
		return cfg, fmt.Errorf("%w: rate limit: burst %d, want >= 0 (0 means 1)", broker.ErrInvalidConfig, cfg.Burst)
	case cfg.Burst == 0:
		cfg.Burst = 1
	}
	switch {
	case cfg.MaxKeys < 0:
		return cfg, fmt.Errorf("%w: rate limit: max keys %d, want >= 0 (0 means %d)", broker.ErrInvalidConfig, cfg.MaxKeys, defaultMaxKeys)
	case cfg.MaxKeys == 0:
		cfg.MaxKeys = defaultMaxKeys
	}
	return cfg, nil
}

// rateLimiter is the state of one wrapped handler.
type rateLimiter struct {
	cfg  RateLimitConfig
	one  *bucket    // the handler's limiter, when cfg.Key is nil
	keys *bucketSet // the per-key limiters, when cfg.Key is set
}

func newRateLimiter(cfg RateLimitConfig) *rateLimiter {
	l := &rateLimiter{cfg: cfg}
	if cfg.Key == nil {
		l.one = newBucket(cfg.Rate, cfg.Burst)
	} else {
		l.keys = &bucketSet{max: cfg.MaxKeys, rate: cfg.Rate, burst: cfg.Burst, m: make(map[string]*keyed)}
		l.keys.lru.prev, l.keys.lru.next = &l.keys.lru, &l.keys.lru
	}
	return l
}

func (l *rateLimiter) wrap(next consumer.Handler) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if err := l.wait(ctx, m); err != nil {
			return err
		}
		return next.Handle(ctx, m)
	})
}

// wait takes a token for m, waiting for one if need be. The common case, a
// token at hand, allocates nothing: Allow rather than Reserve, whose
// *Reservation escapes to the heap.
func (l *rateLimiter) wait(ctx context.Context, m *broker.Message) error {
	if ctx.Err() != nil {
		return errRateLimitWait
	}
	b := l.one
	if b == nil {
		b = l.keys.get(l.cfg.Key(m))
	}
	if b.lim.Allow() {
		return nil
	}
	start := time.Now()
	err := b.wait(ctx, consumer.IntakeStopped(ctx))
	if l.cfg.OnWait != nil {
		if waited := time.Since(start); waited > 0 {
			l.cfg.OnWait(ctx, m, waited)
		}
	}
	return err
}

// A bucket is one limiter and the gate of its waiters.
type bucket struct {
	lim *rate.Limiter
	// gate admits one waiter at a time to hold a reservation; the others
	// queue on the send, in order of arrival (a channel's blocked senders
	// are served first in, first out). The one reservation outstanding is
	// then always the limiter's last, the only kind whose Cancel gives its
	// token back in full: with several, cancelling any but the last
	// restores nothing, and a Pause cutting short N waits would leave the
	// limiter N-1 tokens in debt after Resume.
	gate chan struct{}
}

func newBucket(r rate.Limit, burst int) *bucket {
	return &bucket{lim: rate.NewLimiter(r, burst), gate: make(chan struct{}, 1)}
}

// wait waits for a token until ctx is done or stop is closed.
func (b *bucket) wait(ctx context.Context, stop <-chan struct{}) error {
	select {
	case b.gate <- struct{}{}:
	case <-ctx.Done():
		return errRateLimitWait
	case <-stop:
		return errRateLimitWait
	}
	defer func() { <-b.gate }()
	// Burst >= 1 and the limit is finite, so the reservation of one token
	// is always OK (its delay may be rate.InfDuration for a tiny Rate: then
	// only ctx or stop end the wait).
	r := b.lim.Reserve()
	delay := r.Delay()
	if delay <= 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
		// The token would come too late for this ctx: do not hold the slot
		// until ctx ends, give the token back now.
		r.Cancel()
		return errRateLimitWait
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
	case <-stop:
	}
	r.Cancel()
	return errRateLimitWait
}

// A bucketSet holds the per-key buckets of a handler, at most max of them,
// in least-recently-used order. Safe for concurrent use.
type bucketSet struct {
	rate  rate.Limit
	burst int
	max   int

	mu  sync.Mutex
	m   map[string]*keyed
	lru keyed // sentinel of a circular list: lru.next is the most recently used
}

// keyed is a bucket in a bucketSet.
type keyed struct {
	bucket
	key        string
	prev, next *keyed
}

func (s *bucketSet) get(key string) *bucket {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.m[key]; k != nil {
		if s.lru.next != k { // move to front
			k.prev.next, k.next.prev = k.next, k.prev
			k.prev, k.next = &s.lru, s.lru.next
			s.lru.next.prev = k
			s.lru.next = k
		}
		return &k.bucket
	}
	if len(s.m) >= s.max {
		old := s.lru.prev
		old.prev.next, s.lru.prev = &s.lru, old.prev
		old.prev, old.next = nil, nil
		delete(s.m, old.key)
	}
	k := &keyed{bucket: bucket{lim: rate.NewLimiter(s.rate, s.burst), gate: make(chan struct{}, 1)}, key: key}
	k.prev, k.next = &s.lru, s.lru.next
	s.lru.next.prev = k
	s.lru.next = k
	s.m[key] = k
	return &k.bucket
}

// len is the number of buckets kept.
func (s *bucketSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
