package broker_test

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
)

func TestParseReason(t *testing.T) {
	at := time.Date(2026, 12, 5, 18, 0, 0, 123456789, time.UTC)
	full := broker.Reason{Err: "boom", Attempts: 3, Source: "orders", Permanent: true, Time: at}
	for _, c := range []struct {
		name   string
		h      map[string]string
		want   broker.Reason
		wantOK bool
	}{
		{"nil headers", nil, broker.Reason{}, false},
		{"no reason headers", map[string]string{"x-other": "1"}, broker.Reason{}, false},
		{"what Reason.Header writes", full.Header(map[string]string{"x-other": "1"}), full, true},
		{"only the error", map[string]string{broker.HeaderError: "e"}, broker.Reason{Err: "e"}, true},
		{"only the source", map[string]string{broker.HeaderSource: "q"}, broker.Reason{Source: "q"}, true},
		{"only the attempts", map[string]string{broker.HeaderAttempts: "2"}, broker.Reason{Attempts: 2}, true},
		{"an empty error", map[string]string{broker.HeaderError: ""}, broker.Reason{}, true},
		{"bad attempts, permanent and time are zero", map[string]string{
			broker.HeaderError: "e", broker.HeaderAttempts: "many", broker.HeaderPermanent: "maybe", broker.HeaderFailedAt: "yesterday",
		}, broker.Reason{Err: "e"}, true},
		{"a time without fraction", map[string]string{broker.HeaderError: "e", broker.HeaderFailedAt: "2026-12-05T18:00:00Z"},
			broker.Reason{Err: "e", Time: time.Date(2026, 12, 5, 18, 0, 0, 0, time.UTC)}, true},
	} {
		got, ok := broker.ParseReason(c.h)
		if ok != c.wantOK || got.Err != c.want.Err || got.Attempts != c.want.Attempts || got.Source != c.want.Source ||
			got.Permanent != c.want.Permanent || !got.Time.Equal(c.want.Time) {
			t.Errorf("%s: ParseReason(%v) = %+v, %v; want %+v, %v", c.name, c.h, got, ok, c.want, c.wantOK)
		}
	}
}

func TestRedriveHeader(t *testing.T) {
	now := time.Date(2026, 12, 5, 18, 0, 0, 5, time.FixedZone("CET", 3600))
	reason := broker.Reason{Err: "boom", Attempts: 3, Source: "orders", Permanent: true, Time: now}
	for _, c := range []struct {
		name     string
		h        map[string]string
		redriven string
	}{
		{"a first redrive", reason.Header(map[string]string{"x-app": "a", broker.HeaderContentType: "application/json"}), "1"},
		{"a second redrive", reason.Header(map[string]string{"x-app": "a", broker.HeaderRedriven: "1", broker.HeaderRedrivenFrom: "old"}), "2"},
		{"an invalid count", reason.Header(map[string]string{"x-app": "a", broker.HeaderRedriven: "x"}), "1"},
		{"a negative count", reason.Header(map[string]string{"x-app": "a", broker.HeaderRedriven: "-4"}), "1"},
		{"nil headers", nil, "1"},
	} {
		before := maps.Clone(c.h)
		got := broker.RedriveHeader(c.h, "q.dlq-7", now)
		if !maps.Equal(c.h, before) {
			t.Errorf("%s: RedriveHeader changed its argument to %v; want it unchanged %v", c.name, c.h, before)
		}
		for _, k := range []string{broker.HeaderError, broker.HeaderAttempts, broker.HeaderSource, broker.HeaderPermanent, broker.HeaderFailedAt} {
			if v, ok := got[k]; ok {
				t.Errorf("%s: RedriveHeader kept %s = %q; want the reason headers removed", c.name, k, v)
			}
		}
		if got[broker.HeaderRedriven] != c.redriven || got[broker.HeaderRedrivenFrom] != "q.dlq-7" ||
			got[broker.HeaderRedrivenAt] != "2026-12-05T17:00:00.000000005Z" {
			t.Errorf("%s: RedriveHeader = %v; want redriven %s, from q.dlq-7, at 2026-12-05T17:00:00.000000005Z (UTC)", c.name, got, c.redriven)
		}
		for k, v := range before {
			if strings.HasPrefix(k, "x-queuekit-") {
				continue
			}
			if got[k] != v {
				t.Errorf("%s: RedriveHeader has %s = %q; want the message's own header %q kept", c.name, k, got[k], v)
			}
		}
		if _, ok := broker.ParseReason(got); ok {
			t.Errorf("%s: ParseReason(RedriveHeader(...)) found a reason; want none (the next failure writes its own)", c.name)
		}
		if n := broker.Redriven(got); fmt.Sprint(n) != c.redriven {
			t.Errorf("%s: Redriven(RedriveHeader(...)) = %d; want %s", c.name, n, c.redriven)
		}
	}
}

