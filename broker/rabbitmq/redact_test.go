package rabbitmq

import (
	"errors"
	"strings"
	"testing"
)

func TestRedactURLHidesThePasswordAndKeepsTheRest(t *testing.T) {
	tests := []struct{ in, want string }{
		{"amqp://guest:s3cret@host:5672/vh", "amqp://guest:xxxxx@host:5672/vh"},
		{"amqps://user:p%40ss@host/", "amqps://user:xxxxx@host/"},
		{"amqp://host:5672/", "amqp://host:5672/"},
		{"amqp://onlyuser@host/", "amqp://onlyuser@host/"},
		{"::not a url", "<unparseable URL>"},
	}
	for _, tt := range tests {
		if got := redactURL(tt.in); got != tt.want {
			t.Errorf("redactURL(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactErrHidesThePasswordInLibraryErrorsButKeepsTheChain(t *testing.T) {
	raw := "amqp://guest:hunter2@host:5672/"
	base := errors.New("dial " + raw + " failed; password hunter2")
	err := redactErr(base, raw)
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("redactErr(...).Error() = %q; still has the password", err)
	}
	if !errors.Is(err, base) {
		t.Fatalf("errors.Is(redactErr(base), base) = false; want true")
	}
}

func TestConstructorErrorsNeverShowThePassword(t *testing.T) {
	_, err := NewSource(Config{Queue: "q", Dialer: Dialer{URL: "http://guest:topsecret@host/"}})
	if err == nil {
		t.Fatal("NewSource with an http:// URL = nil error; want an error")
	}
	if strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("NewSource error %q shows the password", err)
	}
}
