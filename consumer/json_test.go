package consumer_test

import (
	"context"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// What JSON decodes, and what it refuses as a permanent error without
// calling the typed function.
func TestJSONDecodeRules(t *testing.T) {
	type item struct {
		Name string `json:"name"`
	}
	for _, tc := range []struct {
		body   string
		strict bool
		want   string // "" when f must be called
	}{
		{body: `{"name":"a"}`},
		{body: ` {"name":"a"} ` + "\n"},
		{body: `{"name":"a","extra":1}`},
		{body: `{"name":"a","extra":1}`, strict: true, want: `unknown field "extra"`},
		{body: `{"name":"a"}`, strict: true},
		{body: `{"name":"a"} {}`, strict: true, want: "data after the JSON value"},
		{body: `{"name":"a"} {}`, want: "invalid character"},
		{body: ``, want: "empty body"},
		{body: "  \n", want: "empty body"},
		{body: `null`, want: "body is null"},
		{body: ` null `, strict: true, want: "body is null"},
		{body: `{"name":1}`, want: "cannot unmarshal number"},
		{body: `{"name":`, want: "unexpected end of JSON input"},
	} {
		var opts []consumer.JSONOption
		if tc.strict {
			opts = append(opts, consumer.DisallowUnknownFields())
		}
		called := false
		h := consumer.JSON(func(ctx context.Context, m *broker.Message, v item) error {
			called = true
			if v.Name != "a" {
				t.Errorf("body %q: decoded %+v", tc.body, v)
			}
			return nil
		}, opts...)
		err := h.Handle(context.Background(), &broker.Message{ID: "m-1", Body: []byte(tc.body)})
		switch {
		case tc.want == "" && (err != nil || !called):
			t.Errorf("body %q (strict %v): err %v, called %v; want the typed function called", tc.body, tc.strict, err, called)
		case tc.want != "" && (called || err == nil || !retry.IsPermanent(err) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("body %q (strict %v): err %v, called %v; want a permanent error containing %q", tc.body, tc.strict, err, called, tc.want)
		}
	}
}

// AllowNull passes null through as the zero T; a nil option is ignored.
func TestJSONAllowNullAndNilOption(t *testing.T) {
	var got *struct{ N int }
	called := false
	h := consumer.JSON(func(ctx context.Context, m *broker.Message, v *struct{ N int }) error {
		called, got = true, v
		return nil
	}, nil, consumer.AllowNull())
	if err := h.Handle(context.Background(), &broker.Message{Body: []byte(" null ")}); err != nil || !called || got != nil {
		t.Errorf("null with AllowNull: err %v, called %v, v %v; want f called with nil", err, called, got)
	}
	if err := h.Handle(context.Background(), &broker.Message{Body: []byte("")}); !retry.IsPermanent(err) {
		t.Errorf("empty body with AllowNull: %v; want a permanent error still", err)
	}
}

// A pointer T never receives nil from a null body.
func TestJSONNeverHandsANilPointer(t *testing.T) {
	h := consumer.JSON(func(ctx context.Context, m *broker.Message, v *struct{ N int }) error {
		_ = v.N // would panic on nil
		return nil
	})
	if err := h.Handle(context.Background(), &broker.Message{Body: []byte("null")}); !retry.IsPermanent(err) {
		t.Errorf("null into *T: %v; want a permanent error", err)
	}
}