func TestRedriven(t *testing.T) {
	for _, c := range []struct {
		h    map[string]string
		want int
	}{
		{nil, 0},
		{map[string]string{}, 0},
		{map[string]string{broker.HeaderRedriven: "3"}, 3},
		{map[string]string{broker.HeaderRedriven: "-1"}, 0},
		{map[string]string{broker.HeaderRedriven: "three"}, 0},
		{map[string]string{broker.HeaderRedriven: " 3"}, 0},
	} {
		if got := broker.Redriven(c.h); got != c.want {
			t.Errorf("Redriven(%v) = %d; want %d", c.h, got, c.want)
		}
	}
}

func TestCutBody(t *testing.T) {
	for _, c := range []struct {
		name  string
		body  string
		limit int
		want  string
	}{
		{"shorter than the limit", "hello", 10, "hello"},
		{"exactly the limit", "hello", 5, "hello"},
		{"ASCII cut", "hello", 3, "hel"},
		{"zero limit", "hello", 0, ""},
		{"negative limit keeps all", "hello", -1, "hello"},
		{"nil body", "", 3, ""},
		{"not inside a 2-byte rune", "aé", 2, "a"},
		{"after a whole 2-byte rune", "aéb", 3, "aé"},
		{"not inside a 3-byte rune", "a€", 3, "a"},
		{"not inside a 4-byte rune (1 byte in)", "a😀", 2, "a"},
		{"not inside a 4-byte rune (3 bytes in)", "a😀", 4, "a"},
		{"a rune cut at its first byte", "😀", 3, ""},
		{"binary: continuation bytes only", "\x80\x81\x82\x83\x84\x85", 4, "\x80\x81\x82\x83"},
		{"binary: zero bytes", "\x00\x00\x00\x00", 2, "\x00\x00"},
		{"binary: 0xff", "\xff\xff\xff", 1, "\xff"},
	} {
		var body []byte
		if c.name != "nil body" {
			body = []byte(c.body)
		}
		d := broker.DeadLetter{Message: broker.Message{Body: body}}
		broker.CutBody(&d, c.limit)
		if string(d.Message.Body) != c.want || d.BodySize != len(c.body) {
			t.Errorf("%s: CutBody(%q, %d) = %q, BodySize %d; want %q, %d", c.name, c.body, c.limit, d.Message.Body, d.BodySize, c.want, len(c.body))
		}
		if c.limit >= 0 && len(d.Message.Body) > c.limit {
			t.Errorf("%s: CutBody(%q, %d) kept %d bytes; want at most the limit", c.name, c.body, c.limit, len(d.Message.Body))
		}
		if utf8.ValidString(c.body) && !utf8.Valid(d.Message.Body) {
			t.Errorf("%s: CutBody(%q, %d) = %q; want valid UTF-8 from valid UTF-8", c.name, c.body, c.limit, d.Message.Body)
		}
		if len(d.Message.Body) < len(body) {
			// The preview must not let an append write into the whole body.
			_ = append(d.Message.Body, 'X')
			if string(body) != c.body {
				t.Errorf("%s: appending to the preview changed the body to %q", c.name, body)
			}
		}
	}
}

