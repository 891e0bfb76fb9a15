package otelqueuekit

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

// ScopeName is the instrumentation scope of the tracer this package uses.
const ScopeName = "github.com/queuekit/queuekit/middleware/otelqueuekit"

// AttributeAttempt is the span attribute holding broker.Message.Attempt
// (1 on the first delivery). Semantic conventions have no broker-neutral
// delivery count, so it is namespaced.
const AttributeAttempt = attribute.Key("queuekit.delivery.attempt")

// AttributeConsumer is the span attribute holding the name of the consumer
// that handled the message (consumer.NameFromContext): the name it was added
// to its Supervisor under, or its WithName — the name its logs, metrics and
// health use.
const AttributeConsumer = attribute.Key("queuekit.consumer.name")

// Options returns the consumer options that trace every handler call of a
// consumer, in one line:
//
//	c, err := consumer.New(src, middleware.Recover()(h), otelqueuekit.Options("rabbitmq")...)
//
// It is Tracing(system, opts...) added with consumer.WithMiddleware; the
// handler given to New runs inside it, so that a panic recovered by
// middleware.Recover is recorded on the span as an error. Options may be
// called once for several consumers, or once each.
func Options(system string, opts ...Option) []consumer.Option {
	return []consumer.Option{consumer.WithMiddleware(Tracing(system, opts...))}
}

// Carrier adapts message headers (broker.Message.Header) to
// propagation.TextMapCarrier, so that
// any propagator can read and write them. A nil Carrier reads as empty;
// Set on a nil Carrier does nothing.
type Carrier map[string]string

// Get returns the value of key.
func (c Carrier) Get(key string) string { return c[key] }

// Set stores value under key.
func (c Carrier) Set(key, value string) {
	if c != nil {
		c[key] = value
	}
}

// Keys lists the keys present.
func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

var _ propagation.TextMapCarrier = Carrier(nil)

// An Option configures Tracing and Inject.
type Option func(*options)

type options struct {
	tp            trace.TracerProvider
	prop          propagation.TextMapPropagator
	fields        []string // the headers prop extracts from, when known
	consumerGroup string
	propagateOff  bool // PropagateWithoutTracing
}

// WithTracerProvider sets where spans go. Default: otel.GetTracerProvider(),
// read when Tracing is called.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// WithPropagator sets how trace context is read from and written to message
// headers. Default: W3C Trace Context and Baggage, so that tracing works
// without setting a global propagator (the global default propagates
// nothing). Pass otel.GetTextMapPropagator() to use the global one.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(o *options) { o.prop = p }
}

// WithConsumerGroup records messaging.consumer.group.name on every span:
// the Kafka consumer group, or the RabbitMQ consumer tag family.
func WithConsumerGroup(name string) Option {
	return func(o *options) { o.consumerGroup = name }
}

// PropagateWithoutTracing makes Tracing, with the no-op provider, still
// extract the trace context a message carries into its handler's context (a
// non-recording span with the publisher's span context, and its baggage), and
// hand a recording span of the caller's context on as a non-recording copy,
// so that what the handler publishes or calls continues the publisher's trace
// through a service that does not trace. It costs about 200 ns and 2
// allocations per message that carries a trace context (BenchmarkOTel,
// "noop-remote-parent-propagate"). Without it, the no-op provider makes
// Tracing a pass-through. It changes nothing when spans are started.
func PropagateWithoutTracing() Option {
	return func(o *options) { o.propagateOff = true }
}

var defaultPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func newOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.tp == nil {
		o.tp = otel.GetTracerProvider()
	}
	switch o.prop.(type) {
	case nil:
		o.prop = defaultPropagator
		o.fields = []string{"traceparent", "baggage"}
	case propagation.TraceContext:
		o.fields = []string{"traceparent"}
	case propagation.Baggage:
		o.fields = []string{"baggage"}
	}
	return o
}

