package promqueuekit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
	"github.com/queuekit/queuekit/middleware"
)

// Label names. They are few and their values are bounded on purpose: no
// message ids, keys or error texts ever become label values. A value that is
// not valid UTF-8 (a topic, a name given to WithConsumer or For) is recorded
// with each invalid byte replaced by U+FFFD: metrics never fail a message or
// a scrape.
const (
	// LabelConsumer is the consumer's name: the name it was added to its
	// Supervisor under (or its WithName), or the name fixed with
	// WithConsumer or For. Recorder methods called directly, outside
	// Options, use the message's Topic when no name is fixed.
	LabelConsumer = "consumer"
	// LabelOutcome is what happened to a delivery (see Recorder.Observe).
	LabelOutcome = "outcome"
	// LabelResult is the handler's result class, middleware.Outcome(err).
	LabelResult = "result"
	// LabelEvent is a consumer.EventKind name.
	LabelEvent = "event"
)

// Outcome label values of queuekit_messages_handled_total that are not
// consumer.Settlement names.
const (
	// OutcomeStale counts settlements refused because the delivery outlived
	// its connection (broker.ErrStaleDelivery); the broker redelivers them.
	OutcomeStale = "stale"
	// OutcomeSettleFailed counts settlements that failed for another reason.
	OutcomeSettleFailed = "settle-failed"
)

// An Option configures a Recorder.
type Option func(*options)

type options struct {
	namespace string
	consumer  string
	buckets   []float64
}

// WithNamespace sets the metric name prefix (default "queuekit").
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithConsumer fixes the value of the consumer label for every observation
// of the Recorder, instead of the consumer's own name. It is rarely needed:
// Options labels each consumer with its name.
func WithConsumer(name string) Option { return func(o *options) { o.consumer = name } }

// WithBuckets sets the buckets of the handler duration histogram, in seconds
// (default prometheus.DefBuckets). They must be strictly increasing.
func WithBuckets(b []float64) Option { return func(o *options) { o.buckets = b } }

// A Recorder exports the measurements of consumers as Prometheus metrics.
// Wire it into each consumer with Options, in one line:
//
//	c, err := consumer.New(src, h, rec.Options()...)
//
// One Recorder serves every consumer of a program; each consumer's series
// carry its name. A Recorder is safe for concurrent use. Its zero value is
// not usable: make one with New.
type Recorder struct {
	m        *metrics
	consumer string // fixed consumer label, or "" for the Topic / Runner
}

// metrics is shared by a Recorder and its views (For).
type metrics struct {
	handled    *prom.CounterVec   // consumer, outcome
	duration   *prom.HistogramVec // consumer, result
	inFlight   *prom.GaugeVec     // consumer
	attempts   *prom.HistogramVec // consumer
	events     *prom.CounterVec   // consumer, event
	reconnects *prom.CounterVec   // consumer
	restarts   *prom.CounterVec   // consumer
	rebalances *prom.CounterVec   // consumer
	drainMsgs  *prom.CounterVec   // consumer, outcome
	drainTime  *prom.HistogramVec // consumer
	stuck      *prom.CounterVec   // consumer
	rateWait   *prom.HistogramVec // consumer
	killSwitch *prom.GaugeVec     // consumer

	// waits caches the rateWait children, apart from bound so that a
	// consumer without a rate limit has no (empty) series of it.
	waits sync.Map // string → prom.Observer

	// bound caches the children of one consumer label value, so that the
	// per-message path does no label hashing and no allocation. Label values
	// are consumer names or topics: few, so the cache stays small.
	bound sync.Map // string → *bound
}

// results are the values of middleware.Outcome, in a fixed order.
var results = [...]string{"ok", "error", "permanent", "timeout", "panic"}

type bound struct {
	inFlight prom.Gauge
	attempts prom.Observer
	duration [len(results)]prom.Observer
	handled  [consumer.SettledAbandon + 1]prom.Counter // by Settlement
}