// TestCutBodyEveryLimit cuts a mixed text at every limit: each preview is
// valid UTF-8, a prefix, at most the limit, and short of it by less than a
// rune.
func TestCutBodyEveryLimit(t *testing.T) {
	const text = "a€😀é b\u0301z"
	for limit := 0; limit <= len(text)+1; limit++ {
		d := broker.DeadLetter{Message: broker.Message{Body: []byte(text)}}
		broker.CutBody(&d, limit)
		got := string(d.Message.Body)
		if !strings.HasPrefix(text, got) || !utf8.ValidString(got) || len(got) > limit || limit-len(got) >= utf8.UTFMax || (limit >= len(text) && got != text) {
			t.Errorf("CutBody(%q, %d) = %q; want the longest valid prefix of at most %d bytes", text, limit, got, limit)
		}
	}
}

func TestDeadLetterFilterMatch(t *testing.T) {
	at := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	d := &broker.DeadLetter{ID: "q.dlq-1", HasReason: true, Reason: broker.Reason{Err: "Payment Service: timeout", Source: "orders", Time: at}}
	none := &broker.DeadLetter{ID: "q.dlq-2"}
	for _, c := range []struct {
		name     string
		f        broker.DeadLetterFilter
		d, other bool // whether it matches d, and none (no reason)
	}{
		{"zero filter", broker.DeadLetterFilter{}, true, true},
		{"its id", broker.DeadLetterFilter{IDs: []string{"x", "q.dlq-1"}}, true, false},
		{"other ids", broker.DeadLetterFilter{IDs: []string{"q.dlq-10"}}, false, false},
		{"reason text, any case", broker.DeadLetterFilter{Reason: "SERVICE: TIME"}, true, false},
		{"other reason text", broker.DeadLetterFilter{Reason: "refused"}, false, false},
		{"its source", broker.DeadLetterFilter{Source: "orders"}, true, false},
		{"source is exact", broker.DeadLetterFilter{Source: "order"}, false, false},
		{"before a later time", broker.DeadLetterFilter{Before: at.Add(time.Second)}, true, false},
		{"before its time", broker.DeadLetterFilter{Before: at}, false, false},
		{"after an earlier time", broker.DeadLetterFilter{After: at.Add(-time.Second)}, true, false},
		{"after its time", broker.DeadLetterFilter{After: at}, false, false},
		{"all of them (AND)", broker.DeadLetterFilter{IDs: []string{"q.dlq-1"}, Reason: "timeout", Source: "orders", After: at.Add(-time.Hour), Before: at.Add(time.Hour)}, true, false},
		{"one of them fails (AND)", broker.DeadLetterFilter{IDs: []string{"q.dlq-1"}, Reason: "timeout", Source: "payments"}, false, false},
	} {
		if got := c.f.Match(d); got != c.d {
			t.Errorf("%s: %+v.Match(%+v) = %v; want %v", c.name, c.f, d.Reason, got, c.d)
		}
		if got := c.f.Match(none); got != c.other {
			t.Errorf("%s: %+v.Match(a dead letter without reason) = %v; want %v", c.name, c.f, got, c.other)
		}
		if c.f.IsZero() != (c.name == "zero filter") {
			t.Errorf("%s: IsZero() = %v", c.name, c.f.IsZero())
		}
	}
}

func TestDeadLetterQueryResolve(t *testing.T) {
	for _, c := range []struct {
		in, want broker.DeadLetterQuery
		err      error
	}{
		{broker.DeadLetterQuery{}, broker.DeadLetterQuery{Limit: broker.DefaultListLimit, BodyLimit: broker.DefaultBodyPreview}, nil},
		{broker.DeadLetterQuery{Limit: 5, BodyLimit: -1, Cursor: "c"}, broker.DeadLetterQuery{Limit: 5, BodyLimit: -1, Cursor: "c"}, nil},
		{broker.DeadLetterQuery{Limit: broker.MaxListLimit, BodyLimit: 7}, broker.DeadLetterQuery{Limit: broker.MaxListLimit, BodyLimit: 7}, nil},
		{broker.DeadLetterQuery{Limit: -1}, broker.DeadLetterQuery{}, broker.ErrInvalidConfig},
		{broker.DeadLetterQuery{Limit: broker.MaxListLimit + 1}, broker.DeadLetterQuery{}, broker.ErrInvalidConfig},
	} {
		q := c.in
		err := q.Resolve()
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("Resolve(%+v) = %v; want an error wrapping %v", c.in, err, c.err)
			}
			continue
		}
		if err != nil || q.Limit != c.want.Limit || q.BodyLimit != c.want.BodyLimit || q.Cursor != c.want.Cursor {
			t.Errorf("Resolve(%+v) = %v, giving %+v; want nil, %+v", c.in, err, q, c.want)
		}
	}
}

