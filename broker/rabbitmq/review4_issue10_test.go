package rabbitmq

import (
	"errors"
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// TestPublishRefusesShapesAMQP091CannotRead (issue 10, review round 4, R1):
// amqp091's reader refuses a field table or array of more than 8192
// elements, or nested deeper than 32, and closes the connection; a Source
// then loops on such a message forever. The Publisher must refuse it.
func TestPublishRefusesShapesAMQP091CannotRead(t *testing.T) {
	deep := amqp.Table{"leaf": "x"}
	for range 40 {
		deep = amqp.Table{"d": deep}
	}
	arr := make([]any, maxContainerElements+1)
	for i := range arr {
		arr[i] = int8(1)
	}
	nested := amqp.Table{}
	for i := range maxContainerElements + 1 {
		nested[fmt.Sprintf("n%05d", i)] = int8(1)
	}
	top := amqp.Table{}
	for i := range maxContainerElements + 1 {
		top[fmt.Sprintf("h%05d", i)] = "v"
	}
	for name, h := range map[string]amqp.Table{
		"a table nested 41 deep":         {"d": deep},
		"an array of 8193 elements":      {"a": arr},
		"a nested table of 8193 entries": {"t": nested},
		"an array in an array 41 deep":   {"a": nestArray(41)},
		"8193 headers":                   top,
	} {
		t.Run(name, func(t *testing.T) {
			m := amqp.Publishing{Headers: h}
			err := checkPublish("", "q", &m)
			if err == nil && !fits(&m, true, 1<<30) {
				err = tooLarge(&m, true, 1<<30)
			}
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Fatalf("checkPublish and fits accept it (err %v); want an error wrapping broker.ErrInvalidConfig", err)
			}
		})
	}
	// What amqp091 reads is accepted.
	ok := amqp.Table{"d": nestTable(30), "a": make([]any, 8000)}
	if err := checkPublish("", "q", &amqp.Publishing{Headers: ok}); err != nil {
		t.Fatalf("checkPublish(readable shapes) = %v; want nil", err)
	}
}

func nestTable(n int) amqp.Table {
	t := amqp.Table{"leaf": "x"}
	for range n - 1 {
		t = amqp.Table{"d": t}
	}
	return t
}

func nestArray(n int) []any {
	a := []any{"x"}
	for range n - 1 {
		a = []any{a}
	}
	return a
}
