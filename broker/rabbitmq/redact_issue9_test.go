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

// Issue 9 (hostile review of examples/gin): a URL without "//" after the
// scheme ("amqp:u:pw@host:1") was accepted, and amqp091 dialled its default,
// localhost:5672 as guest — another broker than the one named.
func TestIssue9URLWithoutSlashesIsRefused(t *testing.T) {
	for _, u := range []string{"amqp:u:S3cretPW@127.0.0.1:1", "amqps:u:S3cretPW@127.0.0.1:1/vh"} {
		_, err := NewSource(Config{Dialer: Dialer{URL: u}, Queue: "q"})
		if err == nil || !strings.Contains(err.Error(), `missing "//"`) {
			t.Fatalf("NewSource(%q) = %v; want an invalid-configuration error about the missing //", u, err)
		}
		if strings.Contains(err.Error(), "S3cretPW") {
			t.Fatalf("NewSource(%q) = %q; shows the password", u, err)
		}
	}
}