func TestDeadLetterSelectionCheck(t *testing.T) {
	for _, c := range []struct {
		name string
		s    broker.DeadLetterSelection
		err  error
	}{
		{"nothing", broker.DeadLetterSelection{}, broker.ErrEmptySelection},
		{"only Max", broker.DeadLetterSelection{Max: 3}, broker.ErrEmptySelection},
		{"empty ids", broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{}}}, broker.ErrEmptySelection},
		{"All", broker.DeadLetterSelection{All: true}, nil},
		{"All with Max", broker.DeadLetterSelection{All: true, Max: 2}, nil},
		{"ids", broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"a"}}}, nil},
		{"a reason", broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "x"}}, nil},
		{"a time", broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Before: time.Now()}}, nil},
		{"negative Max", broker.DeadLetterSelection{All: true, Max: -1}, broker.ErrInvalidConfig},
	} {
		err := c.s.Check()
		if (c.err == nil) != (err == nil) || (c.err != nil && !errors.Is(err, c.err)) {
			t.Errorf("%s: Check() = %v; want %v", c.name, err, c.err)
		}
	}
}

func TestRedriveOptionsLimit(t *testing.T) {
	for in, want := range map[int]int{0: broker.DefaultMaxRedrives, 1: 1, 10: 10, -1: -1} {
		if got := (broker.RedriveOptions{MaxRedrives: in}).Limit(); got != want {
			t.Errorf("RedriveOptions{MaxRedrives: %d}.Limit() = %d; want %d", in, got, want)
		}
	}
}

func TestDeadLetterResultErr(t *testing.T) {
	if err := (broker.DeadLetterResult{Done: []string{"a"}, DryRun: true}).Err(); err != nil {
		t.Errorf("Err of a result with nothing missing or skipped = %v; want nil", err)
	}
	limit := fmt.Errorf("memory: x: %w", broker.ErrRedriveLimit)
	r := broker.DeadLetterResult{
		Missing: []string{"m1", `m"2`},
		Skipped: []broker.Skipped{broker.NewSkipped("s1", limit), broker.NewSkipped("s2", broker.ErrNoSource)},
	}
	err := r.Err()
	for _, target := range []error{broker.ErrDeadLetterNotFound, broker.ErrRedriveLimit, broker.ErrNoSource} {
		if !errors.Is(err, target) {
			t.Errorf("Err() = %v; want it to wrap %v", err, target)
		}
	}
	for _, s := range []string{`"m1"`, `"m\"2"`, "s1: memory: x: redrive limit reached", "s2: dead letter has no source"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Err() = %q; want it to contain %q", err, s)
		}
	}
	if errors.Is(err, broker.ErrEmptySelection) {
		t.Errorf("Err() = %v wraps ErrEmptySelection; want only the errors it was given", err)
	}
	// Only the missing ones: not the skipped sentinels.
	if err := (broker.DeadLetterResult{Missing: []string{"x"}}).Err(); !errors.Is(err, broker.ErrDeadLetterNotFound) || errors.Is(err, broker.ErrNoSource) {
		t.Errorf("Err() of a result with a missing id = %v; want only ErrDeadLetterNotFound", err)
	}

	// Many: the message names 10 and counts the rest.
	var many broker.DeadLetterResult
	for i := range 25 {
		many.Missing = append(many.Missing, fmt.Sprintf("id-%d", i))
		many.Skipped = append(many.Skipped, broker.NewSkipped(fmt.Sprintf("sk-%d", i), broker.ErrNoSource))
	}
	msg := many.Err().Error()
	for _, s := range []string{`"id-9"`, "and 15 more", "sk-9", "and 15 more skipped"} {
		if !strings.Contains(msg, s) {
			t.Errorf("Err() of 25 missing and 25 skipped = %q; want it to contain %q", msg, s)
		}
	}
	for _, s := range []string{`"id-10"`, "sk-10"} {
		if strings.Contains(msg, s) {
			t.Errorf("Err() of 25 missing and 25 skipped = %q; want it to name only the first 10, not %q", msg, s)
		}
	}
	if !errors.Is(many.Err(), broker.ErrNoSource) {
		t.Errorf("Err() of many = %v; want it to wrap ErrNoSource", many.Err())
	}
}

