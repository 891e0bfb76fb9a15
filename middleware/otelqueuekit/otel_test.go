package otelqueuekit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/otelqueuekit"
	"github.com/queuekit/queuekit/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newProvider() (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	sr := tracetest.NewSpanRecorder()
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr)), sr
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := make(map[attribute.Key]attribute.Value)
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value
	}
	return out
}

// TestConsumerSpansAreLinkedToPublisherSpans publishes three messages on
// broker/memory, each from its own producer span with the trace context
// injected into the headers, consumes them, and checks that there is exactly
// one consumer span per handled message, child of and linked to the span
// that published it.
func TestConsumerSpansAreLinkedToPublisherSpans(t *testing.T) {
	tp, sr := newProvider()
	defer tp.Shutdown(context.Background())
	tracer := tp.Tracer("publisher")

	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	published := make(map[string]trace.SpanContext) // message id → publisher span
	for i := range 3 {
		pctx, span := tracer.Start(ctx, "send orders", trace.WithSpanKind(trace.SpanKindProducer))
		id := fmt.Sprintf("order-%d", i)
		m := broker.Message{ID: id, Body: []byte("{}"), Header: map[string]string{"content-type": "application/json"}}
		m.Header = otelqueuekit.Inject(pctx, m.Header)
		if err := b.Publish(pctx, "orders", &m); err != nil {
			t.Fatal(err)
		}
		span.End()
		published[id] = span.SpanContext()
	}

	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	inHandler := make(chan trace.SpanContext, 3)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		inHandler <- trace.SpanContextFromContext(ctx)
		return nil
	})
	c, err := consumer.New(src, h, append(otelqueuekit.Options("memory", otelqueuekit.WithTracerProvider(tp)),
		consumer.WithName("order-reader"), consumer.WithConcurrency(2), consumer.WithLogger(slog.New(slog.DiscardHandler)))...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	deadline := time.Now().Add(20 * time.Second)
	for b.Stats("orders").Acked < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("not acked in time: %+v", b.Stats("orders"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}

	var consumerSpans []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.SpanKind() == trace.SpanKindConsumer {
			consumerSpans = append(consumerSpans, s)
		}
	}
	if len(consumerSpans) != 3 {
		t.Fatalf("%d consumer spans; want 3 (one per handled message)", len(consumerSpans))
	}
	handlerSpans := make(map[trace.SpanID]bool)
	for range 3 {
		handlerSpans[(<-inHandler).SpanID()] = true
	}
	seen := make(map[string]bool)
	for _, s := range consumerSpans {
		a := attrs(s)
		id := a["messaging.message.id"].AsString()
		pub, ok := published[id]
		if !ok || seen[id] {
			t.Errorf("consumer span for message id %q: unknown or seen twice", id)
			continue
		}
		seen[id] = true
		if s.Name() != "process orders" {
			t.Errorf("span name = %q; want %q", s.Name(), "process orders")
		}
		if s.SpanContext().TraceID() != pub.TraceID() {
			t.Errorf("%s: trace id %s; want the publisher's %s", id, s.SpanContext().TraceID(), pub.TraceID())
		}
		if s.Parent().SpanID() != pub.SpanID() || !s.Parent().IsRemote() {
			t.Errorf("%s: parent %s (remote %v); want the publisher's span %s, remote", id, s.Parent().SpanID(), s.Parent().IsRemote(), pub.SpanID())
		}
		if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != pub.SpanID() {
			t.Errorf("%s: links %v; want one link to %s", id, s.Links(), pub.SpanID())
		}
		if !handlerSpans[s.SpanContext().SpanID()] {
			t.Errorf("%s: the handler's context did not carry its consumer span", id)
		}
		for k, want := range map[attribute.Key]attribute.Value{
			"messaging.system":            attribute.StringValue("memory"),
			"messaging.operation.type":    attribute.StringValue("process"),
			"messaging.operation.name":    attribute.StringValue("process"),
			"messaging.destination.name":  attribute.StringValue("orders"),
			"messaging.message.body.size": attribute.IntValue(2),
			"queuekit.delivery.attempt":   attribute.IntValue(1),
			"queuekit.consumer.name":      attribute.StringValue("order-reader"),
		} {
			if a[k] != want {
				t.Errorf("%s: attribute %s = %v; want %v", id, k, a[k].Emit(), want.Emit())
			}
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("%s: status %v; want Unset", id, s.Status())
		}
	}
}