// Tracing returns middleware that runs each handler call in a consumer span.
//
// It extracts the trace context the publisher injected into the message
// headers (see Inject) and starts a span of kind consumer named
// "process <topic>", child of the publisher's span and linked to it, with
// the messaging semantic-convention attributes messaging.system (system, for
// example "rabbitmq" or "kafka"; "queuekit" when empty),
// messaging.operation.type "process", messaging.operation.name "process",
// messaging.destination.name (Message.Topic), messaging.message.id,
// messaging.message.body.size and, if set, messaging.consumer.group.name;
// plus queuekit.delivery.attempt and queuekit.consumer.name. The handler's
// context carries the span, so that its own spans and outgoing calls join
// the trace.
//
// Every attribute is given when the span starts, so that a sampler and the
// span processors' OnStart see them all (a sampler may choose by consumer
// name, or sample redeliveries by attempt). A span the sampler drops gets
// no further work: no error recording.
//
// A handler error is recorded on the span (RecordError, status Error,
// error.type set to middleware.Outcome(err): error, permanent, timeout,
// panic). Put Recover inside Tracing so that a panic reaches it as an error.
//
// # Tracing off
//
// With the no-op provider (go.opentelemetry.io/otel/trace/noop, or the
// deprecated trace.NewNoopTracerProvider), Tracing is a pass-through: no
// header is read, no span started, no attribute built; the handler gets the
// caller's context itself, at no allocation, whether or not the message
// carries a trace context (BenchmarkOTel: "noop", "noop-remote-parent",
// "noop-outer-span"). With PropagateWithoutTracing, a message's trace
// context is still extracted into the handler's context, so that what the
// handler publishes continues the publisher's trace: what the OpenTelemetry
// API gives without an SDK (a non-recording span with the parent's span
// context), at about 200 ns and 2 allocations per traced message. With the
// default propagator, headers are looked up first (traceparent, baggage) and
// Extract runs only when one is present; another propagator (WithPropagator)
// is always asked to Extract.
//
// The global provider (the default, otel.GetTracerProvider) is not treated
// as no-op even before a program sets one, since it may be set later, or
// attached to by automatic instrumentation: until then each message starts
// a non-recording span, which costs its start attributes and a context
// (see BenchmarkOTel).
func Tracing(system string, opts ...Option) consumer.Middleware {
	o := newOptions(opts)
	if system == "" {
		system = "queuekit"
	}
	t := &tracing{
		tracer:       o.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		prop:         o.prop,
		fields:       o.fields,
		propagateOff: o.propagateOff,
		fixed: []attribute.KeyValue{
			semconv.MessagingSystemKey.String(system),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
		},
	}
	if o.consumerGroup != "" {
		t.fixed = append(t.fixed, semconv.MessagingConsumerGroupName(o.consumerGroup))
	}
	switch t.tracer.(type) {
	case noop.Tracer, *noop.Tracer:
		t.noop = true
	default:
		// The deprecated trace.NewNoopTracerProvider's tracer, recognised
		// by its type only (its value is an empty struct): a provider
		// that wraps it, or an SDK whose sampler drops everything, is
		// not taken for it.
		t.noop = reflect.TypeOf(t.tracer) == deprecatedNoopTracer
	}
	if rt := reflect.TypeOf(t.tracer); rt != nil && rt.Kind() == reflect.Pointer {
		switch rt.Elem().PkgPath() {
		case sdkPackage, globalPackage:
			t.reuse = true
		}
	}
	return func(next consumer.Handler) consumer.Handler {
		return &tracingHandler{t: t, next: next}
	}
}

// deprecatedNoopTracer is the type of the tracer of the deprecated
// trace.NewNoopTracerProvider, an unexported one.
var deprecatedNoopTracer = reflect.TypeOf(trace.NewNoopTracerProvider().Tracer("")) //nolint:staticcheck // recognised, not used

// tracing is what Tracing computes once, shared by every handler it wraps.
type tracing struct {
	tracer trace.Tracer
	noop   bool // the tracer is the no-op one: no span is started
	// propagateOff: with the no-op tracer, the trace context is still
	// extracted (PropagateWithoutTracing); else Tracing passes through.
	propagateOff bool
	reuse        bool // the tracer is the SDK's or the global one: start buffers are reused
	prop         propagation.TextMapPropagator
	// fields are the headers prop extracts from, when known: Extract is
	// skipped for a message that has none of them. Nil: always Extract.
	fields []string
	fixed  []attribute.KeyValue // start attributes common to every message
	// topics holds the span name and start attributes of each topic seen,
	// up to maxTopics, built once: a map replaced as a whole (under mu)
	// when a topic is added, read without locking.
	topics atomic.Pointer[map[string]*topicSpan]
	mu     sync.Mutex
}