func TestSkipped(t *testing.T) {
	s := broker.NewSkipped("q.dlq-1", fmt.Errorf("wrapped: %w", broker.ErrRedriveLimit))
	if s.ID != "q.dlq-1" || s.Err != "wrapped: redrive limit reached" || s.Error() != "q.dlq-1: wrapped: redrive limit reached" {
		t.Errorf("NewSkipped = %+v, Error() %q", s, s.Error())
	}
	if !errors.Is(s, broker.ErrRedriveLimit) {
		t.Errorf("errors.Is(%v, ErrRedriveLimit) = false; want true", s)
	}
	// A Skipped decoded from JSON has no error to unwrap, and says so safely.
	decoded := broker.Skipped{ID: "x", Err: "gone"}
	if errors.Is(decoded, broker.ErrNoSource) || decoded.Unwrap() != nil || decoded.Error() != "x: gone" {
		t.Errorf("a Skipped without its error: Unwrap %v, Error %q", decoded.Unwrap(), decoded.Error())
	}
}

func TestDeadLetterAge(t *testing.T) {
	now := time.Now()
	d := broker.DeadLetter{Reason: broker.Reason{Time: now.Add(-time.Minute)}}
	if got := d.Age(now); got != time.Minute {
		t.Errorf("Age = %v; want 1m", got)
	}
	if got := (&broker.DeadLetter{}).Age(now); got != 0 {
		t.Errorf("Age without a time = %v; want 0", got)
	}
}

func TestParseReasonAnyHeader(t *testing.T) {
	r, ok := broker.ParseReason(map[string]string{broker.HeaderFailedAt: "2026-12-05T18:00:00Z", broker.HeaderPermanent: "true"})
	if !ok || !r.Permanent || r.Time.IsZero() {
		t.Fatalf("ParseReason = %+v, %v; want ok with Permanent and Time", r, ok)
	}
}

func TestCutBodyStrayContinuationBytes(t *testing.T) {
	d := broker.DeadLetter{Message: broker.Message{Body: []byte("ab\x80\x80\x80")}}
	broker.CutBody(&d, 4)
	if got := string(d.Message.Body); got != "ab\x80\x80" {
		t.Fatalf("CutBody = %q; want %q (bytes that are not UTF-8 are cut where asked)", got, "ab\x80\x80")
	}
}

func TestMatcherAgreesWithMatch(t *testing.T) {
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("id-%d", i*2)
	}
	f := broker.DeadLetterFilter{IDs: ids, Reason: "boom"}
	m := f.Matcher()
	for i := 0; i < 2100; i++ {
		for _, reason := range []string{"BOOM!", "fine"} {
			d := broker.DeadLetter{ID: fmt.Sprintf("id-%d", i), Reason: broker.Reason{Err: reason}}
			if got, want := m(&d), f.Match(&d); got != want {
				t.Fatalf("Matcher(%s, %q) = %v, Match = %v", d.ID, reason, got, want)
			}
		}
	}
	if !(broker.DeadLetterFilter{}).Matcher()(&broker.DeadLetter{ID: "x"}) {
		t.Fatal("zero filter's Matcher does not match")
	}
}

func TestRedrivenCountTooLargeStaysOverTheLimit(t *testing.T) {
	h := map[string]string{broker.HeaderRedriven: "99999999999999999999"}
	if got := broker.Redriven(h); got != math.MaxInt {
		t.Fatalf("Redriven(%q) = %d; want MaxInt", h[broker.HeaderRedriven], got)
	}
	out := broker.RedriveHeader(h, "x", time.Now())
	if got := broker.Redriven(out); got != math.MaxInt {
		t.Fatalf("after RedriveHeader, %s = %q (Redriven %d); want a count that stays over any limit", broker.HeaderRedriven, out[broker.HeaderRedriven], got)
	}
}
