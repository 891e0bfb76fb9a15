package consumer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// BacklogInterval is the shortest time between two broker calls for one
// consumer's backlog (Consumer.Backlog): calls closer together than that
// share the previous answer, so that health reports and metrics scrapes,
// however frequent and however many, do not load the broker. A failed call
// is shared for a second only.
const BacklogInterval = 10 * time.Second

const (
	// backlogErrorInterval is how long a failed call's error is shared.
	backlogErrorInterval = time.Second
	// backlogTimeout bounds one broker call.
	backlogTimeout = 2 * time.Second
)

// ErrNoBacklog is returned (wrapped) by Consumer.Backlog when the source does
// not report its backlog (it is not a broker.BacklogReporter), and by
// Supervisor.Backlog for a runner that has no Backlog method.
var ErrNoBacklog = errors.New("queuekit: no backlog to report")

// Backlog reports what waits for the consumer at the broker: the queue's
// ready messages, or the consumer group's lag per partition and in total
// (see broker.Backlog). It returns an error wrapping ErrNoBacklog when the
// source is not a broker.BacklogReporter.
//
// The broker is asked at most once per BacklogInterval (once a second after
// a failed call); callers in between share the last answer, and callers
// that ask while a call is in progress wait for it instead of making their
// own. Each call is bounded by 2 s and carries ctx's values but not its
// cancellation, since its answer serves other callers too; Backlog itself
// returns when ctx is done, with ctx's error. Health reports
// (package health) and metrics (promqueuekit) read this method, so one cache
// serves both.
//
// A call whose ctx is already done returns ctx's error without asking the
// broker. Negative numbers from the source are clamped rather than reported
// as an error: a lag below zero (Kafka: a commit read after the high
// watermark it overtook) means nothing waits, and an error would hide the
// partitions that were read right. A negative lag becomes 0, a negative
// consumer count -1 (not known), and when there are partitions, Messages is
// the sum of their clamped lags.
//
// Backlog may be called at any time, from any goroutine, also before Run and
// while the consumer is paused. The caller gets a Partitions map of its own.
func (c *Consumer) Backlog(ctx context.Context) (broker.Backlog, error) {
	br, ok := c.src.(broker.BacklogReporter)
	if !ok {
		return broker.Backlog{}, fmt.Errorf("%w: source %T of consumer %s is not a broker.BacklogReporter", ErrNoBacklog, c.src, c.Name())
	}
	return c.backlog.get(ctx, br)
}

// backlogCache holds the last backlog the source reported and the call in
// progress, if any. Its zero value is ready to use.
type backlogCache struct {
	mu   sync.Mutex
	last *backlogCall // the last finished call, or nil
	cur  *backlogCall // the call in progress, or nil
}

// backlogCall is one broker call. Its goroutine writes val, err and at, then
// closes done; readers read them only after done is closed.
type backlogCall struct {
	done     chan struct{}
	deadline time.Time // when waiters stop waiting for it
	val      broker.Backlog
	err      error
	at       time.Time
}

func (b *backlogCache) get(ctx context.Context, br broker.BacklogReporter) (broker.Backlog, error) {
	if err := ctx.Err(); err != nil {
		return broker.Backlog{}, err
	}
	b.mu.Lock()
	if l := b.last; l != nil {
		ttl := BacklogInterval
		if l.err != nil {
			ttl = backlogErrorInterval
		}
		if time.Since(l.at) < ttl {
			b.mu.Unlock()
			return l.result()
		}
	}
	call := b.cur
	if call == nil {
		call = &backlogCall{done: make(chan struct{}), deadline: time.Now().Add(backlogTimeout)}
		b.cur = call
		// The call runs on a goroutine of its own, so that no caller — the
		// one that started it included — waits longer than its own ctx or
		// the call's deadline, even for a source that does not honour its
		// context. Such a source keeps this one goroutine; no second call
		// starts until it returns.
		go b.fetch(context.WithoutCancel(ctx), br, call)
	}
	b.mu.Unlock()

	t := time.NewTimer(time.Until(call.deadline))
	defer t.Stop()
	select {
	case <-call.done:
		return call.result()
	case <-ctx.Done():
		return broker.Backlog{}, ctx.Err()
	case <-t.C:
		return broker.Backlog{}, fmt.Errorf("queuekit: backlog: the source did not answer within %v: %w", backlogTimeout, context.DeadlineExceeded)
	}
}

func (b *backlogCache) fetch(ctx context.Context, br broker.BacklogReporter, call *backlogCall) {
	ctx, cancel := context.WithDeadline(ctx, call.deadline)
	defer cancel()
	func() {
		defer func() {
			if p := recover(); p != nil {
				call.val, call.err = broker.Backlog{}, fmt.Errorf("%T.Backlog panicked: %v", br, p)
			}
		}()
		call.val, call.err = br.Backlog(ctx)
	}()
	if call.err != nil {
		call.val = broker.Backlog{}
		call.err = fmt.Errorf("queuekit: backlog: %w", safeError(call.err))
	} else {
		call.val = clampBacklog(call.val)
	}
	call.at = time.Now()
	b.mu.Lock()
	b.last, b.cur = call, nil
	b.mu.Unlock()
	close(call.done)
}

// result returns a finished call's answer, with a Partitions map of the
// caller's own.
func (c *backlogCall) result() (broker.Backlog, error) {
	v := c.val
	v.Partitions = maps.Clone(v.Partitions)
	return v, c.err
}

// clampBacklog clamps what a source answered (see Consumer.Backlog): a
// negative lag to 0, a negative consumer count to -1, and with partitions,
// Messages to the sum of their clamped lags. The Partitions map is a copy.
func clampBacklog(v broker.Backlog) broker.Backlog {
	v.Messages = max(v.Messages, 0)
	v.Consumers = max(v.Consumers, -1)
	if v.Partitions != nil {
		parts := make(map[int]int64, len(v.Partitions))
		var sum int64
		for p, n := range v.Partitions {
			n = max(n, 0)
			parts[p] = n
			sum += n
		}
		v.Partitions = parts
		if len(parts) > 0 {
			v.Messages = sum
		}
	}
	return v
}