// maxTopics bounds tracing.topics: the messages of further topics get their
// span name and attributes built for each message.
const maxTopics = 64

// topicSpan is the span name and the start attributes common to the
// messages of a topic.
type topicSpan struct {
	topic string
	name  string
	attrs []attribute.KeyValue // fixed, then the destination
}

// maxStartAttributes is how many attributes a span may start with: the
// fixed ones (system, operation type and name, consumer group), the
// destination, message id, body size, attempt and consumer name.
const maxStartAttributes = 9

// startBuffer holds what one span is started with, in one allocation.
// With the SDK's tracer, which copies attributes and links out of the
// options (trace.NewSpanStartConfig) and keeps nothing of them after Start
// returns, and with the global one (which ignores them until a provider
// is set, then passes them on to it: the SDK's, as a rule), buffers are
// reused (startBuffers); another tracer, which might keep what it is
// given, gets a new one for each span.
type startBuffer struct {
	attrs [maxStartAttributes]attribute.KeyValue
	opts  [3]trace.SpanStartOption
	links [1]trace.Link
}

var startBuffers = sync.Pool{New: func() any { return new(startBuffer) }}

// sdkPackage and globalPackage are the import paths of the OpenTelemetry
// SDK's tracer and of the global one (otel.GetTracerProvider's, when
// Tracing is called before a provider is set).
const (
	sdkPackage    = "go.opentelemetry.io/otel/sdk/trace"
	globalPackage = "go.opentelemetry.io/otel/internal/global"
)

var consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)