func TestTracingRecordsHandlerErrors(t *testing.T) {
	tp, sr := newProvider()
	defer tp.Shutdown(context.Background())
	tests := []struct {
		name    string
		err     error
		errType string
	}{
		{"a plain error", errors.New("db down"), "error"},
		{"a permanent error", retry.Permanent(errors.New("bad json")), "permanent"},
		{"a panic recovered inside", nil, "panic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sr.Reset()
			h := consumer.HandlerFunc(func(context.Context, *broker.Message) error {
				if tt.err == nil {
					panic("boom")
				}
				return tt.err
			})
			wrapped := consumer.Chain(otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(tp),
				otelqueuekit.WithConsumerGroup("billing")), middleware.Recover())(h)
			err := wrapped.Handle(context.Background(), &broker.Message{ID: "x", Topic: "t", Attempt: 3})
			if err == nil {
				t.Fatal("Handle() = nil; want the handler's error")
			}
			spans := sr.Ended()
			if len(spans) != 1 {
				t.Fatalf("%d spans; want 1", len(spans))
			}
			s := spans[0]
			if s.Status().Code != codes.Error || s.Status().Description != err.Error() {
				t.Errorf("status = %v; want Error %q", s.Status(), err.Error())
			}
			a := attrs(s)
			if got := a["error.type"].AsString(); got != tt.errType {
				t.Errorf("error.type = %q; want %q", got, tt.errType)
			}
			if got := a["messaging.consumer.group.name"].AsString(); got != "billing" {
				t.Errorf("messaging.consumer.group.name = %q; want billing", got)
			}
			if got := a["queuekit.delivery.attempt"].AsInt64(); got != 3 {
				t.Errorf("queuekit.delivery.attempt = %d; want 3", got)
			}
			if len(s.Events()) != 1 || s.Events()[0].Name != "exception" {
				t.Errorf("events = %v; want one exception event", s.Events())
			}
			if s.Parent().IsValid() || len(s.Links()) != 0 {
				t.Errorf("a message without trace headers got parent %v, links %v; want a root span", s.Parent(), s.Links())
			}
		})
	}
}

func TestInjectFillsANilHeader(t *testing.T) {
	tp, _ := newProvider()
	defer tp.Shutdown(context.Background())
	ctx, span := tp.Tracer("p").Start(context.Background(), "send")
	defer span.End()
	h := otelqueuekit.Inject(ctx, nil)
	want := fmt.Sprintf("00-%s-%s-01", span.SpanContext().TraceID(), span.SpanContext().SpanID())
	if h["traceparent"] != want {
		t.Errorf("Inject(ctx, nil)[traceparent] = %q; want %q", h["traceparent"], want)
	}
	if h := otelqueuekit.Inject(context.Background(), nil); len(h) != 0 {
		t.Errorf("Inject without a span = %v; want an empty header", h)
	}
}

