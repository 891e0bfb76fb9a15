package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

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
	hooks         []func(Event)
	observers     []func(context.Context, *broker.Message, Settlement, error)
	middleware    []Middleware

	// newLimiter, set by WithAdaptiveConcurrency, makes the consumer's
	// concurrency limiter for WithConcurrency's n (adaptive.go); its error
	// fails New.
	newLimiter func(n int) (concurrencyLimiter, error)
	killSwitch *KillSwitch // WithKillSwitch's, or nil

	// Built by build from the lists above.
	hook     func(Event)
	observer func(context.Context, *broker.Message, Settlement, error)
}

// build composes the hooks and observers the options added, in order, into
// one of each (nil when there are none). Each is called under a recover of
// its own, so that a panicking one does not keep the others from the call.
func (o *options) build() {
	o.hook, o.observer = nil, nil
	switch hooks := o.hooks; len(hooks) {
	case 0:
	case 1:
		o.hook = hooks[0]
	default:
		o.hook = func(e Event) {
			var first any
			for _, f := range hooks {
				if p := callHook(f, e); p != nil && first == nil {
					first = p
				}
			}
			if first != nil {
				panic(first) // reported by emit, once
			}
		}
	}
	switch obs := o.observers; len(obs) {
	case 0:
	case 1:
		o.observer = obs[0]
	default:
		o.observer = func(ctx context.Context, m *broker.Message, s Settlement, err error) {
			var first any
			for _, f := range obs {
				if p := callObserver(f, ctx, m, s, err); p != nil && first == nil {
					first = p
				}
			}
			if first != nil {
				panic(first) // reported by observe, once
			}
		}
	}
}

func callObserver(f func(context.Context, *broker.Message, Settlement, error), ctx context.Context, m *broker.Message, s Settlement, err error) (panicked any) {
	defer func() { panicked = recover() }()
	f(ctx, m, s, err)
	return nil
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
	case checkName(o.name) != nil:
		return checkName(o.name)
	case o.concurrency < 1:
		return fmt.Errorf("%w: concurrency %d, want at least 1", broker.ErrInvalidConfig, o.concurrency)
	case o.maxDeliveries < 1:
		return fmt.Errorf("%w: max deliveries %d, want at least 1", broker.ErrInvalidConfig, o.maxDeliveries)
	case o.drainTimeout <= 0:
		return fmt.Errorf("%w: drain timeout %v, want > 0", broker.ErrInvalidConfig, o.drainTimeout)
	case o.settleTimeout < minSettleTimeout:
		return fmt.Errorf("%w: settle timeout %v, want at least %v", broker.ErrInvalidConfig, o.settleTimeout, minSettleTimeout)
	case o.killSwitch != nil:
		ks := o.killSwitch.withDefaults()
		if err := ks.validate(o.concurrency); err != nil {
			return err
		}
		o.killSwitch = &ks
	}
	return nil
}

// WithName names the consumer in logs, events, metrics and health. Default
// "consumer". Supervisor.Add replaces it with the name it adds the consumer
// under, so that a consumer has one name.
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

// WithEventHook adds a function called with every event of this consumer and
// its source. It is called synchronously from the consumer's goroutines and
// must not block; a Supervisor's OnEvent hook is queued instead. In
// particular it must not call this consumer's Shutdown or Close, which wait
// for the goroutine the hook runs on: to stop the consumer from a hook, call
// them in a goroutine of their own (go c.Close()). Pause and Resume may be
// called. A hook that panics loses that call, nothing else. Hooks added by
// several options are all called, in the order of the options; a nil f adds
// nothing.
func WithEventHook(f func(Event)) Option {
	return func(o *options) {
		if f != nil {
			o.hooks = append(o.hooks, f)
		}
	}
}

// WithObserver adds f, called after every settlement with the message, what
// the runtime did, and the error of the settlement call itself (nil when the
// broker took it; an error wrapping ErrStaleDelivery when the delivery had
// outlived its connection). ctx carries the values of Run's context and the
// consumer's name (NameFromContext), never a cancellation: it tells an
// observer shared by several consumers which one settled. f is called from
// the worker goroutines, at the
// same time from several; it must be fast and must not keep m. Metrics
// recorders use it to count outcomes. Observers added by several options are
// all called, in the order of the options; a nil f adds nothing.
func WithObserver(f func(ctx context.Context, m *broker.Message, s Settlement, err error)) Option {
	return func(o *options) {
		if f != nil {
			o.observers = append(o.observers, f)
		}
	}
}

// WithMiddleware wraps the consumer's handler in mw, the first listed
// outermost, as Chain does: New(src, h, WithMiddleware(a, b)) handles with
// a(b(h)). Middleware added by several options wraps in the order of the
// options, the first option outermost; nil middleware is skipped. It is how an integration such as a
// metrics recorder adds what it needs in one call (rec.Options()); a
// handler's own chain is clearer built with Chain.
func WithMiddleware(mw ...Middleware) Option {
	return func(o *options) { o.middleware = append(o.middleware, mw...) }
}

// checkName reports whether name can name a consumer: it becomes a log
// attribute, a metrics label and a health report key, so it must be
// non-empty, valid UTF-8 and free of control characters and of invisible
// format characters (a right-to-left override, a zero-width space), which
// would make two names look alike.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty consumer name", broker.ErrInvalidConfig)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: consumer name %q is not valid UTF-8", broker.ErrInvalidConfig, name)
	case strings.IndexFunc(name, isControlOrFormat) >= 0:
		return fmt.Errorf("%w: consumer name %q holds a control or format character", broker.ErrInvalidConfig, name)
	}
	return nil
}

func isControlOrFormat(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }
