package admin

import "testing"

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"no url here", "no url here"},
		{`dial "amqp://svc:S3cret@mq:5672/vh": refused`, `dial "amqp://svc:xxxxx@mq:5672/vh": refused`},
		{"amqps://u:p%40ss%2Fw@h/", "amqps://u:xxxxx@h/"},
		{"amqp://user@h/ and amqp://h/", "amqp://user@h/ and amqp://h/"},
		{"kafka://a:b@h1 redis://:onlypass@h2", "kafka://a:xxxxx@h1 redis://:xxxxx@h2"},
		{"https://h/x?password=Hunter2&y=1", "https://h/x?password=xxxxx&y=1"},
		{"https://h/x?y=1&PWD=abc;token=t0k", "https://h/x?y=1&PWD=xxxxx;token=xxxxx"},
		{"user@example.com a=b", "user@example.com a=b"},
	} {
		if got := redact(c.in); got != c.want {
			t.Errorf("redact(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("amqp://u:p@h")
	f.Fuzz(func(t *testing.T, s string) {
		out := redact(s)
		if redact(out) != out {
			t.Errorf("redact is not idempotent on %q", s)
		}
	})
}