func (m *metrics) get(name string) *bound {
	if b, ok := m.bound.Load(name); ok {
		return b.(*bound)
	}
	b := &bound{
		inFlight: gauge(m.inFlight, name),
		attempts: observer(m.attempts, name),
	}
	for i, res := range results {
		b.duration[i] = observer(m.duration, name, res)
	}
	for s := consumer.SettledAck; s <= consumer.SettledAbandon; s++ {
		b.handled[s] = counter(m.handled, name, s.String())
	}
	actual, _ := m.bound.LoadOrStore(name, b)
	return actual.(*bound)
}

// labelValues returns lvs with every value that is not valid UTF-8 made so
// (each invalid byte sequence replaced by U+FFFD), as Prometheus requires.
func labelValues(lvs []string) []string {
	for i, v := range lvs {
		if !utf8.ValidString(v) {
			lvs = append([]string(nil), lvs...)
			for j := i; j < len(lvs); j++ {
				lvs[j] = strings.ToValidUTF8(lvs[j], "\uFFFD")
			}
			break
		}
	}
	return lvs
}

// counter, gauge and observer return the child of a vector for label values
// (made valid UTF-8). They never panic: should the client library refuse
// the values anyway, the observation goes to a child registered nowhere and
// is lost — a metric, never a message.
func counter(v *prom.CounterVec, lvs ...string) prom.Counter {
	c, err := v.GetMetricWithLabelValues(labelValues(lvs)...)
	if err != nil {
		return prom.NewCounter(prom.CounterOpts{Name: "discarded"})
	}
	return c
}

func gauge(v *prom.GaugeVec, lvs ...string) prom.Gauge {
	g, err := v.GetMetricWithLabelValues(labelValues(lvs)...)
	if err != nil {
		return prom.NewGauge(prom.GaugeOpts{Name: "discarded"})
	}
	return g
}

func observer(v *prom.HistogramVec, lvs ...string) prom.Observer {
	o, err := v.GetMetricWithLabelValues(labelValues(lvs)...)
	if err != nil {
		return prom.NewHistogram(prom.HistogramOpts{Name: "discarded"})
	}
	return o
}

