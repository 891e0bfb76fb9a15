// Package otelqueuekit traces queuekit handlers with OpenTelemetry
// (go.opentelemetry.io/otel). It is a module of its own, so that programs
// that do not trace do not have OpenTelemetry in their module graph, and it
// is not named otel, so that importing it next to the OpenTelemetry API
// needs no alias.
//
// # Wiring
//
// Publishers call Inject to write the trace context of the publishing span
// into the message headers; consumers take Options, in one line, which run
// every handler call in a consumer span that is a child of, and linked to,
// the publisher's span:
//
//	// publisher
//	m.Header = otelqueuekit.Inject(ctx, m.Header)
//
//	// consumer
//	c, err := consumer.New(src, middleware.Recover()(h), otelqueuekit.Options("rabbitmq")...)
//
// Tracing is the same middleware, for a handler chain built by hand.
//
// # Spans
//
// Each span is named "process <topic>" and carries the messaging semantic
// conventions (messaging.system, messaging.destination.name,
// messaging.message.id…), the delivery attempt (queuekit.delivery.attempt)
// and the consumer's name (queuekit.consumer.name: the name it was added to
// its Supervisor under, as in its logs and metrics). The handler's context
// carries the span, so that its own spans and outgoing calls join the trace.
//
// Headers are read and written through Carrier, a
// propagation.TextMapCarrier over broker.Message.Header. The default
// propagator is W3C Trace Context plus Baggage, so that tracing works
// without a global propagator (WithPropagator changes it).
//
// # Tracing off
//
// With the no-op provider (go.opentelemetry.io/otel/trace/noop, or the
// deprecated trace.NewNoopTracerProvider, passed with WithTracerProvider or
// set as the global provider before Tracing is called), Tracing is a
// pass-through: no header read, no span, no attribute, no allocation, and the
// handler gets the caller's context itself, whether or not the message
// carries a trace context (BenchmarkOTel). PropagateWithoutTracing still
// extracts a message's trace context into the handler's context, so that the
// trace continues through what the handler publishes, as the OpenTelemetry
// API does without an SDK (about 200 ns and 2 allocations per traced
// message). With an SDK, every attribute is given when the
// span starts, so that the sampler sees them all; a span that the sampler
// drops gets no error recording.
//
// For programs without tracing, package middleware/correlation carries a
// correlation id from publisher to handler instead.
//
// # Concurrency
//
// The middleware is safe for concurrent use and starts no goroutines; what
// the spans cost after End depends on the TracerProvider's span processors.
//
// # Errors
//
// Tracing never changes a handler's result: a handler error is recorded on
// its span (status Error, error.type ok, error, permanent, timeout or panic)
// and returned as it is.
package otelqueuekit
