package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
)

// fakeDeadLetters serves fixed dead letters, so that tests can give the
// command ids and errors no broker would let them write. Redrive and Purge
// only report (as a dry run would).
type fakeDeadLetters struct {
	items   []broker.DeadLetter
	listErr error             // List fails with it
	skip    map[string]string // id → the Skipped error text Redrive reports
}

func (f *fakeDeadLetters) List(_ context.Context, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	if f.listErr != nil {
		return broker.DeadLetterPage{}, f.listErr
	}
	var page broker.DeadLetterPage
	for _, d := range f.items {
		if q.Match(&d) {
			page.Items = append(page.Items, d)
		}
	}
	return page, nil
}

func (f *fakeDeadLetters) Count(_ context.Context, flt broker.DeadLetterFilter) (int, error) {
	n := 0
	for _, d := range f.items {
		if flt.Match(&d) {
			n++
		}
	}
	return n, nil
}

func (f *fakeDeadLetters) select_(s broker.DeadLetterSelection) broker.DeadLetterResult {
	res := broker.DeadLetterResult{DryRun: true}
	for _, d := range f.items {
		if !s.All && !s.Match(&d) {
			continue
		}
		if msg, ok := f.skip[d.ID]; ok {
			res.Skipped = append(res.Skipped, broker.NewSkipped(d.ID, errors.New(msg)))
			continue
		}
		res.Done = append(res.Done, d.ID)
	}
	for _, id := range s.IDs {
		if !slices.Contains(res.Done, id) && !slices.ContainsFunc(res.Skipped, func(k broker.Skipped) bool { return k.ID == id }) {
			res.Missing = append(res.Missing, id)
		}
	}
	return res
}

func (f *fakeDeadLetters) Redrive(_ context.Context, s broker.DeadLetterSelection, _ broker.RedriveOptions) (broker.DeadLetterResult, error) {
	res := f.select_(s)
	return res, res.Err()
}

func (f *fakeDeadLetters) Purge(_ context.Context, s broker.DeadLetterSelection, _ bool) (broker.DeadLetterResult, error) {
	res := f.select_(s)
	return res, res.Err()
}

func (f *fakeDeadLetters) Close(context.Context) error { return nil }