// tracedMessage returns a message published from a fresh span of tp, with
// its trace context (and the baggage of ctx) injected into the headers, and
// that span's context.
func tracedMessage(ctx context.Context, tp trace.TracerProvider) (*broker.Message, trace.SpanContext) {
	pctx, span := tp.Tracer("publisher").Start(ctx, "send orders", trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	m := &broker.Message{ID: "order-1", Topic: "orders", Attempt: 1, Body: []byte("{}"),
		Header: otelqueuekit.Inject(pctx, map[string]string{"content-type": "application/json"})}
	return m, span.SpanContext()
}

type ctxKey struct{}

// TestNoopProviderStartsNoSpanButPropagates checks the no-op provider with
// PropagateWithoutTracing: the handler is called with its context unchanged (no span, no allocation) for
// a message without trace context, and, for a message that carries one,
// with the remote span context and baggage extracted, so that what the
// handler publishes carries the publisher's trace onward (as the
// OpenTelemetry API without an SDK, and otelhttp, do).
func TestNoopProviderStartsNoSpanButPropagates(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	traced, sent := tracedMessage(baggage.ContextWithBaggage(context.Background(), bag), pub)

	var (
		calls      int
		got        trace.SpanContext
		gotBaggage string
		onward     map[string]string
		marker     any
	)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls++
		got = trace.SpanContextFromContext(ctx)
		gotBaggage = baggage.FromContext(ctx).Member("tenant").Value()
		onward = otelqueuekit.Inject(ctx, nil) // what the handler would publish
		marker = ctx.Value(ctxKey{})
		return nil
	})
	wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(noop.NewTracerProvider()), otelqueuekit.PropagateWithoutTracing())(h)
	ctx := context.WithValue(context.Background(), ctxKey{}, "kept")

	if err := wrapped.Handle(ctx, traced); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || marker != "kept" {
		t.Fatalf("handler calls = %d, context value = %v; want 1, the caller's", calls, marker)
	}
	if !got.Equal(sent.WithRemote(true)) {
		t.Errorf("handler's span context = %v; want the publisher's %v, remote", got, sent)
	}
	if gotBaggage != "acme" {
		t.Errorf("handler's baggage tenant = %q; want acme", gotBaggage)
	}
	want := fmt.Sprintf("00-%s-%s-01", sent.TraceID(), sent.SpanID())
	if onward["traceparent"] != want {
		t.Errorf("traceparent published by the handler = %q; want the publisher's %q", onward["traceparent"], want)
	}

	plain := &broker.Message{ID: "order-2", Topic: "orders", Body: []byte("{}"), Header: map[string]string{"content-type": "application/json"}}
	if err := wrapped.Handle(ctx, plain); err != nil {
		t.Fatal(err)
	}
	if calls != 2 || marker != "kept" || got.IsValid() || len(onward) != 0 {
		t.Errorf("message without trace context: calls %d, context value %v, span context %v, onward headers %v; want 2, kept, none, none",
			calls, marker, got, onward)
	}

	quiet := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(noop.NewTracerProvider()), otelqueuekit.PropagateWithoutTracing())(
		consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	if n := testing.AllocsPerRun(1000, func() { _ = quiet.Handle(ctx, plain) }); n != 0 {
		t.Errorf("no-op provider, message without trace context: %v allocs per message; want 0", n)
	}
	plain.Header = nil
	if n := testing.AllocsPerRun(1000, func() { _ = quiet.Handle(ctx, plain) }); n != 0 {
		t.Errorf("no-op provider, message without headers: %v allocs per message; want 0", n)
	}
}

// TestNoopProviderInsideARecordingSpan checks the no-op provider with
// PropagateWithoutTracing called with a context that already holds a recording span (the handler chain is
// run inside a span of the caller's) and a message without trace context:
// the handler gets what the no-op tracer's Start returns, a non-recording
// span with that span's context (so that the trace still continues through
// what it publishes), not the caller's recording span itself, which it
// could otherwise add events to or end.
func TestNoopProviderInsideARecordingSpan(t *testing.T) {
	outer, _ := newProvider()
	defer outer.Shutdown(context.Background())
	ctx, span := outer.Tracer("caller").Start(context.Background(), "poll")
	defer span.End()
	var got trace.Span
	var onward map[string]string
	wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(noop.NewTracerProvider()), otelqueuekit.PropagateWithoutTracing())(
		consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
			got = trace.SpanFromContext(ctx)
			onward = otelqueuekit.Inject(ctx, nil)
			return nil
		}))
	m := &broker.Message{ID: "x", Topic: "orders", Header: map[string]string{"content-type": "application/json"}}
	if err := wrapped.Handle(ctx, m); err != nil {
		t.Fatal(err)
	}
	_, wantSpan := noop.NewTracerProvider().Tracer("").Start(ctx, "process orders")
	if got.IsRecording() || got == span {
		t.Errorf("handler got span %T (recording %v); want a non-recording copy, as the no-op tracer's Start gives (%T)", got, got.IsRecording(), wantSpan)
	}
	if !got.SpanContext().Equal(span.SpanContext()) {
		t.Errorf("handler's span context = %v; want the caller's %v", got.SpanContext(), span.SpanContext())
	}
	want := fmt.Sprintf("00-%s-%s-01", span.SpanContext().TraceID(), span.SpanContext().SpanID())
	if onward["traceparent"] != want {
		t.Errorf("traceparent published by the handler = %q; want the caller's %q", onward["traceparent"], want)
	}
}

