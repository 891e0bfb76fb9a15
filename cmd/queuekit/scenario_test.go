package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/broker"
)

// fixture is a broker with a source (queue or topic) and its dead letters,
// for the scenario every target runs.
type fixture struct {
	// name says what the scenario runs against, for the logs.
	name string
	// run runs queuekit with args (the target's flags are added).
	run func(t *testing.T, args ...string) result
	// deadLetter puts messages with these bodies and reasons into the
	// dead letters, as a failing consumer would.
	deadLetter func(t *testing.T, letters []seedLetter)
	// arrived returns the bodies of the messages that reached the source
	// since the last call (it consumes them).
	arrived func(t *testing.T) []string
}

// seedLetter is a dead letter the scenario starts with.
type seedLetter struct {
	body   string
	reason broker.Reason
	header map[string]string // published with the message
}

// seeds are the scenario's dead letters: two of one reason, one of another
// whose body and error text hold terminal escape sequences.
func seeds(source string) []seedLetter {
	return []seedLetter{
		{`{"order":1}`, broker.Reason{Err: "payment declined: card expired", Attempts: 5, Source: source}, nil},
		{"{\"order\":2}\x1b]0;pwned\x07\x1b[2J", broker.Reason{Err: "bad payload\x1b[31m: invalid character", Attempts: 1, Source: source, Permanent: true}, nil},
		{`{"order":3}`, broker.Reason{Err: "payment declined: insufficient funds", Attempts: 5, Source: source}, nil},
	}
}

// listJSON runs "dlq list --json" with extra args and decodes its page.
func listJSON(t *testing.T, f fixture, args ...string) broker.DeadLetterPage {
	t.Helper()
	r := f.run(t, append([]string{"dlq", "list", "--json"}, args...)...)
	wantCode(t, r, exitOK)
	var page broker.DeadLetterPage
	if err := json.Unmarshal([]byte(r.stdout), &page); err != nil {
		t.Fatalf("dlq list --json: %v\n%s", err, r.stdout)
	}
	return page
}

func ids(page broker.DeadLetterPage) []string {
	var out []string
	for _, d := range page.Items {
		out = append(out, d.ID)
	}
	return out
}

func noRawControl(t *testing.T, what, s string) {
	t.Helper()
	for _, c := range []string{"\x1b", "\x07"} {
		if strings.Contains(s, c) {
			t.Errorf("%s printed a raw %q:\n%q", what, c, s)
		}
	}
}

