package correlation_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware/correlation"
)

func TestMiddlewareCarriesTheHeaderOrMakesAnID(t *testing.T) {
	var got []string
	h := correlation.Middleware("")(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		got = append(got, correlation.ID(ctx))
		return nil
	}))
	ctx := context.Background()
	_ = h.Handle(ctx, &broker.Message{Header: map[string]string{correlation.Header: "req-42"}})
	_ = h.Handle(ctx, &broker.Message{})
	_ = h.Handle(ctx, &broker.Message{})
	if got[0] != "req-42" {
		t.Errorf("ID with header = %q; want req-42", got[0])
	}
	if got[1] == "" || got[2] == "" || got[1] == got[2] {
		t.Errorf("IDs without header = %q, %q; want two different non-empty ids", got[1], got[2])
	}
}

func TestInject(t *testing.T) {
	if h := correlation.Inject(context.Background(), nil); h != nil {
		t.Errorf("Inject without an id = %v; want nil", h)
	}
	h := correlation.Inject(correlation.WithID(context.Background(), "req-1"), nil)
	if h[correlation.Header] != "req-1" {
		t.Errorf("Inject = %v; want %s=req-1", h, correlation.Header)
	}
}

// A handler passes the correlation id of the message it handles on to the
// message it publishes.
func Example() {
	var out broker.Message
	h := correlation.Middleware("")(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		out.Header = correlation.Inject(ctx, out.Header)
		return nil
	}))
	_ = h.Handle(context.Background(), &broker.Message{Header: map[string]string{"x-correlation-id": "req-42"}})
	fmt.Println(out.Header["x-correlation-id"])
	// Output: req-42
}
