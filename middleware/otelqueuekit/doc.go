// Package otel traces queuekit handlers with OpenTelemetry
// (go.opentelemetry.io/otel). It lives apart from package middleware so that
// programs that do not trace do not link OpenTelemetry.
//
// Publishers call Inject to write the trace context of the publishing span
// into the message headers; consumers wrap their handler with Tracing, which
// reads it back and runs the handler in a consumer span that is a child of,
// and linked to, the publisher's span:
//
//	// publisher
//	m.Header = otel.Inject(ctx, m.Header)
//
//	// consumer
//	h = consumer.Chain(otel.Tracing("rabbitmq"), middleware.Recover())(h)
//
// Headers are read and written through Carrier, a propagation.TextMapCarrier
// over consumer.Message.Header. The default propagator is W3C Trace Context
// plus Baggage (WithPropagator changes it).
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
// its span and returned as it is.
package otelqueuekit
