package rabbitmq

import (
	"strings"
	"testing"
)

// Issue 9 (hostile review D1): a password with an unescaped "#", "?" or "/"
// ends the URL's authority early; net/url's error then quotes the part of the
// password before that character as a port, and the constructors' errors
// showed it.
func TestIssue9ConfigErrorsNeverShowAPasswordPrefix(t *testing.T) {
	for _, u := range []string{
		"amqp://guest:S3cret#PW@127.0.0.1:5672/v",
		"amqp://guest:S3cret?PW@127.0.0.1:5672/v",
		"amqp://guest:S3cret/PW@127.0.0.1:5672/v",
		"amqp://guest:S3cretPW#@127.0.0.1:5672/v",
		"amqp://guest:S3c#retPW@127.0.0.1:5672/v",
	} {
		_, err := NewSource(Config{Dialer: Dialer{URL: u}, Queue: "q"})
		if err == nil {
			t.Fatalf("NewSource(%q) = nil error; want invalid configuration", u)
		}
		if strings.Contains(err.Error(), "S3c") {
			t.Errorf("NewSource(%q) = %q; shows (part of) the password", u, err)
		}
		_, err = NewPublisher(PublisherConfig{Dialer: Dialer{URL: u}})
		if err != nil && strings.Contains(err.Error(), "S3c") {
			t.Errorf("NewPublisher(%q) = %q; shows (part of) the password", u, err)
		}
	}
}