// New returns a Recorder whose metrics are registered on reg. It returns an
// error wrapping broker.ErrInvalidConfig when reg is nil or an option is
// invalid, and the Registerer's error (for example prometheus.AlreadyRegisteredError)
// when a metric of the same name is already registered on reg; nothing stays
// registered then.
func New(reg prom.Registerer, opts ...Option) (*Recorder, error) {
	o := options{namespace: "queuekit", buckets: prom.DefBuckets}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if reg == nil {
		return nil, fmt.Errorf("%w: nil prometheus Registerer", broker.ErrInvalidConfig)
	}
	if !validNamespace(o.namespace) {
		return nil, fmt.Errorf("%w: metric namespace %q", broker.ErrInvalidConfig, o.namespace)
	}
	if len(o.buckets) == 0 {
		return nil, fmt.Errorf("%w: no histogram buckets", broker.ErrInvalidConfig)
	}
	for i := 1; i < len(o.buckets); i++ {
		if !(o.buckets[i] > o.buckets[i-1]) {
			return nil, fmt.Errorf("%w: histogram buckets must be strictly increasing", broker.ErrInvalidConfig)
		}
	}
	ns := o.namespace
	m := &metrics{
		handled: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "messages_handled_total",
			Help: "Deliveries settled by the runtime, by outcome: ack, requeue, delayed-requeue, dead-letter, give-back, abandon; stale or settle-failed when the broker refused the settlement."},
			[]string{LabelConsumer, LabelOutcome}),
		duration: prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "handler_duration_seconds",
			Help: "Duration of handler calls, by result: ok, error, permanent, timeout, panic.", Buckets: o.buckets},
			[]string{LabelConsumer, LabelResult}),
		inFlight: prom.NewGaugeVec(prom.GaugeOpts{Namespace: ns, Name: "handlers_in_flight",
			Help: "Handler calls running now."}, []string{LabelConsumer}),
		attempts: prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "delivery_attempts",
			Help:    "Delivery attempt number of each settled delivery (1 = first delivery).",
			Buckets: []float64{1, 2, 3, 5, 10, 20}}, []string{LabelConsumer}),
		events: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "events_total",
			Help: "Lifecycle events of runners, consumers and sources, by kind."},
			[]string{LabelConsumer, LabelEvent}),
		reconnects: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "reconnects_total",
			Help: "Times a source lost its broker connection and started reconnecting."}, []string{LabelConsumer}),
		restarts: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "restarts_total",
			Help: "Times a Supervisor restarted a failed runner."}, []string{LabelConsumer}),
		rebalances: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "rebalances_total",
			Help: "Kafka consumer group generations that ended (partitions revoked or reassigned)."}, []string{LabelConsumer}),
		drainMsgs: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "drain_messages_total",
			Help: "Deliveries dealt with by drains, by outcome: handled, given-back, abandoned."},
			[]string{LabelConsumer, LabelOutcome}),
		drainTime: prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "drain_duration_seconds",
			Help:    "Duration of drains.",
			Buckets: []float64{0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120}}, []string{LabelConsumer}),
		stuck: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "stuck_handlers_total",
			Help: "Handler calls that ran past the stuck-handler watchdog's threshold."}, []string{LabelConsumer}),
		rateWait: prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "ratelimit_wait_seconds",
			Help:    "Time messages waited for a rate limiter's token (middleware.RateLimit), counting only those that waited; a wait cut short by a pause or drain counts too.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60}}, []string{LabelConsumer}),
	}
	m.killSwitch = prom.NewGaugeVec(prom.GaugeOpts{Namespace: ns, Name: "kill_switch_state",
		Help: "State of a consumer's kill switch (consumer.WithKillSwitch): 0 closed, 1 probing, 2 tripped (intake stopped). A consumer whose switch never tripped has no series."},
		[]string{LabelConsumer})
	cs := []prom.Collector{m.handled, m.duration, m.inFlight, m.attempts, m.events,
		m.reconnects, m.restarts, m.rebalances, m.drainMsgs, m.drainTime, m.stuck, m.rateWait, m.killSwitch}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			// Leave reg as we found it, so that the caller may retry with
			// another namespace or Registerer.
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("queuekit: register prometheus metrics: %w", err)
		}
	}
	return &Recorder{m: m, consumer: o.consumer}, nil
}

func validNamespace(ns string) bool {
	for i, c := range ns {
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// For returns a view of r whose observations all carry the consumer label
// name, whatever the consumer's own name. The view shares r's metrics; it is
// cheap and may be kept or made again.
func (r *Recorder) For(name string) *Recorder {
	return &Recorder{m: r.m, consumer: name}
}

func (r *Recorder) label(m *broker.Message) string {
	if r.consumer != "" {
		return r.consumer
	}
	return topic(m)
}

// topic is m's topic, or "" for a nil message (a caller's bug, which must
// not crash the process through a metrics call).
func topic(m *broker.Message) string {
	if m == nil {
		return ""
	}
	return m.Topic
}

// Options returns the consumer options that record everything the Recorder
// measures of one consumer: middleware.Metrics (handler calls, their
// duration and result, the handlers in flight), an observer (what the
// runtime did with each delivery — ack, requeue, dead-letter, stale… — and
// its delivery attempt) and an event hook (reconnects, restarts, drains and
// every other lifecycle event, the Supervisor's events about the consumer
// included). Pass them to consumer.New, after the consumer's own options or
// before; the handler given to New runs inside the metrics middleware, so
// wrap it in middleware.Recover for panics to count as such:
//
//	c, err := consumer.New(src, middleware.Recover()(h), rec.Options()...)
//
// The series are labelled with the consumer's name: the name it is added to
// its Supervisor under (Supervisor.Add), else its WithName, read from each
// call (consumer.NameFromContext for the handler and the observer,
// Event.Runner for events) — so one Options result may serve several
// consumers. Do not also set Supervisor.OnEvent or WithEventHook to r.Event:
// each event would be counted twice.
func (r *Recorder) Options() []consumer.Option {
	return []consumer.Option{
		consumer.WithMiddleware(r.middleware),
		consumer.WithObserver(r.Observe),
		consumer.WithEventHook(r.eventHook),
	}
}

// name is the consumer label for a call: the Recorder's fixed name
// (WithConsumer, For), else the consumer's (NameFromContext), else the topic.
func (r *Recorder) name(ctx context.Context, m *broker.Message) string {
	if r.consumer != "" {
		return r.consumer
	}
	if ctx != nil {
		if name, ok := consumer.NameFromContext(ctx); ok {
			return name
		}
	}
	return topic(m)
}

// middleware measures each handler call as middleware.Metrics does, under
// the name of the consumer whose handler it is.
func (r *Recorder) middleware(next consumer.Handler) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) (err error) {
		name := r.name(ctx, m)
		r.m.get(name).inFlight.Inc()
		start := time.Now()
		// Deferred, so that a panic passing through (Recover placed outside)
		// still ends the measurement; it is recorded as a panic and re-raised.
		defer func() {
			if p := recover(); p != nil {
				r.handlerDone(name, &consumer.PanicError{Value: p}, time.Since(start))
				panic(p)
			}
			r.handlerDone(name, err, time.Since(start))
		}()
		return next.Handle(ctx, m)
	})
}

