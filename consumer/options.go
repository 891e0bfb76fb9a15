package consumer

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// An Option configures a Consumer.
type Option func(*options)

type options struct {
	name          string
	concurrency   int
	maxDeliveries int
	drainTimeout  time.Duration
	settleTimeout time.Duration
	logger        *slog.Logger
	hook          func(Event)
	observer      func(*broker.Message, Settlement, error)
}

func defaultOptions() options {
	return options{
		name:          "consumer",
		concurrency:   1,
		maxDeliveries: 5,
		drainTimeout:  30 * time.Second,
		settleTimeout: 5 * time.Second,
	}
}

func (o *options) validate() error {
	switch {
	case o.name == "":
		return fmt.Errorf("%w: empty consumer name", broker.ErrInvalidConfig)
	case o.concurrency < 1:
		return fmt.Errorf("%w: concurrency %d, want at least 1", broker.ErrInvalidConfig, o.concurrency)
	case o.maxDeliveries < 1:
		return fmt.Errorf("%w: max deliveries %d, want at least 1", broker.ErrInvalidConfig, o.maxDeliveries)
	case o.drainTimeout <= 0:
		return fmt.Errorf("%w: drain timeout %v, want > 0", broker.ErrInvalidConfig, o.drainTimeout)
	case o.settleTimeout < minSettleTimeout:
		return fmt.Errorf("%w: settle timeout %v, want at least %v", broker.ErrInvalidConfig, o.settleTimeout, minSettleTimeout)
	}
	return nil
}

// WithName names the consumer in logs and events. Default "consumer".
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithConcurrency sets how many handlers run at once (default 1). It bounds
// the goroutines and in-flight messages of the consumer; set the broker
// prefetch to at least this.
func WithConcurrency(n int) Option { return func(o *options) { o.concurrency = n } }

// WithMaxDeliveries sets the delivery budget (default 5): a message whose
// handler failed on its n-th delivery is dead-lettered instead of requeued.
func WithMaxDeliveries(n int) Option { return func(o *options) { o.maxDeliveries = n } }

// WithDrainTimeout bounds how long in-flight handlers may run after intake
// stopped (default 30s). At the deadline their contexts are cancelled with
// cause ErrDrainTimeout and their messages are given back for redelivery.
func WithDrainTimeout(d time.Duration) Option { return func(o *options) { o.drainTimeout = d } }

// minSettleTimeout keeps the settle clock's rotation (a quarter of the
// timeout) meaningful: below it, contexts would expire mid-settlement.
const minSettleTimeout = 10 * time.Millisecond

// WithSettleTimeout bounds each ack, requeue or dead-letter call (default 5s,
// at least 10ms). A settlement that fails for a reason other than a stale
// delivery is tried again, with backoff (50ms growing to 5s) and a fresh
// context each time, until it succeeds or the drain deadline passes; each
// failure is reported as an EventSettleFailed.
// Settlement runs on a context of its own, never on the run context, so that
// shutting down does not cancel the acks of finished work.
func WithSettleTimeout(d time.Duration) Option { return func(o *options) { o.settleTimeout = d } }

// WithLogger sets the logger for lifecycle and settlement failures
// (default slog.Default()). Per-message logging is middleware.Log's job.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithEventHook sets a function called with every event of this consumer and
// its source. It is called synchronously from the consumer's goroutines and
// must not block; a Supervisor's OnEvent hook is queued instead. In
// particular it must not call this consumer's Shutdown or Close, which wait
// for the goroutine the hook runs on: to stop the consumer from a hook, call
// them in a goroutine of their own (go c.Close()). Pause and Resume may be
// called. A hook that panics loses that call, nothing else.
func WithEventHook(f func(Event)) Option { return func(o *options) { o.hook = f } }

// WithObserver sets f, called after every settlement with the message, what
// the runtime did, and the error of the settlement call itself (nil when the
// broker took it; an error wrapping ErrStaleDelivery when the delivery had
// outlived its connection). It is called from the worker goroutines, at the
// same time from several; it must be fast and must not keep m. Metrics
// recorders use it to count outcomes.
func WithObserver(f func(m *broker.Message, s Settlement, err error)) Option {
	return func(o *options) { o.observer = f }
}
