package otelqueuekit_test

import (
	"context"
	"fmt"
	"log/slog"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/otelqueuekit"
)

// Options traces every handler call of a consumer, in one line; the span is
// a child of the publisher's, whose trace context Inject put in the headers.
func ExampleOptions() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)) // in a program: an exporter's
	defer tp.Shutdown(context.Background())

	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	pctx, send := tp.Tracer("publisher").Start(ctx, "send orders")
	m := &broker.Message{ID: "order-1", Body: []byte("{}")}
	m.Header = otelqueuekit.Inject(pctx, m.Header)
	_ = mb.Publish(pctx, "orders", m)
	send.End()

	src, _ := mb.Source("orders", memory.SourceConfig{Prefetch: 1})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		cancel() // one message is enough
		return nil
	})
	c, _ := consumer.New(src, middleware.Recover()(h),
		append(otelqueuekit.Options("memory", otelqueuekit.WithTracerProvider(tp)), consumer.WithLogger(slog.New(slog.DiscardHandler)))...)
	sup := &consumer.Supervisor{Logger: slog.New(slog.DiscardHandler)}
	_ = sup.Add("orders", c)
	_ = sup.Run(ctx)

	for _, s := range spans.Ended() {
		if s.Name() == "send orders" {
			continue
		}
		var name string
		for _, kv := range s.Attributes() {
			if kv.Key == otelqueuekit.AttributeConsumer {
				name = kv.Value.AsString()
			}
		}
		fmt.Println(s.Name(), "by", name, "in the publisher's trace:", s.SpanContext().TraceID() == send.SpanContext().TraceID())
	}
	// Output:
	// process orders by orders in the publisher's trace: true
}