func (r *Recorder) eventHook(e consumer.Event) {
	name := r.consumer
	if name == "" {
		name = e.Runner
	}
	r.event(name, e)
}

// HandlerStarted implements middleware.Recorder.
func (r *Recorder) HandlerStarted(m *broker.Message) {
	r.m.get(r.label(m)).inFlight.Inc()
}

// HandlerDone implements middleware.Recorder.
func (r *Recorder) HandlerDone(m *broker.Message, err error, d time.Duration) {
	r.handlerDone(r.label(m), err, d)
}

func (r *Recorder) handlerDone(name string, err error, d time.Duration) {
	b := r.m.get(name)
	b.inFlight.Dec()
	b.duration[resultIndex(middleware.Outcome(err))].Observe(d.Seconds())
}

func resultIndex(outcome string) int {
	for i, res := range results {
		if res == outcome {
			return i
		}
	}
	return 1 // "error": a class middleware.Outcome may learn later
}

// Observe counts one settlement; Options passes it to consumer.WithObserver.
// The outcome label is the settlement's name (s.String()) when the broker
// took it, OutcomeStale when err wraps broker.ErrStaleDelivery, and
// OutcomeSettleFailed for any other settlement error.
func (r *Recorder) Observe(ctx context.Context, m *broker.Message, s consumer.Settlement, err error) {
	r.observe(r.name(ctx, m), m, s, err)
}

func (r *Recorder) observe(name string, m *broker.Message, s consumer.Settlement, err error) {
	b := r.m.get(name)
	switch {
	case err != nil && errors.Is(err, broker.ErrStaleDelivery):
		counter(r.m.handled, name, OutcomeStale).Inc()
	case err != nil:
		counter(r.m.handled, name, OutcomeSettleFailed).Inc()
	case s >= consumer.SettledAck && s <= consumer.SettledAbandon:
		b.handled[s].Inc()
	default: // a Settlement this package does not know yet
		counter(r.m.handled, name, s.String()).Inc()
	}
	attempt := 1
	if m != nil {
		attempt = max(m.Attempt, 1)
	}
	b.attempts.Observe(float64(attempt))
}

// Event counts a lifecycle event; Options passes it to
// consumer.WithEventHook. It may also be set as Supervisor.OnEvent, to count
// the events of runners that are not consumers, but not both for one
// consumer. The consumer label is the event's Runner (the name the runner
// was added to the Supervisor with, or the consumer's WithName), unless the
// Recorder has a fixed name (WithConsumer, For).
//
// Every event is counted in queuekit_events_total by kind; the kill
// switch's events (EventTripped, EventProbing, EventRecovered) also set
// queuekit_kill_switch_state (KillSwitchTripped, KillSwitchProbing,
// KillSwitchClosed), whose series EventStopped removes; reconnects
// (EventReconnecting), restarts (EventRestarting) and Kafka rebalances
// (EventRebalanced) also have counters of their own, and EventDrained adds its report to queuekit_drain_messages_total
// and queuekit_drain_duration_seconds. Per-message events
// (EventDeadLettered, EventSettleFailed) are counted too, but their message
// ids are not used as labels.
func (r *Recorder) Event(e consumer.Event) {
	c := r.consumer
	if c == "" {
		c = e.Runner
	}
	r.event(c, e)
}