// TestNoopGlobalProviderIsNoop checks that a no-op provider set as the
// global one before Tracing is called is recognised as such.
func TestNoopGlobalProviderIsNoop(t *testing.T) {
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(noop.NewTracerProvider())
	defer otel.SetTracerProvider(prev)
	wrapped := otelqueuekit.Tracing("memory")(consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	m := &broker.Message{ID: "x", Topic: "orders"}
	if n := testing.AllocsPerRun(1000, func() { _ = wrapped.Handle(context.Background(), m) }); n != 0 {
		t.Errorf("global no-op provider: %v allocs per message; want 0", n)
	}
}

// TestDeprecatedNoopProviderIsNoop checks that the deprecated
// trace.NewNoopTracerProvider takes the no-op path too (no span, no
// allocation), and with PropagateWithoutTracing still passes an extracted
// trace context on.
func TestDeprecatedNoopProviderIsNoop(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	traced, sent := tracedMessage(context.Background(), pub)
	var got trace.SpanContext
	wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(trace.NewNoopTracerProvider()), otelqueuekit.PropagateWithoutTracing())( //nolint:staticcheck // the deprecated provider on purpose
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
	m := &broker.Message{ID: "x", Topic: "orders", Header: map[string]string{"content-type": "application/json"}}
	if n := testing.AllocsPerRun(1000, func() { _ = wrapped.Handle(context.Background(), m) }); n != 0 {
		t.Errorf("deprecated no-op provider: %v allocs per message; want 0", n)
	}
}

// recordingSampler remembers the attributes and links it was asked to
// sample with, and drops every span.
type recordingSampler struct {
	mu     sync.Mutex
	params []sdktrace.SamplingParameters
}

func (s *recordingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.mu.Lock()
	s.params = append(s.params, p)
	s.mu.Unlock()
	return sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
}

func (s *recordingSampler) Description() string { return "recordingSampler" }

// countingProvider wraps a provider so that calls to the span methods that
// do attribute and error work are counted.
type countingProvider struct {
	embedded.TracerProvider
	tp    trace.TracerProvider
	calls *atomic.Int64
}

func (p countingProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return countingTracer{tr: p.tp.Tracer(name, opts...), calls: p.calls}
}

type countingTracer struct {
	embedded.Tracer
	tr    trace.Tracer
	calls *atomic.Int64
}

func (t countingTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx, span := t.tr.Start(ctx, name, opts...)
	s := countingSpan{Span: span, calls: t.calls}
	return trace.ContextWithSpan(ctx, s), s
}

type countingSpan struct {
	trace.Span
	calls *atomic.Int64
}

func (s countingSpan) SetAttributes(kv ...attribute.KeyValue) {
	s.calls.Add(1)
	s.Span.SetAttributes(kv...)
}
func (s countingSpan) RecordError(err error, opts ...trace.EventOption) {
	s.calls.Add(1)
	s.Span.RecordError(err, opts...)
}
func (s countingSpan) SetStatus(c codes.Code, d string) { s.calls.Add(1); s.Span.SetStatus(c, d) }

// TestDroppedSpanGetsNoAttributeWork checks a provider whose sampler drops
// every span: the sampler still sees the sampling-relevant attributes and
// the link to the publisher's span, the handler runs in the (non-recording)
// span's context and its error is returned as it is, but no attribute or
// error is set on the span after it starts, and the middleware allocates
// nothing beyond what a direct Start with the same attributes costs.
func TestDroppedSpanGetsNoAttributeWork(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	traced, sent := tracedMessage(context.Background(), pub)

	sampler := &recordingSampler{}
	sr := tracetest.NewSpanRecorder()
	sdk := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithSpanProcessor(sr))
	defer sdk.Shutdown(context.Background())
	var calls atomic.Int64
	tp := countingProvider{tp: sdk, calls: &calls}

	failure := errors.New("db down")
	var handled int
	var inHandler trace.SpanContext
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		handled++
		inHandler = trace.SpanContextFromContext(ctx)
		return failure
	})
	wrapped := otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(tp), otelqueuekit.WithConsumerGroup("billing"))(h)
	if err := wrapped.Handle(context.Background(), traced); err != failure {
		t.Fatalf("Handle() = %v; want the handler's error as it is", err)
	}
	if handled != 1 {
		t.Fatalf("handler called %d times; want 1", handled)
	}
	if inHandler.TraceID() != sent.TraceID() || inHandler.IsSampled() {
		t.Errorf("handler's span context = %v; want one of the publisher's trace %s, not sampled", inHandler, sent.TraceID())
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("%d attribute/status/error calls on a dropped span; want 0", n)
	}
	if n := len(sr.Ended()); n != 0 {
		t.Errorf("%d spans ended into the processor; want 0 (dropped)", n)
	}
	if len(sampler.params) != 1 {
		t.Fatalf("sampler asked %d times; want 1", len(sampler.params))
	}
	p := sampler.params[0]
	seen := make(map[attribute.Key]attribute.Value)
	for _, kv := range p.Attributes {
		seen[kv.Key] = kv.Value
	}
	for k, want := range map[attribute.Key]attribute.Value{
		"messaging.system":              attribute.StringValue("kafka"),
		"messaging.operation.type":      attribute.StringValue("process"),
		"messaging.operation.name":      attribute.StringValue("process"),
		"messaging.destination.name":    attribute.StringValue("orders"),
		"messaging.consumer.group.name": attribute.StringValue("billing"),
	} {
		if seen[k] != want {
			t.Errorf("sampler saw %s = %v; want %v", k, seen[k].Emit(), want.Emit())
		}
	}
	if p.Kind != trace.SpanKindConsumer || p.Name != "process orders" {
		t.Errorf("sampler saw kind %v, name %q; want consumer, %q", p.Kind, p.Name, "process orders")
	}
	if len(p.Links) != 1 || p.Links[0].SpanContext.SpanID() != sent.SpanID() {
		t.Errorf("sampler saw links %v; want one to the publisher's span %s", p.Links, sent.SpanID())
	}

	// Allocations: the middleware adds none to what starting and ending
	// a span with the same attributes directly costs.
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	defer never.Shutdown(context.Background())
	nop := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	quiet := otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(never))(nop)
	plain := &broker.Message{ID: "order-2", Topic: "orders", Attempt: 1, Body: []byte("{}")}
	tracer := never.Tracer(otelqueuekit.ScopeName)
	ctx := consumerContext(t, "billing-worker")
	direct := testing.AllocsPerRun(1000, func() {
		name, _ := consumer.NameFromContext(ctx)
		_, span := tracer.Start(ctx, "process orders", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("messaging.system", "kafka"), attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.operation.name", "process"), attribute.String("messaging.destination.name", "orders"),
			attribute.String("messaging.message.id", plain.ID), attribute.Int("messaging.message.body.size", len(plain.Body)),
			attribute.Int("queuekit.delivery.attempt", plain.Attempt), attribute.String("queuekit.consumer.name", name)))
		span.End()
	})
	viaTracing := testing.AllocsPerRun(1000, func() { _ = quiet.Handle(ctx, plain) })
	t.Logf("never-sampling SDK, message without trace context: %v allocs per message (a direct Start/End: %v)", viaTracing, direct)
	if viaTracing > direct {
		t.Errorf("never-sampling SDK: %v allocs per message; want at most the %v of a direct Start/End", viaTracing, direct)
	}
}

