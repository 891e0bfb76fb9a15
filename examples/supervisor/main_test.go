package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// The emails consumer fails while its subscription is cancelled and is
// restarted with backoff; the others never fail; everything stops gracefully
// with nothing lost.
func TestSupervisorRestartsTheFailingConsumer(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out, discard); err != nil {
		t.Fatalf("run = %v; want nil\n%s", err, out.String())
	}
	text := out.String()
	t.Log("\n" + text)

	events := eventsByRunner(text)

	// emails: cancelled, failed and restarted at least twice with growing
	// restart numbers, then reconnected, running again, drained and stopped.
	emails := strings.Join(events["emails"], "\n")
	for _, want := range []string{
		`(?s)starting.*running.*cancelled +queue emails was deleted` +
			`.*failed +\(will be restarted\): .*queue emails was deleted.*restarting restart 1 in \d+ms` +
			`.*failed +\(will be restarted\): .*queue emails was deleted.*restarting restart 2 in \d+ms` +
			`.*connected.*starting.*running.*draining.*drained.*stopped\s*$`,
	} {
		if !regexp.MustCompile(want).MatchString(emails) {
			t.Errorf("emails events =\n%s\nwant them to match %s", emails, want)
		}
	}
	// The restart delays grow: 50-100ms, then 100-200ms (equal jitter:
	// each is at least the one before).
	delays := regexp.MustCompile(`restarting restart \d+ in (\d+)ms`).FindAllStringSubmatch(emails, -1)
	for i := 1; i < len(delays); i++ {
		prev, _ := strconv.Atoi(delays[i-1][1])
		cur, _ := strconv.Atoi(delays[i][1])
		if cur < prev {
			t.Errorf("restart delay %d = %dms, less than the one before (%dms)", i+1, cur, prev)
		}
	}

	// orders and invoices never failed: one start, one drain, one stop. (The
	// source's connected event comes from its own goroutine, before or after
	// running: not the point here.)
	for _, r := range []string{"orders", "invoices"} {
		got := strings.Join(slices.DeleteFunc(kinds(events[r]), func(k string) bool { return k == "connected" }), " ")
		if want := "starting running draining drained stopped"; got != want {
			t.Errorf("%s events = %q; want %q", r, got, want)
		}
	}

	// Health while emails waits, after it recovered, and after the stop.
	for _, want := range []string{
		`== health while emails waits for its next restart\n  ready=false\n  orders +running +restarts=0\n  emails +\w+ +restarts=[2-9] last_error=.*queue emails was deleted\n  invoices +running +restarts=0\n`,
		`== health after the restart\n  ready=true\n  orders +running +restarts=0\n  emails +running +restarts=[2-9] last_error=.*\n  invoices +running +restarts=0\n`,
		`== stopped\n  ready=false\n  orders +stopped .*\n  emails +stopped .*\n  invoices +stopped .*\n`,
	} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("output does not match %q", want)
		}
	}

	// The drain at the stop: orders had work in flight, finished it, and
	// abandoned nothing.
	m := regexp.MustCompile(`event orders +drained +(\d+) handled, (\d+) given back, (\d+) abandoned`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no drain report for orders")
	}
	if handled, _ := strconv.Atoi(m[1]); handled < 1 || handled > 2 {
		t.Errorf("orders drain handled %d; want 1 or 2 (the orders in flight at the stop)", handled)
	}
	if m[3] != "0" {
		t.Errorf("orders drain abandoned %s; want 0", m[3])
	}

	// Nothing lost: every message acked or still queued, none unacked or
	// dead-lettered; the orders not started stay queued for the next start.
	for _, want := range []string{
		`orders +published 18, acked (\d+), still queued (\d+), unacked 0, dead-lettered 0`,
		`emails +published  8, acked  8, still queued 0, unacked 0, dead-lettered 0`,
		`invoices published  8, acked  8, still queued 0, unacked 0, dead-lettered 0`,
	} {
		m := regexp.MustCompile(want).FindStringSubmatch(text)
		if m == nil {
			t.Errorf("output has no line matching %q", want)
			continue
		}
		if len(m) == 3 {
			acked, _ := strconv.Atoi(strings.TrimSpace(m[1]))
			queued, _ := strconv.Atoi(m[2])
			if acked+queued != 18 || queued == 0 {
				t.Errorf("orders acked %d + queued %d; want 18 in all, some still queued", acked, queued)
			}
		}
	}
}

// Ctrl-C in the middle: run stops gracefully, returns nil, leaves nothing
// unacked and no goroutine behind (goleak checks that).
func TestSupervisorStopsOnInterrupt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &triggerWriter{on: "the broker cancels the emails subscription", fire: cancel}
	done := make(chan error, 1)
	go func() { done <- run(ctx, w, discard) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after interrupt = %v; want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of the interrupt")
	}
	cancel()
	text := w.buf.String()
	if !strings.Contains(text, "== stopped") {
		t.Fatalf("output after interrupt has no final report:\n%s", text)
	}
	if regexp.MustCompile(`unacked [1-9]`).MatchString(text) {
		t.Errorf("messages left unacked after interrupt:\n%s", text)
	}
}

// eventsByRunner returns the "event" lines of the output, per runner, in
// order, without the "event runner" prefix.
func eventsByRunner(text string) map[string][]string {
	re := regexp.MustCompile(`(?m)^  event (\S+) +(.*)$`)
	ev := make(map[string][]string)
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		ev[m[1]] = append(ev[m[1]], strings.TrimSpace(m[2]))
	}
	return ev
}

func kinds(lines []string) []string {
	var k []string
	for _, l := range lines {
		k = append(k, strings.Fields(l)[0])
	}
	return k
}

// triggerWriter calls fire once the output contains on.
type triggerWriter struct {
	buf  bytes.Buffer
	on   string
	fire func()
}

func (w *triggerWriter) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.on) {
		w.fire()
	}
	return n, err
}
