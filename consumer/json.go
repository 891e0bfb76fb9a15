package consumer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/queuekit/queuekit/retry"
)

// JSON returns a Handler that decodes each message body as JSON into a T and
// calls f with it. A body that does not decode is a permanent error: the
// message is dead-lettered on its first delivery with the decode error as the
// reason, and f is not called.
func JSON[T any](f func(ctx context.Context, m *Message, v T) error) Handler {
	return HandlerFunc(func(ctx context.Context, m *Message) error {
		var v T
		if err := json.Unmarshal(m.Body, &v); err != nil {
			return retry.Permanent(fmt.Errorf("queuekit: decode JSON body of message %s into %T: %w", m.ID, v, err))
		}
		return f(ctx, m, v)
	})
}
