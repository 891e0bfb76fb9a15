package consumer_test

// Fuzz target for consumer.JSON, which decodes message bodies that come from
// any producer (issue 9 item 14). The seeds (f.Add and testdata/fuzz/) run as
// ordinary tests; fuzz with
//
//	go test -run '^$' -fuzz '^FuzzJSON$' -fuzztime 5m -parallel 1 ./consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

type fuzzItem struct {
	Name  string            `json:"name"`
	Count int               `json:"count"`
	Tags  []string          `json:"tags"`
	Attrs map[string]any    `json:"attrs"`
	Next  *fuzzItem         `json:"next"`
	Raw   json.RawMessage   `json:"raw"`
	Flags map[string]bool   `json:"flags"`
	Pairs map[string][2]int `json:"pairs"`
}

// isNull reports whether body is the JSON null, with JSON's whitespace only.
func isNull(body []byte) bool {
	return string(bytes.Trim(body, " \t\r\n")) == "null"
}

// checkJSON runs consumer.JSON[T] on body and checks its contract: the typed
// function is called with what encoding/json decodes, or not at all and the
// handler returns a permanent error; a body encoding/json accepts is not
// refused (except null without AllowNull, and, with DisallowUnknownFields,
// unknown fields or data after the value); null reaches the function only
// with AllowNull; and a decoded value re-encodes to a body that decodes to
// the same value.
func checkJSON[T any](t *testing.T, body []byte, allowNull, strict bool) {
	t.Helper()
	var opts []consumer.JSONOption
	if allowNull {
		opts = append(opts, consumer.AllowNull())
	}
	if strict {
		opts = append(opts, consumer.DisallowUnknownFields())
	}
	var (
		called bool
		got    T
	)
	h := consumer.JSON(func(ctx context.Context, m *broker.Message, v T) error {
		called, got = true, v
		return nil
	}, opts...)
	err := h.Handle(context.Background(), &broker.Message{ID: "m-1", Body: body})

	var ref T
	refErr := json.Unmarshal(body, &ref)
	name := reflect.TypeFor[T]().String()
	switch {
	case called && err != nil:
		t.Fatalf("JSON[%s](%q): typed function called, then error %v", name, body, err)
	case !called && err == nil:
		t.Fatalf("JSON[%s](%q): nil error without calling the typed function", name, body)
	case !called && !retry.IsPermanent(err):
		t.Fatalf("JSON[%s](%q) = %v; want a permanent error (retrying cannot fix a body)", name, body, err)
	case !called && errors.Is(err, context.Canceled):
		t.Fatalf("JSON[%s](%q) = %v; a decode error must not look like a cancellation", name, body, err)
	}
	if !called {
		if refErr == nil && !strict && (!isNull(body) || allowNull) {
			t.Fatalf("JSON[%s](%q) = %v; encoding/json decodes it", name, body, err)
		}
		return
	}
	if refErr != nil {
		t.Fatalf("JSON[%s](%q) called the typed function with %#v; encoding/json refuses it: %v", name, body, got, refErr)
	}
	if !reflect.DeepEqual(got, ref) {
		t.Fatalf("JSON[%s](%q) decoded %#v; encoding/json decodes %#v", name, body, got, ref)
	}
	if isNull(body) {
		if !allowNull {
			t.Fatalf("JSON[%s](%q) handed null to the typed function as %#v without AllowNull", name, body, got)
		}
		// The zero T, as documented, except for a T that decodes null itself
		// (json.RawMessage keeps the text "null"), as AllowNull says.
		var zero T
		_, own := any(&zero).(json.Unmarshaler)
		if !own && !reflect.DeepEqual(got, zero) {
			t.Fatalf("JSON[%s](null) with AllowNull = %#v; want the zero value", name, got)
		}
		return
	}
	// Round trip: what was decoded, encoded again, decodes to the same.
	again, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("JSON[%s](%q) decoded %#v, which does not encode: %v", name, body, got, err)
	}
	if isNull(again) {
		return // a nil map or slice from a non-null body, e.g. [] into a nil-able field: nothing to compare
	}
	// Compared by their encodings: encoding/json's own round trip is not
	// the identity on values (a nil json.RawMessage comes back as "null").
	called = false
	first := got
	if err := h.Handle(context.Background(), &broker.Message{ID: "m-2", Body: again}); err != nil || !called {
		t.Fatalf("JSON[%s]: %q decoded to %#v, re-encoded as %q, which it refuses: %v", name, body, first, again, err)
	}
	if third, err := json.Marshal(got); err != nil || !bytes.Equal(third, again) {
		t.Fatalf("JSON[%s]: %q decoded to %#v, re-encoded as %q, decoded to %#v, encoded as %q (%v)", name, body, first, again, got, third, err)
	}
}

func FuzzJSON(f *testing.F) {
	for _, body := range []string{
		`{"name":"a","count":2}`,
		` {"name":"a"} ` + "\n",
		`{"name":"a","extra":1}`,
		`{"name":"a"} {}`,
		`{"name":"a"}]`,
		`{"name":"a"}}`,
		`{"name":"a"},`,
		`{"name":"a"} x`,
		``,
		" \t\r\n",
		"\u00a0null",
		"\vnull",
		`null`,
		` null `,
		`null null`,
		`{"next":null,"tags":null,"attrs":{"x":null}}`,
		`{"next":{"next":{"name":"deep"}}}`,
		`{"name":1}`,
		`{"name":`,
		`{"count":1e3}`,
		`{"count":99999999999999999999}`,
		`{"NAME":"case","Count":1}`,
		`{"name":"\ud800"}`,
		"{\"name\":\"\xff\"}",
		`{"raw":[1,2,{"a":null}]}`,
		`{"pairs":{"a":[1,2,3]}}`,
		`[1,2,3]`,
		`"just a string"`,
		`1.5`,
		`-0`,
		`true`,
		`{"flags":{"a":true}}`,
		"\xef\xbb\xbf{}",
		`{"name":"a","name":"b"}`,
		`[]`,
		`{}`,
	} {
		for opts := range uint8(4) {
			f.Add([]byte(body), opts)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, opts uint8) {
		allowNull, strict := opts&1 != 0, opts&2 != 0
		checkJSON[fuzzItem](t, body, allowNull, strict)
		checkJSON[*fuzzItem](t, body, allowNull, strict)
		checkJSON[map[string]any](t, body, allowNull, strict)
		checkJSON[[]int](t, body, allowNull, strict)
		checkJSON[any](t, body, allowNull, strict)
		checkJSON[float64](t, body, allowNull, strict)
		checkJSON[*string](t, body, allowNull, strict)
		checkJSON[json.RawMessage](t, body, allowNull, strict)
	})
}
