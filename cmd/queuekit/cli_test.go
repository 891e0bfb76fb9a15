package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain ASCII is left alone", "order 42 failed", "order 42 failed"},
		{"other scripts are left alone", "zamówienie 注文", "zamówienie 注文"},
		{"newline, tab and CR are escaped", "a\nb\tc\rd", `a\nb\tc\rd`},
		{"ESC sequences are escaped", "\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\x07`},
		{"DEL and C1 controls are escaped", "a\x7fb\u0085c\u009bd", `a\x7fb\u0085c\u009bd`},
		{"bidi overrides are escaped", "abc\u202edcba", `abc\u202edcba`},
		{"zero-width and BOM are escaped", "a\u200bb\ufeffc", `a\u200bb\ufeffc`},
		{"line separators are escaped", "a\u2028b\u2029c", `a\u2028b\u2029c`},
		{"bytes that are not UTF-8 are escaped", "a\xff\xfeb", `a\xff\xfeb`},
		{"a backslash is doubled", `a\x1b`, `a\\x1b`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := escape(tc.in); got != tc.want {
				t.Errorf("escape(%q) = %q; want %q", tc.in, got, tc.want)
			}
		})
	}
}

// Whatever the input, escape's output holds no control or format character.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"a\x1bb", "\u202e", "\xff", `\`, "ok"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := escape(s)
		for _, r := range out {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && unsafeRune(r)) || r == 0xfffd && !strings.ContainsRune(s, 0xfffd) {
				t.Fatalf("escape(%q) = %q holds %U", s, out, r)
			}
		}
		if c := cut(s, 10); len([]rune(c)) > 10 {
			t.Fatalf("cut(%q, 10) = %q: longer than 10 runes", s, c)
		}
	})
}

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		in    string
		width int
		want  string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"this is longer than ten", 10, "this is l…"},
		{"注文注文注文注文注文注文", 5, "注文注文…"},
		// The cut falls inside "\x1b": the whole escape goes.
		{"abcdef\x1bxyz", 9, "abcdef…"},
		// An escaped backslash before the cut is whole: it stays.
		{`abcdef\\xyz`, 10, `abcdef\\…`},
	} {
		if got := cut(tc.in, tc.width); got != tc.want {
			t.Errorf("cut(%q, %d) = %q; want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

// `go install github.com/queuekit/queuekit/cmd/queuekit@latest` refuses a
// module whose go.mod has replace directives ("The go.mod file for the module
// providing named packages contains one or more replace directives"): local
// development goes through go.work instead.
func TestGoModHasNoReplaceDirective(t *testing.T) {
	out, err := exec.Command("go", "mod", "edit", "-json", "go.mod").Output()
	if err != nil {
		t.Fatalf("go mod edit -json: %v", err)
	}
	var mf struct {
		Module  struct{ Path string }
		Replace []struct{ Old, New struct{ Path string } }
		Exclude []struct{ Path string }
	}
	if err := json.Unmarshal(out, &mf); err != nil {
		t.Fatal(err)
	}
	for _, r := range mf.Replace {
		t.Errorf("cmd/queuekit/go.mod: replace %s => %s: go install …@latest refuses modules with replace directives; use go.work", r.Old.Path, r.New.Path)
	}
	if len(mf.Exclude) > 0 {
		t.Errorf("cmd/queuekit/go.mod has exclude directives, which go install …@latest refuses too")
	}
	if mf.Module.Path != "github.com/queuekit/queuekit/cmd/queuekit" {
		t.Errorf("module path %q", mf.Module.Path)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string // in stderr
	}{
		{"no arguments", nil, nil, "Usage:"},
		{"an unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"dlq without a command", nil, []string{"dlq"}, "missing command"},
		{"an unknown dlq command", nil, []string{"dlq", "drop"}, `unknown command "drop"`},
		{"an unknown flag", nil, []string{"dlq", "list", "--queue", "q", "--amqp-url", "amqp://x/", "--colour"}, "flag provided but not defined: -colour"},
		{"no target", nil, []string{"dlq", "list"}, "no target"},
		{"both brokers", nil, []string{"dlq", "list", "--queue", "q", "--topic", "t"}, "not both"},
		{"a queue without a URL", nil, []string{"dlq", "list", "--queue", "q"}, "give --amqp-url or set AMQP_URL"},
		{"a topic without brokers", nil, []string{"dlq", "list", "--topic", "t"}, "give --kafka-brokers or set KAFKA_BROKERS"},
		{"a URL without a queue", []string{"AMQP_URL=amqp://x/"}, []string{"dlq", "list", "--amqp-url", "amqp://x/"}, "--queue"},
		{"redrive without a selection", []string{"AMQP_URL=amqp://x/"}, []string{"dlq", "redrive", "--queue", "q"}, "select the dead letters"},
		{"purge without a selection", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "purge", "--topic", "t", "--dry-run"}, "select the dead letters"},
		{"--all with a filter", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "purge", "--topic", "t", "--all", "--reason", "x"}, "leave it out"},
		{"show without an id", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "show", "--topic", "t"}, "exactly one dead letter ID"},
		{"show with two ids", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "show", "--topic", "t", "a", "b"}, "exactly one dead letter ID"},
		{"list with an argument", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "list", "--topic", "t", "0:1"}, "unexpected argument"},
		{"a bad duration", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "list", "--topic", "t", "--older-than", "yesterday"}, "invalid value"},
		{"a negative limit", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "list", "--topic", "t", "--limit", "-1"}, "--limit"},
		{"a zero timeout", []string{"KAFKA_BROKERS=x:1"}, []string{"dlq", "list", "--topic", "t", "--timeout", "0s"}, "--timeout"},
		{"an escape sequence in a command is not printed raw", nil, []string{"\x1b]0;x\x07"}, `unknown command "\x1b]0;x\x07"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := queuekit(t, tc.env, tc.args...)
			wantCode(t, r, exitUsage)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, r.stderr)
			}
			if strings.ContainsRune(r.stderr, 0x1b) {
				t.Errorf("stderr holds a raw ESC:\n%q", r.stderr)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := queuekit(t, nil, "--help")
	wantCode(t, r, exitOK)
	for _, want := range []string{"dlq list", "dlq redrive", "--dry-run", "Exit codes:", "3  cannot connect"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("queuekit --help does not say %q", want)
		}
	}
	r = queuekit(t, nil, "dlq", "redrive", "--help")
	wantCode(t, r, exitOK)
	for _, want := range []string{"-max-redrives", "-dry-run", "-to", "Exit codes:"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("queuekit dlq redrive --help does not say %q", want)
		}
	}
	r = queuekit(t, nil, "version")
	wantCode(t, r, exitOK)
	if !strings.HasPrefix(r.stdout, "queuekit ") {
		t.Errorf("queuekit version printed %q", r.stdout)
	}
}

// A malformed URL is a usage error (exit 2) whose message never shows the
// password, however the URL is broken.
func TestBadURLs(t *testing.T) {
	const password = "s3cret-Pa55"
	for _, u := range []string{
		"amqp://u:" + password + "@h:notaport/",
		"amqp://u:s3cret#Pa55@h/",
		"http://u:" + password + "@h/",
		"amqp:u:" + password + "@h/",
	} {
		r := queuekit(t, nil, "dlq", "list", "--queue", "q", "--amqp-url", u)
		wantCode(t, r, exitUsage)
		if strings.Contains(r.stdout+r.stderr, password) || strings.Contains(r.stdout+r.stderr, "s3cret#Pa55") {
			t.Errorf("the password is printed:\n%s", r)
		}
		if strings.Contains(r.stderr, "queuekit: queuekit:") {
			t.Errorf("stderr repeats the prefix:\n%s", r.stderr)
		}
	}
}
