package otelqueuekit_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware/otelqueuekit"
)

// TestNoopProviderIsAPassThrough checks issue 15's "tracing when off": with
// the no-op provider, Tracing does no carrier, attribute or span work, even
// for a message that carries a trace context or a context holding a
// recording span: the handler gets the caller's context itself, at no
// allocation.
func TestNoopProviderIsAPassThrough(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	traced, _ := tracedMessage(context.Background(), pub)
	outer, span := pub.Tracer("caller").Start(context.WithValue(context.Background(), ctxKey{}, "kept"), "poll")
	defer span.End()

	for _, tp := range []trace.TracerProvider{noop.NewTracerProvider(), trace.NewNoopTracerProvider()} { //nolint:staticcheck // the deprecated provider on purpose
		var got context.Context
		wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(tp))(
			consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
				got = ctx
				return nil
			}))
		for _, ctx := range []context.Context{context.Background(), outer} {
			if err := wrapped.Handle(ctx, traced); err != nil {
				t.Fatal(err)
			}
			if got != ctx {
				t.Errorf("%T: handler got context %v; want the caller's own %v", tp, got, ctx)
			}
			if n := testing.AllocsPerRun(1000, func() { _ = wrapped.Handle(ctx, traced) }); n != 0 {
				t.Errorf("%T: %v allocs per traced message; want 0", tp, n)
			}
		}
	}
}

// TestPropagateWithoutTracing checks the option that keeps a trace going
// through a service that does not trace: with the no-op provider, the
// handler's context carries the publisher's span context (remote), so that
// what it publishes continues the trace.
func TestPropagateWithoutTracing(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	traced, sent := tracedMessage(context.Background(), pub)
	var got trace.SpanContext
	wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(noop.NewTracerProvider()), otelqueuekit.PropagateWithoutTracing())(
		consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
			got = trace.SpanContextFromContext(ctx)
			return nil
		}))
	if err := wrapped.Handle(context.Background(), traced); err != nil {
		t.Fatal(err)
	}
	if !got.Equal(sent.WithRemote(true)) {
		t.Errorf("handler's span context = %v; want the publisher's %v, remote", got, sent)
	}
}
