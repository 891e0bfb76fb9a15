package rabbitmq

import (
	"math"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Issue 9 item 14, fuzz finding F1: delivery-count headers are set by any
// producer; forged or huge counts made Message.Attempt 0, negative or wrap.
func TestIssue9AttemptFromForgedHeadersIsAtLeastOneAndSaturates(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    amqp.Table
		red  bool
		want int
	}{
		{"negative x-delivery-count", amqp.Table{"x-delivery-count": int8(-1)}, false, 1},
		{"negative x-delivery-count redelivered", amqp.Table{"x-delivery-count": int16(-18432)}, true, 1},
		{"own header at the int64 limit", amqp.Table{HeaderDeliveries: int64(math.MaxInt64)}, false, math.MaxInt32},
		{"x-delivery-count at the uint64 limit", amqp.Table{"x-delivery-count": uint64(math.MaxUint64)}, false, math.MaxInt32},
		{"x-death counts that sum past int64", amqp.Table{"x-death": []any{amqp.Table{"count": int64(math.MaxInt64)}, amqp.Table{"count": int64(math.MaxInt64)}}}, false, math.MaxInt32},
		{"negative x-death count", amqp.Table{"x-death": []any{amqp.Table{"count": int64(-5)}}}, false, 1},
		{"ordinary quorum redelivery", amqp.Table{"x-delivery-count": int64(2)}, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := attempt(&amqp.Delivery{Headers: tc.h, Redelivered: tc.red}); got != tc.want {
				t.Fatalf("attempt(%v, redelivered %v) = %d; want %d", tc.h, tc.red, got, tc.want)
			}
		})
	}
}
