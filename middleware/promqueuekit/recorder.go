package promqueuekit

import (
	"errors"
	"fmt"
	"sync"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

// Label names. They are few and their values are bounded on purpose: no
// message ids, keys or error texts ever become label values.
const (
	// LabelConsumer is the consumer name given with WithConsumer, or the
	// message's Topic (queue or Kafka topic) when none was given.
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
	// its connection (consumer.ErrStaleDelivery); the broker redelivers them.
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
// of the Recorder, instead of the message Topic and the event's Runner. To
// record several consumers on one Registerer, make one Recorder without it
// and give each consumer its own view with Recorder.For.
func WithConsumer(name string) Option { return func(o *options) { o.consumer = name } }

// WithBuckets sets the buckets of the handler duration histogram, in seconds
// (default prometheus.DefBuckets). They must be strictly increasing.
func WithBuckets(b []float64) Option { return func(o *options) { o.buckets = b } }

// A Recorder exports the measurements of a consumer as Prometheus metrics.
// It plugs into three places, each of which sees something the others cannot:
//
//   - middleware.Metrics(r): handler calls, their duration and result, and the
//     handlers in flight (Recorder implements middleware.Recorder);
//   - consumer.WithObserver(r.Observe): what the runtime did with each
//     delivery (ack, requeue, dead-letter, stale…) and its delivery attempt;
//   - Supervisor.OnEvent = r.Event (or consumer.WithEventHook(r.Event)):
//     reconnects, restarts, drains and every other lifecycle event.
//
// A Recorder is safe for concurrent use. Its zero value is not usable: make
// one with New.
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
		inFlight: m.inFlight.WithLabelValues(name),
		attempts: m.attempts.WithLabelValues(name),
	}
	for i, res := range results {
		b.duration[i] = m.duration.WithLabelValues(name, res)
	}
	for s := consumer.SettledAck; s <= consumer.SettledAbandon; s++ {
		b.handled[s] = m.handled.WithLabelValues(name, s.String())
	}
	actual, _ := m.bound.LoadOrStore(name, b)
	return actual.(*bound)
}

// New returns a Recorder whose metrics are registered on reg. It returns an
// error wrapping consumer.ErrInvalidConfig when reg is nil or an option is
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
	}
	cs := []prom.Collector{m.handled, m.duration, m.inFlight, m.attempts, m.events,
		m.reconnects, m.restarts, m.rebalances, m.drainMsgs, m.drainTime, m.stuck}
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
// name: one Recorder, registered once, serving several consumers. The view
// shares r's metrics; it is cheap and may be kept or made again.
func (r *Recorder) For(name string) *Recorder {
	return &Recorder{m: r.m, consumer: name}
}

func (r *Recorder) label(m *broker.Message) string {
	if r.consumer != "" {
		return r.consumer
	}
	return m.Topic
}

// HandlerStarted implements middleware.Recorder.
func (r *Recorder) HandlerStarted(m *broker.Message) {
	r.m.get(r.label(m)).inFlight.Inc()
}

// HandlerDone implements middleware.Recorder.
func (r *Recorder) HandlerDone(m *broker.Message, err error, d time.Duration) {
	b := r.m.get(r.label(m))
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

// Observe counts one settlement. Pass it to consumer.WithObserver.
// The outcome label is the settlement's name (s.String()) when the broker
// took it, OutcomeStale when err wraps consumer.ErrStaleDelivery, and
// OutcomeSettleFailed for any other settlement error.
func (r *Recorder) Observe(m *broker.Message, s consumer.Settlement, err error) {
	name := r.label(m)
	b := r.m.get(name)
	switch {
	case err != nil && errors.Is(err, broker.ErrStaleDelivery):
		r.m.handled.WithLabelValues(name, OutcomeStale).Inc()
	case err != nil:
		r.m.handled.WithLabelValues(name, OutcomeSettleFailed).Inc()
	case s >= consumer.SettledAck && s <= consumer.SettledAbandon:
		b.handled[s].Inc()
	default: // a Settlement this package does not know yet
		r.m.handled.WithLabelValues(name, s.String()).Inc()
	}
	b.attempts.Observe(float64(max(m.Attempt, 1)))
}

// Event counts a lifecycle event. Set it as Supervisor.OnEvent, or pass it to
// consumer.WithEventHook. The consumer label is the event's Runner (the name
// the runner was added to the Supervisor with, or the consumer's WithName),
// unless the Recorder has a fixed name (WithConsumer, For).
//
// Every event is counted in queuekit_events_total by kind; reconnects
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
	r.m.events.WithLabelValues(c, e.Kind.String()).Inc()
	switch e.Kind {
	case consumer.EventReconnecting:
		r.m.reconnects.WithLabelValues(c).Inc()
	case consumer.EventRestarting:
		r.m.restarts.WithLabelValues(c).Inc()
	case consumer.EventRebalanced:
		r.m.rebalances.WithLabelValues(c).Inc()
	case consumer.EventDrained:
		r.m.drainMsgs.WithLabelValues(c, "handled").Add(float64(e.Drain.Handled))
		r.m.drainMsgs.WithLabelValues(c, "given-back").Add(float64(e.Drain.GivenBack))
		r.m.drainMsgs.WithLabelValues(c, "abandoned").Add(float64(e.Drain.Abandoned))
		r.m.drainTime.WithLabelValues(c).Observe(e.Drain.Duration.Seconds())
	}
}

// HandlerStuck counts a handler call that ran past a stuck-handler
// watchdog's threshold (see package health): wire it to the watchdog's
// OnStuck hook. name is the consumer name, or the message topic; a Recorder
// with a fixed name (WithConsumer, For) uses its own.
func (r *Recorder) HandlerStuck(name string) {
	if r.consumer != "" {
		name = r.consumer
	}
	r.m.stuck.WithLabelValues(name).Inc()
}

var _ middleware.Recorder = (*Recorder)(nil)