// startSpy is a sampler (sampling every span) and a span processor that
// remember the attributes each span started with, as they saw them.
type startSpy struct {
	mu      sync.Mutex
	sampled []map[attribute.Key]attribute.Value
	onStart []map[attribute.Key]attribute.Value
	raw     [][]attribute.KeyValue // the sampler's Attributes, as given
}

func attrMap(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	out := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		out[kv.Key] = kv.Value
	}
	return out
}

func (s *startSpy) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.mu.Lock()
	s.sampled = append(s.sampled, attrMap(p.Attributes))
	s.raw = append(s.raw, p.Attributes)
	s.mu.Unlock()
	return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
}

func (s *startSpy) Description() string { return "startSpy" }

func (s *startSpy) OnStart(_ context.Context, span sdktrace.ReadWriteSpan) {
	s.mu.Lock()
	s.onStart = append(s.onStart, attrMap(span.Attributes()))
	s.mu.Unlock()
}

func (s *startSpy) OnEnd(sdktrace.ReadOnlySpan)      {}
func (s *startSpy) Shutdown(context.Context) error   { return nil }
func (s *startSpy) ForceFlush(context.Context) error { return nil }

// TestSamplerAndProcessorsSeeEveryAttribute checks that a sampler and a
// span processor's OnStart see every attribute of the span when it starts,
// the per-message ones included (message id, body size, delivery attempt,
// consumer name), so that a sampler may choose by consumer or sample
// redeliveries, with or without a parent from the headers.
func TestSamplerAndProcessorsSeeEveryAttribute(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	traced, _ := tracedMessage(context.Background(), pub)
	traced.Attempt = 3
	plain := &broker.Message{ID: "order-2", Topic: "refunds", Attempt: 1, Body: []byte("{}}")}

	spy := &startSpy{}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(spy), sdktrace.WithSpanProcessor(spy))
	defer tp.Shutdown(context.Background())
	wrapped := otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(tp), otelqueuekit.WithConsumerGroup("billing"))(
		consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	ctx := consumerContext(t, "billing-worker") // what a real consumer's handler gets
	for _, m := range []*broker.Message{traced, plain} {
		if err := wrapped.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if len(spy.sampled) != 2 || len(spy.onStart) != 2 {
		t.Fatalf("sampler asked %d times, OnStart called %d times; want 2 and 2", len(spy.sampled), len(spy.onStart))
	}
	for i, m := range []*broker.Message{traced, plain} {
		want := map[attribute.Key]attribute.Value{
			"messaging.system":              attribute.StringValue("kafka"),
			"messaging.operation.type":      attribute.StringValue("process"),
			"messaging.operation.name":      attribute.StringValue("process"),
			"messaging.consumer.group.name": attribute.StringValue("billing"),
			"messaging.destination.name":    attribute.StringValue(m.Topic),
			"messaging.message.id":          attribute.StringValue(m.ID),
			"messaging.message.body.size":   attribute.IntValue(len(m.Body)),
			"queuekit.delivery.attempt":     attribute.IntValue(m.Attempt),
			"queuekit.consumer.name":        attribute.StringValue("billing-worker"),
		}
		for who, got := range map[string]map[attribute.Key]attribute.Value{"sampler": spy.sampled[i], "OnStart": spy.onStart[i]} {
			for k, v := range want {
				if got[k] != v {
					t.Errorf("message %s: %s saw %s = %q; want %q", m.ID, who, k, got[k].Emit(), v.Emit())
				}
			}
			if len(got) != len(want) {
				t.Errorf("message %s: %s saw %d attributes; want %d", m.ID, who, len(got), len(want))
			}
		}
		// What the sampler was given is its own to keep: the buffers the
		// middleware builds start options in and reuses are not it.
		if kept := attrMap(spy.raw[i]); !maps.Equal(kept, want) {
			t.Errorf("message %s: the attributes the sampler kept changed after Start to %v", m.ID, kept)
		}
	}
}

// TestSpansPerTopic checks that span names and destinations follow each
// message's topic when the topics of consecutive messages differ.
func TestSpansPerTopic(t *testing.T) {
	tp, sr := newProvider()
	defer tp.Shutdown(context.Background())
	wrapped := otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(tp))(
		consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	topics := []string{"orders", "refunds", "orders", "", "refunds"}
	for i, topic := range topics {
		if err := wrapped.Handle(context.Background(), &broker.Message{ID: fmt.Sprint(i), Topic: topic}); err != nil {
			t.Fatal(err)
		}
	}
	spans := sr.Ended()
	if len(spans) != len(topics) {
		t.Fatalf("%d spans; want %d", len(spans), len(topics))
	}
	for i, s := range spans {
		wantName := "process " + topics[i]
		if topics[i] == "" {
			wantName = "process"
		}
		a := attrs(s)
		if s.Name() != wantName || a["messaging.destination.name"].AsString() != topics[i] || a["messaging.message.id"].AsString() != fmt.Sprint(i) {
			t.Errorf("span %d: name %q, destination %q, id %q; want %q, %q, %q", i, s.Name(),
				a["messaging.destination.name"].AsString(), a["messaging.message.id"].AsString(), wantName, topics[i], fmt.Sprint(i))
		}
	}
}

// TestAlternatingTopicsCostNoMore checks that a handler (or several
// sharing one Tracing) serving messages of several topics in turn
// allocates no more per message than one serving a single topic, and that
// past the topics kept (more than 64) spans are still named and attributed
// by their own topic.
func TestAlternatingTopicsCostNoMore(t *testing.T) {
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	defer never.Shutdown(context.Background())
	nop := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	mw := otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(never))
	one, other := mw(nop), mw(nop)
	ctx := context.Background()
	orders := &broker.Message{ID: "1", Topic: "orders", Attempt: 1, Body: []byte("{}")}
	refunds := &broker.Message{ID: "2", Topic: "refunds", Attempt: 1, Body: []byte("{}")}
	single := testing.AllocsPerRun(1000, func() { _ = one.Handle(ctx, orders) })
	i := 0
	alternating := testing.AllocsPerRun(1000, func() {
		h, m := one, orders
		if i%2 == 1 {
			m = refunds
		}
		if i%4 >= 2 {
			h = other
		}
		i++
		_ = h.Handle(ctx, m)
	})
	t.Logf("never-sampling SDK: %v allocs per message for one topic, %v for two in turn", single, alternating)
	if alternating > single {
		t.Errorf("two topics in turn: %v allocs per message; want at most the %v of one topic", alternating, single)
	}

	tp, sr := newProvider()
	defer tp.Shutdown(context.Background())
	many := otelqueuekit.Tracing("kafka", otelqueuekit.WithTracerProvider(tp))(nop)
	const topics = 100
	for round := range 2 {
		for i := range topics {
			if err := many.Handle(ctx, &broker.Message{ID: fmt.Sprint(round, i), Topic: fmt.Sprint("t", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	spans := sr.Ended()
	if len(spans) != 2*topics {
		t.Fatalf("%d spans; want %d", len(spans), 2*topics)
	}
	for i, s := range spans {
		topic := fmt.Sprint("t", i%topics)
		if s.Name() != "process "+topic || attrs(s)["messaging.destination.name"].AsString() != topic {
			t.Errorf("span %d: name %q, destination %q; want topic %q", i, s.Name(), attrs(s)["messaging.destination.name"].AsString(), topic)
		}
	}
}

// headerPropagator extracts a span context from the header "x-trace" (a
// traceparent under another name), to check that a propagator other than
// the default is always asked to extract.
type headerPropagator struct{}

func (headerPropagator) Inject(ctx context.Context, c propagation.TextMapCarrier) {
	tmp := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, tmp)
	if v := tmp.Get("traceparent"); v != "" {
		c.Set("x-trace", v)
	}
}

func (headerPropagator) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": c.Get("x-trace")})
}

func (headerPropagator) Fields() []string { return []string{"x-trace"} }

func TestOtherPropagatorIsAlwaysAsked(t *testing.T) {
	pub, _ := newProvider()
	defer pub.Shutdown(context.Background())
	pctx, span := pub.Tracer("publisher").Start(context.Background(), "send")
	span.End()
	m := &broker.Message{ID: "x", Topic: "orders", Header: otelqueuekit.Inject(pctx, nil, otelqueuekit.WithPropagator(headerPropagator{}))}
	if _, ok := m.Header["traceparent"]; ok || m.Header["x-trace"] == "" {
		t.Fatalf("headers = %v; want x-trace only", m.Header)
	}
	for _, tp := range []trace.TracerProvider{noop.NewTracerProvider(), pub} {
		var got trace.SpanContext
		wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(tp), otelqueuekit.WithPropagator(headerPropagator{}), otelqueuekit.PropagateWithoutTracing())(
			consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
				got = trace.SpanContextFromContext(ctx)
				return nil
			}))
		if err := wrapped.Handle(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		if got.TraceID() != span.SpanContext().TraceID() {
			t.Errorf("%T: handler's trace %s; want the publisher's %s", tp, got.TraceID(), span.SpanContext().TraceID())
		}
	}
}

// TestNoopCostFigures logs what tracing with the no-op provider costs per
// message next to a bare handler (ns/op from testing.Benchmark with
// QUEUEKIT_FULL=1, and without the race detector for figures that mean
// anything), and asserts that it allocates nothing.
func TestNoopCostFigures(t *testing.T) {
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	wrapped := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(noop.NewTracerProvider()))(h)
	m := &broker.Message{ID: "orders-1", Topic: "orders", Attempt: 1, Body: []byte("{}"), Header: map[string]string{"content-type": "application/json"}}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() { _ = wrapped.Handle(ctx, m) })
	t.Logf("no-op provider: %v allocs per message", allocs)
	if allocs != 0 {
		t.Errorf("no-op provider: %v allocs per message; want 0", allocs)
	}
	if os.Getenv("QUEUEKIT_FULL") != "1" || testing.Short() {
		return
	}
	bench := func(h consumer.Handler) testing.BenchmarkResult {
		return testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = h.Handle(ctx, m)
			}
		})
	}
	for round := range 3 { // interleaved rounds
		bare, noopRes := bench(h), bench(wrapped)
		t.Logf("round %d: bare %d ns/op %d allocs/op; no-op provider %d ns/op %d allocs/op (%+d ns over bare)",
			round+1, bare.NsPerOp(), bare.AllocsPerOp(), noopRes.NsPerOp(), noopRes.AllocsPerOp(), noopRes.NsPerOp()-bare.NsPerOp())
		if noopRes.AllocsPerOp() != 0 {
			t.Errorf("no-op provider: %d allocs/op; want 0", noopRes.AllocsPerOp())
		}
	}
}