// runScenario walks an operator through the dead letters of f: list (table
// and JSON), filter, count, show, redrive (dry run, by id with a missing id,
// all), purge (dry run, by id), with the exit codes of each step.
func runScenario(t *testing.T, f fixture, source string) {
	letters := seeds(source)
	f.deadLetter(t, letters)

	// list: the table.
	r := f.run(t, "dlq", "list")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "REASON") {
		t.Fatalf("dlq list: want a header and 3 rows:\n%s", r.stdout)
	}
	for _, want := range []string{"payment declined: card expired", `bad payload\x1b[31m: invalid character`, "5", "1 (permanent)", source, `{"order":1}`, `\x1b]0;pwned\x07`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dlq list does not show %q:\n%s", want, r.stdout)
		}
	}
	noRawControl(t, "dlq list", r.stdout)
	// Columns are aligned: REASON starts at the same offset on every line.
	col := strings.Index(lines[0], "REASON") // ASCII: bytes are runes
	for _, l := range lines[1:] {
		if rs := []rune(l); len(rs) < col || !strings.HasPrefix(string(rs[col:]), "payment") && !strings.HasPrefix(string(rs[col:]), "bad payload") {
			t.Errorf("dlq list: the REASON column is not aligned at %d:\n%s", col, r.stdout)
		}
	}

	// list --json: the broker's types, in order, with their reasons.
	page := listJSON(t, f)
	if len(page.Items) != 3 {
		t.Fatalf("dlq list --json: %d items, want 3", len(page.Items))
	}
	for i, d := range page.Items {
		if string(d.Message.Body) != letters[i].body || !d.HasReason || d.Reason.Err != letters[i].reason.Err ||
			d.Reason.Attempts != letters[i].reason.Attempts || d.Reason.Source != source {
			t.Errorf("dlq list --json item %d = body %q reason %+v (has %v); want body %q reason %+v",
				i, d.Message.Body, d.Reason, d.HasReason, letters[i].body, letters[i].reason)
		}
	}
	all := ids(page)

	// Paging: one at a time, following the printed cursor.
	p1 := listJSON(t, f, "--limit", "2")
	if len(p1.Items) != 2 || p1.Next == "" {
		t.Fatalf("dlq list --limit 2: %d items, next %q", len(p1.Items), p1.Next)
	}
	p2 := listJSON(t, f, "--limit", "2", "--cursor", p1.Next)
	if got := append(ids(p1), ids(p2)...); !slices.Equal(got, all) {
		t.Errorf("dlq list in pages of 2: %v; want %v", got, all)
	}
	r = f.run(t, "dlq", "list", "--limit", "2")
	if !strings.Contains(r.stdout, "more: add --cursor ") {
		t.Errorf("dlq list --limit 2 does not say how to go on:\n%s", r.stdout)
	}

	// Filters.
	if got := ids(listJSON(t, f, "--reason", "PAYMENT")); !slices.Equal(got, []string{all[0], all[2]}) {
		t.Errorf("dlq list --reason PAYMENT: %v; want %v", got, []string{all[0], all[2]})
	}
	if got := ids(listJSON(t, f, "--id", all[1])); !slices.Equal(got, all[1:2]) {
		t.Errorf("dlq list --id %s: %v", all[1], got)
	}
	if got := ids(listJSON(t, f, "--source", "elsewhere")); len(got) != 0 {
		t.Errorf("dlq list --source elsewhere: %v; want none", got)
	}
	if got := ids(listJSON(t, f, "--older-than", "1h")); len(got) != 0 {
		t.Errorf("dlq list --older-than 1h: %v; want none (they just failed)", got)
	}
	if got := ids(listJSON(t, f, "--newer-than", "1h")); len(got) != 3 {
		t.Errorf("dlq list --newer-than 1h: %v; want all 3", got)
	}

	// count.
	r = f.run(t, "dlq", "count", "--reason", "payment")
	wantCode(t, r, exitOK)
	if strings.TrimSpace(r.stdout) != "2" {
		t.Errorf("dlq count --reason payment = %q; want 2", r.stdout)
	}

	// show: whole, escaped; --json; a missing id.
	r = f.run(t, "dlq", "show", all[1])
	wantCode(t, r, exitOK)
	for _, want := range []string{"reason:", `bad payload\x1b[31m`, broker.HeaderError, "body (", `{"order":2}\x1b]0;pwned\x07\x1b[2J`, "attempts:", "1 (permanent)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dlq show does not show %q:\n%s", want, r.stdout)
		}
	}
	noRawControl(t, "dlq show", r.stdout)
	r = f.run(t, "dlq", "show", "--raw", all[1])
	if !strings.Contains(r.stdout, letters[1].body) {
		t.Errorf("dlq show --raw does not write the body as it is:\n%q", r.stdout)
	}
	r = f.run(t, "dlq", "show", "--json", all[0])
	var d broker.DeadLetter
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || d.ID != all[0] || string(d.Message.Body) != letters[0].body {
		t.Errorf("dlq show --json: %v, %+v", err, d)
	}
	r = f.run(t, "dlq", "show", "no-such-dead-letter")
	wantCode(t, r, exitPartial)
	if !strings.Contains(r.stderr, "not found") {
		t.Errorf("dlq show of a missing id does not say so:\n%s", r.stderr)
	}

	// redrive --dry-run: says what, changes nothing.
	r = f.run(t, "dlq", "redrive", "--reason", "payment", "--dry-run")
	wantCode(t, r, exitOK)
	if !hasRow(r.stdout, "would", "redrive", all[0]) || !hasRow(r.stdout, "would", "redrive", all[2]) ||
		!strings.Contains(r.stdout, "2 would redrive, 0 skipped, 0 missing (dry run: nothing changed)") {
		t.Errorf("dlq redrive --dry-run:\n%s", r.stdout)
	}
	if got := ids(listJSON(t, f)); !slices.Equal(got, all) {
		t.Errorf("after redrive --dry-run the dead letters are %v; want %v", got, all)
	}
	if got := f.arrived(t); len(got) != 0 {
		t.Errorf("redrive --dry-run sent %q to the source", got)
	}

	// --max: the oldest first.
	r = f.run(t, "dlq", "purge", "--all", "--max", "2", "--dry-run", "--json")
	wantCode(t, r, exitOK)
	var maxRes broker.DeadLetterResult
	if err := json.Unmarshal([]byte(r.stdout), &maxRes); err != nil || !slices.Equal(maxRes.Done, all[:2]) || !maxRes.DryRun {
		t.Errorf("dlq purge --all --max 2 --dry-run --json: %v, %+v; want done %v", err, maxRes, all[:2])
	}

	// redrive by id, one of them missing: the found one goes, exit 1.
	r = f.run(t, "dlq", "redrive", "--id", all[0]+",no-such-dead-letter")
	wantCode(t, r, exitPartial)
	if !hasRow(r.stdout, "redriven", all[0]) || !hasRow(r.stdout, "missing", "no-such-dead-letter") ||
		!strings.Contains(r.stdout, "1 redriven, 0 skipped, 1 missing") {
		t.Errorf("dlq redrive with a missing id:\n%s", r.stdout)
	}
	if got := f.arrived(t); !slices.Equal(got, []string{letters[0].body}) {
		t.Errorf("redrive --id %s: the source got %q; want %q", all[0], got, letters[0].body)
	}
	if got := ids(listJSON(t, f)); !slices.Equal(got, all[1:]) {
		t.Errorf("after redrive --id the dead letters are %v; want %v", got, all[1:])
	}

	// purge --dry-run, then purge by id (--json).
	r = f.run(t, "dlq", "purge", "--id", all[1], "--dry-run")
	wantCode(t, r, exitOK)
	if !hasRow(r.stdout, "would", "purge", all[1]) {
		t.Errorf("dlq purge --dry-run:\n%s", r.stdout)
	}
	if got := ids(listJSON(t, f)); !slices.Equal(got, all[1:]) {
		t.Errorf("after purge --dry-run the dead letters are %v; want %v", got, all[1:])
	}
	r = f.run(t, "dlq", "purge", "--id", all[1], "--json")
	wantCode(t, r, exitOK)
	var res broker.DeadLetterResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || !slices.Equal(res.Done, all[1:2]) {
		t.Errorf("dlq purge --json: %v, %+v", err, res)
	}
	if got := ids(listJSON(t, f)); !slices.Equal(got, all[2:]) {
		t.Errorf("after purge the dead letters are %v; want %v", got, all[2:])
	}

	// redrive --all: the rest goes back; nothing is left.
	r = f.run(t, "dlq", "redrive", "--all")
	wantCode(t, r, exitOK)
	if got := f.arrived(t); !slices.Equal(got, []string{letters[2].body}) {
		t.Errorf("redrive --all: the source got %q; want %q", got, letters[2].body)
	}
	r = f.run(t, "dlq", "count")
	if strings.TrimSpace(r.stdout) != "0" {
		t.Errorf("dlq count after redrive --all = %q; want 0", r.stdout)
	}
	r = f.run(t, "dlq", "list")
	wantCode(t, r, exitOK)
	if strings.TrimSpace(r.stdout) != "no dead letters" {
		t.Errorf("dlq list of no dead letters = %q", r.stdout)
	}

	// A message redriven 3 times already (the default limit): skipped, exit
	// 1, left where it is; --max-redrives 4 sends it.
	poison := seedLetter{`{"order":4}`, broker.Reason{Err: "still failing", Attempts: 5, Source: source}, map[string]string{broker.HeaderRedriven: "3"}}
	f.deadLetter(t, []seedLetter{poison})
	page = listJSON(t, f)
	if len(page.Items) != 1 || page.Items[0].Redriven != 3 {
		t.Fatalf("the poison message's dead letter: %+v", page.Items)
	}
	r = f.run(t, "dlq", "redrive", "--all")
	wantCode(t, r, exitPartial)
	if !hasRow(r.stdout, "skipped", page.Items[0].ID) || !strings.Contains(r.stdout, "redrive limit") ||
		!strings.Contains(r.stdout, "0 redriven, 1 skipped, 0 missing") {
		t.Errorf("dlq redrive of a message at the redrive limit:\n%s", r.stdout)
	}
	if got := f.arrived(t); len(got) != 0 {
		t.Errorf("a message at the redrive limit was sent: %q", got)
	}
	r = f.run(t, "dlq", "redrive", "--all", "--max-redrives", "4")
	wantCode(t, r, exitOK)
	if got := f.arrived(t); !slices.Equal(got, []string{poison.body}) {
		t.Errorf("redrive --max-redrives 4: the source got %q; want %q", got, poison.body)
	}
}

// hasRow reports whether a line of out starts with these fields.
func hasRow(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= len(fields) && slices.Equal(f[:len(fields)], fields) {
			return true
		}
	}
	return false
}
