package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/retry"
)

// JSON returns a Handler that decodes each message body as JSON into a T and
// calls f with it. A body that does not decode is a permanent error: the
// message is dead-lettered on its first delivery with the decode error as the
// reason, and f is not called. An empty body does not decode, and neither,
// unless AllowNull is given, does the JSON null: it would hand f a zero T (or
// a nil pointer), which is almost always a producer's bug rather than a
// message.
//
// By default fields of the body that T does not have are ignored, as
// encoding/json does; DisallowUnknownFields makes them a decode error.
func JSON[T any](f func(ctx context.Context, m *broker.Message, v T) error, opts ...JSONOption) Handler {
	var o jsonOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		var v T
		if err := decodeJSON(m.Body, &v, o); err != nil {
			return retry.Permanent(fmt.Errorf("queuekit: decode JSON body of message %s into %T: %w", m.ID, v, err))
		}
		return f(ctx, m, v)
	})
}

// A JSONOption configures JSON.
type JSONOption func(*jsonOptions)

type jsonOptions struct {
	disallowUnknownFields bool
	allowNull             bool
}

// AllowNull makes JSON pass a body that is the JSON null to f, for types
// where null means something, decoded as encoding/json decodes null into a T:
// the zero value (a nil pointer, map, slice or interface) unless T has an
// UnmarshalJSON method of its own, which decides (json.RawMessage keeps the
// text null).
func AllowNull() JSONOption {
	return func(o *jsonOptions) { o.allowNull = true }
}

// DisallowUnknownFields makes JSON treat a body with a field that T does not
// have as undecodable (a permanent error), as json.Decoder's method of the
// same name does. Use it when producers and consumers share the type and an
// unknown field means a message for another version.
func DisallowUnknownFields() JSONOption {
	return func(o *jsonOptions) { o.disallowUnknownFields = true }
}

var (
	errEmptyBody = errors.New("empty body")
	errNullBody  = errors.New("body is null")
)

func decodeJSON(body []byte, v any, o jsonOptions) (err error) {
	// A type's own UnmarshalJSON may panic on input it did not expect: that
	// is a body that does not decode (permanent), not a handler failure to
	// retry.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("decoder panicked: %v", p)
		}
	}()
	switch trimmed := bytes.TrimSpace(body); {
	case len(trimmed) == 0:
		return errEmptyBody
	case string(trimmed) == "null" && !o.allowNull:
		return errNullBody
	}
	if !o.disallowUnknownFields {
		return json.Unmarshal(body, v)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}
