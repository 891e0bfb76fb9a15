package health

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// WatchdogConfig configures a Watchdog. Zero fields mean the documented
// defaults; Threshold is required.
type WatchdogConfig struct {
	// Threshold is how long a handler call may run before it counts as
	// stuck. Required.
	Threshold time.Duration
	// BrokerTimeout, if set, is the broker's own limit on an unacknowledged
	// delivery, such as RabbitMQ's consumer_timeout (30 minutes by default):
	// when a call reaches 80% of it, the watchdog reports it again with
	// Stuck.NearBrokerTimeout set, because past it the broker closes the
	// channel and every delivery on it is redelivered.
	BrokerTimeout time.Duration
	// Interval is how often Run looks for newly stuck calls. Default
	// Threshold/4, at least 10ms.
	Interval time.Duration
	// Logger receives a warning per newly stuck call. Nil means slog.Default().
	Logger *slog.Logger
	// OnStuck, if set, is called from Run's goroutine once per call that
	// became stuck, and once more when it nears BrokerTimeout. It must not
	// block for long. Feed a metric from it, for example with promqueuekit's
	// Recorder.HandlerStuck.
	OnStuck func(Stuck)
}

// Stuck describes a handler call that has run longer than the threshold.
type Stuck struct {
	// Consumer is the name of the consumer whose handler runs the call
	// (consumer.NameFromContext: the name it was added to its Supervisor
	// under, or its WithName).
	Consumer string `json:"consumer"`
	// Topic, MessageID and Attempt are those of the message being handled
	// (broker.Message.Topic, ID, Attempt).
	Topic     string `json:"topic"`
	MessageID string `json:"message_id"`
	Attempt   int    `json:"attempt"`
	// Started is when the call started.
	Started time.Time `json:"started"`
	// Running is how long it had run when the report was made.
	Running time.Duration `json:"running_ns"`
	// NearBrokerTimeout is true once the call has run for 80% of
	// WatchdogConfig.BrokerTimeout.
	NearBrokerTimeout bool `json:"near_broker_timeout,omitempty"`
}

// A Watchdog watches handler calls and reports the ones that run too long:
// to liveness (a Handler built WithWatchdog fails liveness while any call is
// stuck), and through Run as a log line and an OnStuck call per stuck call.
//
// Add Middleware to each consumer (consumer.WithMiddleware(w.Middleware())),
// and run the watchdog with Run, for example as a runner of the same
// Supervisor. Stuck and liveness
// work without Run; only the log lines and OnStuck need it.
//
// A Watchdog is safe for concurrent use. It starts no goroutine of its own:
// Run is the only loop, and it returns when its context is done.
type Watchdog struct {
	cfg WatchdogConfig

	mu    sync.Mutex
	calls map[*call]struct{} // running calls; added and removed by Middleware
}

// call is one running handler call. Middleware's goroutine writes the fields
// before adding the call to w.calls; afterwards only reported and near
// change, under w.mu, by Run.
type call struct {
	name, topic, id string
	attempt         int
	start           time.Time
	reported, near  bool
}

// NewWatchdog returns a Watchdog. It returns an error wrapping
// broker.ErrInvalidConfig when Threshold is not positive or another
// duration is negative.
func NewWatchdog(cfg WatchdogConfig) (*Watchdog, error) {
	switch {
	case cfg.Threshold <= 0:
		return nil, fmt.Errorf("%w: watchdog threshold %v, want > 0", broker.ErrInvalidConfig, cfg.Threshold)
	case cfg.BrokerTimeout < 0 || cfg.Interval < 0:
		return nil, fmt.Errorf("%w: negative watchdog duration", broker.ErrInvalidConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = max(cfg.Threshold/4, 10*time.Millisecond)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Watchdog{cfg: cfg, calls: make(map[*call]struct{})}, nil
}

// Middleware returns middleware that registers every handler call with the
// watchdog, for as long as it runs, under the name of the consumer that
// runs it (consumer.NameFromContext). It keeps only the message's topic, id
// and attempt, not the message. One Middleware serves every consumer.
func (w *Watchdog) Middleware() consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			name, _ := consumer.NameFromContext(ctx)
			c := &call{name: name, topic: m.Topic, id: m.ID, attempt: m.Attempt, start: time.Now()}
			w.mu.Lock()
			w.calls[c] = struct{}{}
			w.mu.Unlock()
			// Deferred so that a panic passing through does not leave the
			// call registered (and liveness failing) for ever.
			defer func() {
				w.mu.Lock()
				delete(w.calls, c)
				w.mu.Unlock()
			}()
			return next.Handle(ctx, m)
		})
	}
}

func (w *Watchdog) stuck(c *call, now time.Time) Stuck {
	return Stuck{Consumer: c.name, Topic: c.topic, MessageID: c.id, Attempt: c.attempt,
		Started: c.start, Running: now.Sub(c.start), NearBrokerTimeout: w.near(c, now)}
}

func (w *Watchdog) near(c *call, now time.Time) bool {
	return w.cfg.BrokerTimeout > 0 && now.Sub(c.start) >= w.cfg.BrokerTimeout*4/5
}

// Stuck returns the calls running for longer than the threshold now, oldest
// first.
func (w *Watchdog) Stuck() []Stuck {
	now := time.Now()
	var out []Stuck
	w.mu.Lock()
	for c := range w.calls {
		if now.Sub(c.start) >= w.cfg.Threshold {
			out = append(out, w.stuck(c, now))
		}
	}
	w.mu.Unlock()
	slices.SortFunc(out, func(a, b Stuck) int { return a.Started.Compare(b.Started) })
	return out
}

// Run checks the running calls every Interval until ctx is done, logs a
// warning and calls OnStuck for each call that became stuck (and again when
// it nears BrokerTimeout), and returns nil. It implements consumer.Runner.
func (w *Watchdog) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.check()
		}
	}
}

func (w *Watchdog) check() {
	now := time.Now()
	var fresh []Stuck
	w.mu.Lock()
	for c := range w.calls {
		if now.Sub(c.start) < w.cfg.Threshold {
			continue
		}
		near := w.near(c, now)
		if c.reported && (!near || c.near) {
			continue
		}
		c.reported, c.near = true, near
		fresh = append(fresh, w.stuck(c, now))
	}
	w.mu.Unlock()
	// Hooks and logs run without w.mu, so that a slow hook cannot block
	// handlers starting or finishing.
	for _, s := range fresh {
		msg := "queuekit: handler stuck"
		if s.NearBrokerTimeout {
			msg = "queuekit: handler stuck and nearing the broker's delivery timeout"
		}
		w.cfg.Logger.Warn(msg, "consumer", s.Consumer, "topic", s.Topic, "message_id", s.MessageID,
			"attempt", s.Attempt, "running", s.Running, "threshold", w.cfg.Threshold)
		if w.cfg.OnStuck != nil {
			w.cfg.OnStuck(s)
		}
	}
}
