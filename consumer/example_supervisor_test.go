package consumer_test

import (
	"context"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// Add names a consumer once for everything: a consumer added as "orders"
// is "orders" in its handler's context (which metrics middleware reads), in
// its logs, in every event and in Health. Each consumer drains within its
// own drain timeout when the Supervisor's context ends.
func ExampleSupervisor_Add() {
	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	_ = mb.Publish(ctx, "orders", &broker.Message{ID: "order-1", Body: []byte("{}")})

	var events []string
	sup := &consumer.Supervisor{Logger: exampleLogger, OnEvent: func(e consumer.Event) {
		switch e.Kind {
		case consumer.EventStarting, consumer.EventRunning, consumer.EventDrained, consumer.EventStopped:
			events = append(events, e.Runner+" "+e.Kind.String())
		}
	}}
	src, _ := mb.Source("orders", memory.SourceConfig{Prefetch: 1})
	c, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		name, _ := consumer.NameFromContext(ctx)
		fmt.Println(name, "handles", m.ID)
		cancel() // stop the Supervisor: the consumer drains, then stops
		return nil
	}),
		consumer.WithDrainTimeout(10*time.Second), // the one drain budget: below the platform's grace period
		consumer.WithLogger(exampleLogger),
	)
	if err := sup.Add("orders", c); err != nil {
		fmt.Println(err)
		return
	}

	err := sup.Run(ctx) // delivers every queued event before it returns
	fmt.Println("Run:", err)
	for _, e := range events {
		fmt.Println(e)
	}
	fmt.Println("health:", sup.Health().Runners[0].Name, sup.Health().Runners[0].State)
	// Output:
	// orders handles order-1
	// Run: <nil>
	// orders starting
	// orders running
	// orders drained
	// orders stopped
	// health: orders stopped
}