func (t *tracing) forTopic(topic string) *topicSpan {
	known := t.topics.Load()
	if known != nil {
		if ts, ok := (*known)[topic]; ok {
			return ts
		}
		if len(*known) >= maxTopics {
			return t.newTopicSpan(topic)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	known = t.topics.Load()
	n := 0
	if known != nil {
		if ts, ok := (*known)[topic]; ok {
			return ts
		}
		n = len(*known)
	}
	ts := t.newTopicSpan(topic)
	if n < maxTopics {
		m := make(map[string]*topicSpan, n+1)
		if known != nil {
			maps.Copy(m, *known)
		}
		m[topic] = ts
		t.topics.Store(&m)
	}
	return ts
}

func (t *tracing) newTopicSpan(topic string) *topicSpan {
	attrs := make([]attribute.KeyValue, 0, len(t.fixed)+1)
	attrs = append(attrs, t.fixed...)
	attrs = append(attrs, semconv.MessagingDestinationName(topic))
	return &topicSpan{topic: topic, name: spanName(topic), attrs: attrs}
}

// extract returns ctx with the trace context of header, if it has one.
func (t *tracing) extract(ctx context.Context, header map[string]string) context.Context {
	if t.fields != nil {
		found := false
		for _, k := range t.fields {
			if _, found = header[k]; found {
				break
			}
		}
		if !found {
			return ctx
		}
	}
	return t.prop.Extract(ctx, Carrier(header))
}

type tracingHandler struct {
	t    *tracing
	next consumer.Handler
	// first is the span start of the first topic this handler saw, set
	// once: the topic of every message, for a consumer of one topic,
	// found without a map lookup.
	first atomic.Pointer[topicSpan]
}

func (h *tracingHandler) forTopic(topic string) *topicSpan {
	if ts := h.first.Load(); ts != nil && ts.topic == topic {
		return ts
	}
	ts := h.t.forTopic(topic)
	if h.first.Load() == nil {
		h.first.CompareAndSwap(nil, ts)
	}
	return ts
}

func (h *tracingHandler) Handle(ctx context.Context, m *broker.Message) error {
	t := h.t
	if t.noop && !t.propagateOff {
		// Tracing off: no carrier, attribute or span work (issue 15); the
		// handler gets the caller's context as it would without Tracing.
		return h.next.Handle(ctx, m)
	}
	pctx := t.extract(ctx, m.Header)
	if t.noop {
		// PropagateWithoutTracing: what the no-op tracer's Start would return: the parent span
		// context (the remote one just extracted, else the one ctx
		// carries, if any) in a non-recording span. A non-recording span
		// (or none) is passed on as it is, at no cost; a recording span of
		// the caller's (the chain run inside a span from another provider)
		// is wrapped, so that the handler cannot add to or end it.
		if span := trace.SpanFromContext(pctx); span.IsRecording() {
			pctx = trace.ContextWithSpanContext(pctx, span.SpanContext())
		}
		return h.next.Handle(pctx, m)
	}
	ts := h.forTopic(m.Topic)
	// Every attribute is given when the span starts, so that the sampler
	// and the span processors' OnStart see them all (a sampler may choose
	// by consumer, or sample redeliveries by attempt), in one buffer.
	var buf *startBuffer
	if t.reuse {
		buf = startBuffers.Get().(*startBuffer)
	} else {
		buf = new(startBuffer)
	}
	attrs := append(buf.attrs[:0], ts.attrs...)
	attrs = append(attrs,
		semconv.MessagingMessageID(m.ID),
		semconv.MessagingMessageBodySize(len(m.Body)),
		AttributeAttempt.Int(m.Attempt),
	)
	if name, ok := consumer.NameFromContext(ctx); ok {
		attrs = append(attrs, AttributeConsumer.String(name))
	}
	sopts := append(buf.opts[:0], consumerKind, trace.WithAttributes(attrs...))
	// Parent and link: a single-message process span may have the creation
	// context as parent (one trace from publish to process) and should link
	// to it (semantic conventions), which keeps the relation when a backend
	// splits long traces.
	if sc := trace.SpanContextFromContext(pctx); sc.IsValid() {
		buf.links[0] = trace.Link{SpanContext: sc}
		sopts = append(sopts, trace.WithLinks(buf.links[:]...))
	}
	sctx, span := t.tracer.Start(pctx, ts.name, sopts...)
	if t.reuse {
		clear(attrs) // the part used, so that the pool keeps no message's strings
		buf.opts, buf.links = [3]trace.SpanStartOption{}, [1]trace.Link{}
		startBuffers.Put(buf)
	}
	err := h.next.Handle(sctx, m)
	if err != nil && span.IsRecording() { // a dropped span gets no error work
		span.RecordError(describable(err))
		span.SetStatus(codes.Error, consumer.ErrorText(err))
		span.SetAttributes(semconv.ErrorTypeKey.String(middleware.Outcome(err)))
	}
	span.End()
	return err
}

func spanName(topic string) string {
	if topic == "" {
		return "process"
	}
	return "process " + topic
}

// Inject writes the trace context of ctx (its span, and baggage) into
// header, for a publisher to send with the message, and returns header; a
// nil header is replaced by a new map. Use the same propagator as Tracing
// (WithPropagator; other options are ignored).
//
//	ctx, span := tracer.Start(ctx, "send orders", trace.WithSpanKind(trace.SpanKindProducer))
//	m.Header = otelqueuekit.Inject(ctx, m.Header)
//	err := publisher.Publish(ctx, "orders", m)
//	span.End()
//
// The RabbitMQ and Kafka publishers do this for every message when their
// PublisherConfig.Inject is set:
//
//	Inject: func(ctx context.Context, h map[string]string) map[string]string { return otelqueuekit.Inject(ctx, h) }
func Inject(ctx context.Context, header map[string]string, opts ...Option) map[string]string {
	o := newOptions(opts)
	if header == nil {
		header = make(map[string]string, 2)
	}
	o.prop.Inject(ctx, Carrier(header))
	return header
}

// describable returns err, or, when its Error method panics (a typed nil
// returned as an error), an error carrying consumer.ErrorText's description:
// the tracing SDK calls Error itself, and a panic there must not happen.
func describable(err error) (out error) {
	defer func() {
		if recover() != nil {
			out = errors.New(consumer.ErrorText(err))
		}
	}()
	_ = err.Error()
	return err
}