// runFake runs the command in-process on f.
func runFake(t *testing.T, f *fakeDeadLetters, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := newApp(&stdout, &stderr, func(string) string { return "" })
	a.open = func(target) (deadLetters, error) { return f, nil }
	args = append(args, "--queue", "work", "--amqp-url", "amqp://fake/")
	r := result{code: a.run(context.Background(), args), stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("$ queuekit %q\n%s", args, r)
	return r
}

// terminalUnsafe returns the first rune of s a terminal would act on (a
// control other than newline, a format or separator character, or a byte
// that is not UTF-8), and whether there is one.
func terminalUnsafe(s string) (rune, bool) {
	for i, r := range s {
		if r == utf8.RuneError && !strings.HasPrefix(s[i:], "\ufffd") {
			return rune(s[i]), true
		}
		if r != '\n' && (r < 0x20 || r == 0x7f || r >= 0x80 && unsafeRune(r)) {
			return r, true
		}
	}
	return 0, false
}

// Review of issue 11's CLI, finding 1: --json wrote bidi overrides (U+202E),
// zero-width characters and C1 controls from message data raw.
func TestJSONEscapesFormatCharacters(t *testing.T) {
	evil := "a\u202eb\u200bc\u0085d\u2066e\U000e0001f\u2028g\x1b[2Jh\x7fi"
	f := &fakeDeadLetters{items: []broker.DeadLetter{{
		ID:        "id" + evil,
		HasReason: true,
		Reason:    broker.Reason{Err: "err" + evil, Source: "work"},
		Message:   broker.Message{ID: "mid" + evil, Header: map[string]string{"x-" + evil: "v" + evil}, Body: []byte(evil)},
		Partition: -1, Offset: -1,
	}}}
	for _, args := range [][]string{
		{"dlq", "list", "--json"},
		{"dlq", "show", "--json", escape("id" + evil)},
		{"dlq", "redrive", "--json", "--all"},
	} {
		r := runFake(t, f, args...)
		wantCode(t, r, exitOK)
		if c, bad := terminalUnsafe(r.stdout); bad {
			t.Errorf("queuekit %s printed %U raw:\n%q", args[1], c, r.stdout)
		}
		if !strings.Contains(r.stdout, `\u202e`) || !strings.Contains(r.stdout, `\udb40\udc01`) {
			t.Errorf("queuekit %s: no \\u202e or \\udb40\\udc01 escape:\n%s", args[1], r.stdout)
		}
	}
	// The escapes are JSON's own: the data decodes as it was.
	r := runFake(t, f, "dlq", "list", "--json")
	var page broker.DeadLetterPage
	if err := json.Unmarshal([]byte(r.stdout), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 1 || page.Items[0].ID != "id"+evil || page.Items[0].Reason.Err != "err"+evil ||
		page.Items[0].Message.Header["x-"+evil] != "v"+evil {
		t.Errorf("decoded page = %+v; want the dead letter as it was", page)
	}
}

// Review of issue 11's CLI, finding 1: an id that is not UTF-8 (or holds a
// control character or a backslash) could not be given back: the table
// prints it escaped, and --id and show's ID took the argument as it was.
// They take the escaped form now.
func TestIDRoundTripsInEscapedForm(t *testing.T) {
	id := "i\x1b]0;x\x07\u202e\x9b\\d,e"
	f := &fakeDeadLetters{items: []broker.DeadLetter{
		{ID: id, Partition: -1, Offset: -1, Message: broker.Message{Body: []byte("one")}},
		{ID: "other", Partition: -1, Offset: -1, Message: broker.Message{Body: []byte("two")}},
	}}
	r := runFake(t, f, "dlq", "list")
	wantCode(t, r, exitOK)
	lines := strings.Split(r.stdout, "\n")
	printed := strings.Fields(lines[1])[0] // the first row's ID column
	if printed != `i\x1b]0;x\x07\u202e\x9b\\d,e` {
		t.Fatalf("list printed the id as %q", printed)
	}
	r = runFake(t, f, "dlq", "show", printed)
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "one") {
		t.Errorf("show %s did not show the dead letter:\n%s", printed, r.stdout)
	}
	// --id splits on commas: a comma in an id is written \x2c.
	arg := strings.ReplaceAll(printed, ",", `\x2c`)
	r = runFake(t, f, "dlq", "redrive", "--dry-run", "--id", arg)
	wantCode(t, r, exitOK)
	if !hasRow(r.stdout, "would", "redrive", printed) || !strings.Contains(r.stdout, "1 would redrive, 0 skipped, 0 missing") {
		t.Errorf("redrive --id %s:\n%s", arg, r.stdout)
	}
	r = runFake(t, f, "dlq", "count", "--id", arg)
	wantCode(t, r, exitOK)
	if strings.TrimSpace(r.stdout) != "1" {
		t.Errorf("count --id %s = %s; want 1", arg, r.stdout)
	}
	// A backslash that starts no escape has no reading: refused.
	for _, bad := range []string{`a\q`, `a\`, `a\x4`, `a\uzzzz`, `a\Uffffffff`} {
		r = runFake(t, f, "dlq", "purge", "--id", bad)
		wantCode(t, r, exitUsage)
		r = runFake(t, f, "dlq", "show", bad)
		wantCode(t, r, exitUsage)
	}
}

// Review of issue 11's CLI, finding 2: names the adapters quote with %q
// were escaped a second time ("work\\x1b]0;pwned\\a").
func TestErrorsEscapedOnce(t *testing.T) {
	name := "work\x1b]0;pwned\a\u202e"
	quoted := fmt.Sprintf("%q", name) // "work\x1b]0;pwned\a\u202e"
	f := &fakeDeadLetters{listErr: fmt.Errorf("rabbitmq: dead letters of %q: raw %s: boom", name, name)}
	r := runFake(t, f, "dlq", "list")
	wantCode(t, r, exitFailed)
	if !strings.Contains(r.stderr, quoted+": raw "+escape(name)+": boom") {
		t.Errorf("stderr = %q; want it to hold %q once escaped", r.stderr, quoted)
	}
	if c, bad := terminalUnsafe(r.stderr); bad {
		t.Errorf("stderr holds %U raw: %q", c, r.stderr)
	}

	f = &fakeDeadLetters{
		items: []broker.DeadLetter{{ID: "d1", Partition: -1, Offset: -1}},
		skip:  map[string]string{"d1": fmt.Sprintf("dead letter d1 came from %q, not \"work\"", name)},
	}
	r = runFake(t, f, "dlq", "redrive", "--all")
	wantCode(t, r, exitPartial)
	if !strings.Contains(r.stdout, "came from "+quoted+", not") || !strings.Contains(r.stderr, "came from "+quoted+", not") {
		t.Errorf("the skipped line or the error does not quote the name once escaped (%q):\n%s", quoted, r)
	}
	if strings.Contains(r.stdout+r.stderr, `\\x1b`) {
		t.Errorf("escaped twice:\n%s", r)
	}
}

// Review of issue 11's CLI, finding 3: a cursor whose dead letter was
// removed meanwhile (RabbitMQ says ErrDeadLetterNotFound) exited 4, as if
// the operation had failed; a dead letter that is not there is exit 1
// everywhere else (show, --id).
func TestCursorGoneIsPartial(t *testing.T) {
	f := &fakeDeadLetters{listErr: fmt.Errorf("rabbitmq: list dead letters of %q: cursor %q: %w", "work", "5:m-x", broker.ErrDeadLetterNotFound)}
	r := runFake(t, f, "dlq", "list", "--cursor", "5:m-x")
	wantCode(t, r, exitPartial)
	if !strings.Contains(r.stderr, "without --cursor") {
		t.Errorf("stderr does not say what to do:\n%s", r.stderr)
	}
}

// What escape prints, unescape reads back exactly, whatever the bytes; and
// the JSON of any string, escaped, decodes as encoding/json's own does and
// holds nothing a terminal acts on.
func FuzzEscapeRoundTrip(f *testing.F) {
	for _, s := range []string{"a\x1bb", "\u202e", "\xff\x9b", `\`, `\\x1b`, "ok", "\U000e0001", "a,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := unescape(escape(s))
		if err != nil || got != s {
			t.Fatalf("unescape(escape(%q)) = %q, %v; want %q", s, got, err, s)
		}
		js, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		ejs := escapeJSON(js)
		if c, bad := terminalUnsafe(string(ejs)); bad {
			t.Fatalf("escapeJSON(%s) = %s holds %U", js, ejs, c)
		}
		var a, b string
		if err := json.Unmarshal(js, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(ejs, &b); err != nil || a != b {
			t.Fatalf("escapeJSON(%s) = %s decodes to %q, %v; want %q", js, ejs, b, err, a)
		}
	})
}