// BenchmarkOTel measures the per-message cost of the tracing middleware
// next to a bare handler, in one run, each handler called with the context
// a consumer named "billing" gives its handler (from a real run on
// broker/memory, so that queuekit.consumer.name is found as in production):
// "bare" is the handler alone; "noop" is the no-op provider with a message
// carrying no trace context (tracing off everywhere: the path that must cost
// nothing); "noop-deprecated" the same with trace.NewNoopTracerProvider;
// "noop-remote-parent" is the no-op provider with a traceparent header (a
// pass-through: nothing is extracted); "noop-outer-span" the no-op provider
// called inside a recording span (passed on as it is); the "-propagate"
// variants the same with PropagateWithoutTracing (the remote span context is
// extracted into the handler's context; the outer span is handed on as a
// non-recording copy); "global-unset" the default
// provider (otel.GetTracerProvider) when no program sets one, with a message
// carrying no trace context; "sdk-never-sample" an SDK provider whose
// sampler drops every span; "sdk-always-sample" an SDK provider recording
// every span into a no-op processor; the "-2topics" variants alternate
// messages of two topics through the same handler. Each sub-benchmark after
// bare reports ns-over-bare and x-bare against the bare figure of the same
// run.
func BenchmarkOTel(b *testing.B) {
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	ctx := consumerContext(b, "billing")
	pub := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(nopProcessor{}))
	defer pub.Shutdown(ctx)
	pctx, span := pub.Tracer("p").Start(ctx, "send")
	header := otelqueuekit.Inject(pctx, map[string]string{"content-type": "application/json"})
	traced := &broker.Message{ID: "orders-1", Topic: "orders", Attempt: 1, Body: []byte("{}"), Header: header}
	tracedRefund := &broker.Message{ID: "refunds-1", Topic: "refunds", Attempt: 1, Body: []byte("{}"), Header: header}
	plain := &broker.Message{ID: "orders-1", Topic: "orders", Attempt: 1, Body: []byte("{}"),
		Header: map[string]string{"content-type": "application/json"}}
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()), sdktrace.WithSpanProcessor(nopProcessor{}))
	defer never.Shutdown(ctx)
	always := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(nopProcessor{}))
	defer always.Shutdown(ctx)

	var bare float64 // ns/op of the bare handler in this run
	run := func(name string, handler consumer.Handler, ctx context.Context, ms ...*broker.Message) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_ = handler.Handle(ctx, ms[i%len(ms)])
				i++
			}
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			if name == "bare" {
				bare = ns
				return
			}
			if bare > 0 {
				b.ReportMetric(ns-bare, "ns-over-bare")
				b.ReportMetric(ns/bare, "x-bare")
			}
		})
	}
	tracing := func(tp trace.TracerProvider) consumer.Handler {
		return otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(tp))(h)
	}
	run("bare", h, ctx, plain)
	run("noop", tracing(noop.NewTracerProvider()), ctx, plain)
	run("noop-deprecated", tracing(trace.NewNoopTracerProvider()), ctx, plain) //nolint:staticcheck // the deprecated provider is measured on purpose
	run("noop-remote-parent", tracing(noop.NewTracerProvider()), ctx, traced)
	run("noop-outer-span", tracing(noop.NewTracerProvider()), pctx, plain)
	propagating := otelqueuekit.Tracing("memory", otelqueuekit.WithTracerProvider(noop.NewTracerProvider()), otelqueuekit.PropagateWithoutTracing())(h)
	run("noop-remote-parent-propagate", propagating, ctx, traced)
	run("noop-outer-span-propagate", propagating, pctx, plain)
	run("global-unset", otelqueuekit.Tracing("memory")(h), ctx, plain)
	run("sdk-never-sample", tracing(never), ctx, traced)
	run("sdk-always-sample", tracing(always), ctx, traced)
	run("sdk-never-sample-2topics", tracing(never), ctx, traced, tracedRefund)
	run("sdk-always-sample-2topics", tracing(always), ctx, traced, tracedRefund)
	span.End()
}

// consumerContext returns the context that the handler of a consumer named
// name gets, from a real run on broker/memory (its values, such as the
// consumer's name, are what the benchmarks need; it may be cancelled).
func consumerContext(tb testing.TB, name string) context.Context {
	tb.Helper()
	b := memory.NewBroker()
	defer b.Close()
	if err := b.Publish(context.Background(), "orders", &broker.Message{Body: []byte("{}")}); err != nil {
		tb.Fatal(err)
	}
	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got context.Context
	h := consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
		got = ctx
		cancel()
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithName(name), consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.Run(runCtx); err != nil {
		tb.Fatal(err)
	}
	if n, ok := consumer.NameFromContext(got); !ok || n != name {
		tb.Fatalf("handler's context names consumer %q, %v; want %q", n, ok, name)
	}
	return got
}

type nopProcessor struct{}

func (nopProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (nopProcessor) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (nopProcessor) Shutdown(context.Context) error                  { return nil }
func (nopProcessor) ForceFlush(context.Context) error                { return nil }
