package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Valid signups are saved; bodies that do not decode and signups that fail
// validation are dead-lettered on their first delivery, never retried, with
// the reason in the headers read back from the dead-letter queue.
func TestTypedJSON(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("run = %v; want nil\n%s", err, out.String())
	}
	text := out.String()
	t.Log("\n" + text)

	for _, want := range []string{
		// Every message was delivered exactly once: nothing was retried.
		"signups: 7 published, 7 delivered, 0 requeued, 3 acked, 4 dead-lettered\n",
		// consumer.JSON did not call the typed function for s-2, s-3 and s-6.
		"the Signup handler was called 4 times: the 3 bodies that did not decode never reached it\n",
		"saved (3):\n" +
			"  s-1: ada@example.com, plan pro, seats 5\n" +
			"  s-5: eve@example.com, plan free, seats 1\n" +
			"  s-7: fay@example.com, plan pro, seats 3\n",
		"read back from signups.dlq (4):\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// Each dead letter, in ID order, with its reason headers.
	re := regexp.MustCompile(`(?m)^  (s-\d) from (\S+), attempts=(\d+), permanent=(\w+)\n {6}(.*)$`)
	got := re.FindAllStringSubmatch(text, -1)
	want := []struct{ id, reason string }{
		{"s-2", `^queuekit: decode JSON body of message s-2 into main.Signup: unexpected end of JSON input$`},
		{"s-3", `^queuekit: decode JSON body of message s-3 into main.Signup: .*Signup.seats.*int`},
		{"s-4", `^invalid signup: email "dee.example.com" is not an address; plan "gold" is not free or pro; seats 0 is not between 1 and 500$`},
		{"s-6", `^queuekit: decode JSON body of message s-6 into main.Signup: body is null$`},
	}
	if len(got) != len(want) {
		t.Fatalf("dead letters read back = %d; want %d\n%s", len(got), len(want), text)
	}
	for i, w := range want {
		g := got[i]
		if g[1] != w.id || g[2] != "signups" || g[3] != "1" || g[4] != "true" {
			t.Errorf("dead letter %d = %s from %s, attempts=%s, permanent=%s; want %s from signups, attempts=1, permanent=true",
				i, g[1], g[2], g[3], g[4], w.id)
		}
		if !regexp.MustCompile(w.reason).MatchString(g[5]) {
			t.Errorf("dead letter %s reason = %q; want it to match %q", g[1], g[5], w.reason)
		}
	}
}

// Signup.Validate accepts the valid ones and names every problem of the others.
func TestSignupValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Signup
		want string // "" means valid
	}{
		{"a pro signup with seats is valid", Signup{"ada@example.com", "pro", 5}, ""},
		{"500 seats is the most", Signup{"ada@example.com", "pro", 501}, `seats 501 is not between 1 and 500`},
		{"an unknown plan is invalid", Signup{"ada@example.com", "team", 1}, `plan "team" is not free or pro`},
		{"an email without @ is invalid", Signup{"ada.example.com", "free", 1}, `email "ada.example.com" is not an address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate(%+v) = %v; want nil", tc.in, err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Errorf("Validate(%+v) = %v; want %s", tc.in, err, tc.want)
			}
		})
	}
}
