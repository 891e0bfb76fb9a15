package otelqueuekit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
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

// BenchmarkOTel measures the per-message cost of the tracing middleware
// next to a bare handler, in one run: "bare" is the handler alone; "noop" is
// the no-op provider with a message carrying no trace context (tracing off
// everywhere: the path that must cost nothing); "noop-remote-parent" is the
// no-op provider with a traceparent header (the remote span context is still
// extracted into the handler's context); "global-unset" the default
// provider (otel.GetTracerProvider) when no program sets one, with a message
// carrying no trace context; "sdk-never-sample" an SDK provider
// whose sampler drops every span; "sdk-always-sample" an SDK provider
// recording every span into a no-op processor. Each sub-benchmark after bare
// reports ns-over-bare and x-bare against the bare figure of the same run.
func BenchmarkOTel(b *testing.B) {
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	ctx := context.Background()
	pub := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(nopProcessor{}))
	defer pub.Shutdown(ctx)
	pctx, span := pub.Tracer("p").Start(ctx, "send")
	traced := &broker.Message{ID: "orders-1", Topic: "orders", Attempt: 1, Body: []byte("{}"),
		Header: otelqueuekit.Inject(pctx, map[string]string{"content-type": "application/json"})}
	span.End()
	plain := &broker.Message{ID: "orders-1", Topic: "orders", Attempt: 1, Body: []byte("{}"),
		Header: map[string]string{"content-type": "application/json"}}
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()), sdktrace.WithSpanProcessor(nopProcessor{}))
	defer never.Shutdown(ctx)
	always := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(nopProcessor{}))
	defer always.Shutdown(ctx)

	var bare float64 // ns/op of the bare handler in this run
	run := func(name string, handler consumer.Handler, m *broker.Message) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = handler.Handle(ctx, m)
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
	run("bare", h, plain)
	run("noop", tracing(noop.NewTracerProvider()), plain)
	run("noop-remote-parent", tracing(noop.NewTracerProvider()), traced)
	run("global-unset", otelqueuekit.Tracing("memory")(h), plain)
	run("sdk-never-sample", tracing(never), traced)
	run("sdk-always-sample", tracing(always), traced)
}

type nopProcessor struct{}

func (nopProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (nopProcessor) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (nopProcessor) Shutdown(context.Context) error                  { return nil }
func (nopProcessor) ForceFlush(context.Context) error                { return nil }
