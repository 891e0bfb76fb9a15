package middleware

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
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
	// a key, "" included; a key longer than 64 bytes is kept as a 16-byte
	// digest (keys whose digests collide would share a limiter). A Key that
	// panics fails its message permanently, without calling the handler,
	// with an error naming RateLimitConfig.Key and wrapping a
	// *consumer.PanicError: the message is dead-lettered on its first
	// delivery, and a kill switch does not count it (KillSwitch.Counts
	// ignores permanent errors). A Key that panics on every message thus
	// dead-letters them all: test it on the messages it will see.
	Key func(*broker.Message) string
	// MaxKeys bounds the per-key limiters kept (default 10000; negative is
	// invalid), so that memory stays bounded however many keys come, at a
	// few hundred bytes a limiter: past it, the least recently used limiter
	// that no message is waiting on is forgotten (the limiters with waiters,
	// at most one per worker, are kept over MaxKeys).
	//
	// Below MaxKeys, a new key starts with a full bucket (Burst messages at
	// once). Once MaxKeys limiters are kept, a key without one — new, or
	// forgotten — starts with an empty bucket: its first message waits
	// 1/Rate. This fails closed: a forgotten limiter may have been empty,
	// and a full bucket for every key not kept would let a producer cycling
	// more keys than MaxKeys through at any rate; an empty one never lets a
	// key through faster than Rate. The cost is the first message of a key
	// not kept waiting 1/Rate, so make MaxKeys larger than the number of
	// keys active within a few 1/Rate periods.
	MaxKeys int
	// OnWait, when set, is called once for each message that had to wait
	// (a message that found a token at once does not call it), when the
	// wait ends, with the time waited: until a token came, or until the
	// wait was cut short (see RateLimit). It runs on the handler's
	// goroutine, before the handler: keep it cheap. A panic in OnWait is
	// recovered and dropped: the message goes on as if OnWait had returned.
	// promqueuekit's Recorder.OnWait records it as a histogram.
	OnWait func(ctx context.Context, m *broker.Message, waited time.Duration)
}

// defaultMaxKeys is RateLimitConfig.MaxKeys's default.
const defaultMaxKeys = 10000

// maxKeyLen is the longest key kept as it is; a longer one is kept as its
// SHA-256 digest.
const maxKeyLen = 64

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
		l.keys = newBucketSet(cfg.Rate, cfg.Burst, cfg.MaxKeys)
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
	if l.one != nil {
		if l.one.lim.Allow() {
			return nil
		}
		return l.waitOn(ctx, m, l.one)
	}
	key, err := l.key(m)
	if err != nil {
		return err
	}
	k, ok := l.keys.acquire(key)
	if ok {
		return nil
	}
	defer l.keys.release(k)
	return l.waitOn(ctx, m, &k.bucket)
}

// key returns cfg.Key(m), or, when Key panics, a permanent error naming
// RateLimitConfig.Key and the panic: Key is a function of the message, so
// the same message would panic again, and a *consumer.PanicError from the
// runtime would be taken for the handler's (counted by a kill switch).
func (l *rateLimiter) key(m *broker.Message) (key string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = retry.Permanent(fmt.Errorf("queuekit: rate limit: RateLimitConfig.Key: %w",
				&consumer.PanicError{Value: p, Stack: debug.Stack()}))
		}
	}()
	return l.cfg.Key(m), nil
}

// waitOn waits for a token of b and reports the wait to OnWait.
func (l *rateLimiter) waitOn(ctx context.Context, m *broker.Message, b *bucket) error {
	start := time.Now()
	err := b.wait(ctx, consumer.IntakeStopped(ctx))
	if l.cfg.OnWait != nil {
		if waited := time.Since(start); waited > 0 {
			l.onWait(ctx, m, waited)
		}
	}
	return err
}

// onWait calls cfg.OnWait, dropping a panic: a broken metric hook must not
// lose the message, which goes on as if OnWait had returned.
func (l *rateLimiter) onWait(ctx context.Context, m *broker.Message, waited time.Duration) {
	defer func() { _ = recover() }()
	l.cfg.OnWait(ctx, m, waited)
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

// A bucketSet holds the per-key buckets of a handler, at most max of them
// plus those in use, in least-recently-used order. Safe for concurrent use.
//
// Its memory is bounded in bytes: a key longer than maxKeyLen is kept as a
// 16-byte digest (two maphash sums with seeds of the set's own: keys whose
// digests collide share a limiter, which never lets more through), and a
// shorter key is copied, so that it does not keep alive a large string it
// was cut from.
type bucketSet struct {
	rate  rate.Limit
	burst int
	max   int
	seeds [2]maphash.Seed

	mu  sync.Mutex
	m   map[string]*keyed
	lru keyed // sentinel of a circular list: lru.next is the most recently used
}

func newBucketSet(r rate.Limit, burst, max int) *bucketSet {
	s := &bucketSet{rate: r, burst: burst, max: max, seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		m: make(map[string]*keyed)}
	s.lru.prev, s.lru.next = &s.lru, &s.lru
	return s
}

// keyed is a bucket in a bucketSet.
type keyed struct {
	bucket
	key        string
	pins       int // messages waiting on the bucket: it is not forgotten while > 0; guarded by the set's mu
	prev, next *keyed
}

// acquire takes a token of key's bucket if one is at hand (ok), or else
// returns the bucket pinned: it stays in the set, however many keys come,
// until release, so that every waiter of a key waits on the same bucket.
func (s *bucketSet) acquire(key string) (k *keyed, ok bool) {
	var d [16]byte
	long := len(key) > maxKeyLen
	if long {
		binary.LittleEndian.PutUint64(d[:8], maphash.String(s.seeds[0], key))
		binary.LittleEndian.PutUint64(d[8:], maphash.String(s.seeds[1], key))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if long {
		k = s.m[string(d[:])]
	} else {
		k = s.m[key]
	}
	switch {
	case k == nil && long:
		k = s.add(string(d[:]))
	case k == nil:
		k = s.add(strings.Clone(key))
	case s.lru.next != k: // move to front
		k.prev.next, k.next.prev = k.next, k.prev
		k.prev, k.next = &s.lru, s.lru.next
		s.lru.next.prev = k
		s.lru.next = k
	}
	if k.lim.Allow() {
		return k, true
	}
	k.pins++
	return k, false
}

// release unpins a bucket acquire returned pinned.
func (s *bucketSet) release(k *keyed) {
	s.mu.Lock()
	k.pins--
	s.mu.Unlock()
}

// add adds a bucket for key, at the front, the set locked. Below max, it
// starts full, like any new limiter. At max, it first forgets the least
// recently used buckets not in use, and starts empty (its first token comes
// after 1/rate): the key may be one just forgotten, whose bucket was
// perhaps empty, and a full bucket would let a producer cycling more keys
// than max through at burst per message instead of at rate per key.
func (s *bucketSet) add(key string) *keyed {
	full := len(s.m) >= s.max
	for old := s.lru.prev; old != &s.lru && len(s.m) >= s.max; {
		prev := old.prev
		if old.pins == 0 {
			old.prev.next, old.next.prev = old.next, old.prev
			old.prev, old.next = nil, nil
			delete(s.m, old.key)
		}
		old = prev
	}
	k := &keyed{bucket: *newBucket(s.rate, s.burst), key: key}
	if full {
		k.lim.AllowN(time.Now(), s.burst)
	}
	k.prev, k.next = &s.lru, s.lru.next
	s.lru.next.prev = k
	s.lru.next = k
	s.m[key] = k
	return k
}

// len is the number of buckets kept.
func (s *bucketSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
