package otelqueuekit

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

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
	consumerGroup string
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
	if o.prop == nil {
		o.prop = defaultPropagator
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
// A handler error is recorded on the span (RecordError, status Error,
// error.type set to middleware.Outcome(err): error, permanent, timeout,
// panic). Put Recover inside Tracing so that a panic reaches it as an error.
func Tracing(system string, opts ...Option) consumer.Middleware {
	o := newOptions(opts)
	if system == "" {
		system = "queuekit"
	}
	tracer := o.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL))
	fixed := []attribute.KeyValue{
		semconv.MessagingSystemKey.String(system),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
	}
	if o.consumerGroup != "" {
		fixed = append(fixed, semconv.MessagingConsumerGroupName(o.consumerGroup))
	}
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			pctx := o.prop.Extract(ctx, Carrier(m.Header))
			attrs := make([]attribute.KeyValue, 0, len(fixed)+5)
			attrs = append(attrs, fixed...)
			attrs = append(attrs,
				semconv.MessagingDestinationName(m.Topic),
				semconv.MessagingMessageID(m.ID),
				semconv.MessagingMessageBodySize(len(m.Body)),
				AttributeAttempt.Int(m.Attempt),
			)
			if name, ok := consumer.NameFromContext(ctx); ok {
				attrs = append(attrs, AttributeConsumer.String(name))
			}
			sopts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
			// Parent and link: a single-message process span may have the
			// creation context as parent (one trace from publish to
			// process) and should link to it (semantic conventions), which
			// keeps the relation when a backend splits long traces.
			if sc := trace.SpanContextFromContext(pctx); sc.IsValid() {
				sopts = append(sopts, trace.WithLinks(trace.Link{SpanContext: sc}))
			}
			sctx, span := tracer.Start(pctx, spanName(m.Topic), sopts...)
			err := next.Handle(sctx, m)
			if err != nil {
				span.RecordError(describable(err))
				span.SetStatus(codes.Error, consumer.ErrorText(err))
				span.SetAttributes(semconv.ErrorTypeKey.String(middleware.Outcome(err)))
			}
			span.End()
			return err
		})
	}
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
