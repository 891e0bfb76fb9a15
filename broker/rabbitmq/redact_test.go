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
		{"amqp://u:1234/pw@host:5672/", "amqp://xxxxx@host:5672/"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactErrHidesThePasswordInLibraryErrorsButKeepsTheChain(t *testing.T) {
	raw := "amqp://guest:hunter2@host:5672/"
	base := errors.New("dial " + raw + " failed; password hunter2")
	err := RedactError(base, raw)
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("RedactError(...).Error() = %q; still has the password", err)
	}
	if !errors.Is(err, base) {
		t.Fatalf("errors.Is(RedactError(base), base) = false; want true")
	}
	if err := RedactError(nil, raw); err != nil {
		t.Errorf("RedactError(nil, url) = %v; want nil", err)
	}
	clean := errors.New("connection refused")
	if err := RedactError(clean, raw); err != clean {
		t.Errorf("RedactError of a text without the password = %#v; want the error itself", err)
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
