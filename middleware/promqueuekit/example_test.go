package promqueuekit_test

import (
	"context"
	"fmt"
	"log/slog"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/promqueuekit"
)

// One Recorder per program, one line per consumer: rec.Options() adds the
// metrics middleware, the settlement observer and the event hook, and the
// series carry the name the Supervisor gives the consumer.
func ExampleRecorder_Options() {
	reg := prom.NewRegistry() // in a program: prometheus.DefaultRegisterer, served by promhttp
	rec, err := promqueuekit.New(reg)
	if err != nil {
		fmt.Println(err)
		return
	}

	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	for _, body := range []string{"ok", "ok", "bad"} {
		_ = mb.Publish(ctx, "orders", &broker.Message{Body: []byte(body)})
	}
	src, _ := mb.Source("orders", memory.SourceConfig{Prefetch: 1})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Body) == "bad" {
			defer cancel() // the last message: stop
			return fmt.Errorf("bad order")
		}
		return nil
	})
	c, err := consumer.New(src, middleware.Recover()(h),
		append(rec.Options(), consumer.WithMaxDeliveries(1), consumer.WithLogger(slog.New(slog.DiscardHandler)))...)
	if err != nil {
		fmt.Println(err)
		return
	}
	sup := &consumer.Supervisor{Logger: slog.New(slog.DiscardHandler)}
	_ = sup.Add("orders", c)
	_ = sup.Run(ctx)

	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "queuekit_messages_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				fmt.Printf("%s %s=%s %s=%s %v\n", mf.GetName(),
					m.GetLabel()[0].GetName(), m.GetLabel()[0].GetValue(),
					m.GetLabel()[1].GetName(), m.GetLabel()[1].GetValue(), v)
			}
		}
	}
	// Output:
	// queuekit_messages_handled_total consumer=orders outcome=ack 2
	// queuekit_messages_handled_total consumer=orders outcome=dead-letter 1
}