func (r *Recorder) event(c string, e consumer.Event) {
	counter(r.m.events, c, e.Kind.String()).Inc()
	switch e.Kind {
	case consumer.EventReconnecting:
		counter(r.m.reconnects, c).Inc()
	case consumer.EventRestarting:
		counter(r.m.restarts, c).Inc()
	case consumer.EventRebalanced:
		counter(r.m.rebalances, c).Inc()
	case consumer.EventTripped:
		gauge(r.m.killSwitch, c).Set(KillSwitchTripped)
	case consumer.EventProbing:
		gauge(r.m.killSwitch, c).Set(KillSwitchProbing)
	case consumer.EventRecovered:
		gauge(r.m.killSwitch, c).Set(KillSwitchClosed)
	case consumer.EventStopped:
		// A consumer that stopped has no intake to speak of: its series
		// goes, rather than staying "tripped" for ever.
		r.m.killSwitch.DeleteLabelValues(labelValues([]string{c})...)
	case consumer.EventDrained:
		counter(r.m.drainMsgs, c, "handled").Add(float64(max(e.Drain.Handled, 0)))
		counter(r.m.drainMsgs, c, "given-back").Add(float64(max(e.Drain.GivenBack, 0)))
		counter(r.m.drainMsgs, c, "abandoned").Add(float64(max(e.Drain.Abandoned, 0)))
		observer(r.m.drainTime, c).Observe(e.Drain.Duration.Seconds())
	}
}

// HandlerStuck counts a report of package health's stuck-handler watchdog:
// set it as the watchdog's OnStuck hook,
//
//	wd, err := health.NewWatchdog(health.WatchdogConfig{Threshold: time.Minute, OnStuck: rec.HandlerStuck})
//
// The watchdog reports each call once when it becomes stuck, and once more
// when it nears the broker's delivery timeout. The consumer label is the
// report's consumer (its name), or the message topic when it has none; a
// Recorder with a fixed name (WithConsumer, For) uses its own.
func (r *Recorder) HandlerStuck(s health.Stuck) {
	name := r.consumer
	switch {
	case name != "":
	case s.Consumer != "":
		name = s.Consumer
	default:
		name = s.Topic
	}
	counter(r.m.stuck, name).Inc()
}

// OnWait records a wait for a rate limiter's token in
// queuekit_ratelimit_wait_seconds. Set it as the rate limit's hook:
//
//	rl, err := middleware.RateLimit(middleware.RateLimitConfig{Rate: 50, OnWait: rec.OnWait})
//
// RateLimit calls it only for messages that waited, so the histogram's
// count is the number of messages slowed down, not of all messages. The
// consumer label is the consumer's name (consumer.NameFromContext), as for
// Options, else the message's topic; a Recorder with a fixed name
// (WithConsumer, For) uses its own.
func (r *Recorder) OnWait(ctx context.Context, m *broker.Message, waited time.Duration) {
	name := r.name(ctx, m)
	o, ok := r.m.waits.Load(name)
	if !ok {
		o, _ = r.m.waits.LoadOrStore(name, observer(r.m.rateWait, name))
	}
	o.(prom.Observer).Observe(max(waited, 0).Seconds())
}

var _ middleware.Recorder = (*Recorder)(nil)

// Values of queuekit_kill_switch_state, the state of a consumer's kill switch
// (consumer.WithKillSwitch) as its events report it. An alert on a switch
// that stays open is queuekit_kill_switch_state == 2 for some minutes.
const (
	KillSwitchClosed  = 0 // closed: intake open at the full concurrency
	KillSwitchProbing = 1 // probing: intake open at the probe concurrency
	KillSwitchTripped = 2 // tripped: intake stopped until the next probe
)
