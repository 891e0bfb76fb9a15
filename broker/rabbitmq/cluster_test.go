package rabbitmq

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/broker"
)

// TestDialerURLsTriesTheNextNode: a Connection whose first node does not
// answer dials the next one; when none answers, the error names each node,
// without its password. (The local broker stands in for a live node.)
func TestDialerURLsTriesTheNextNode(t *testing.T) {
	dead := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		return "amqp://app:s3cret-pw@" + addr + "/"
	}
	d1, d2 := dead(), dead()

	t.Run("all dead", func(t *testing.T) {
		conn, err := NewConnection(Dialer{URLs: []string{d1, d2}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.channel()
		if err == nil {
			t.Fatal("channel() = nil error with every node dead")
		}
		for _, u := range []string{d1, d2} {
			if !strings.Contains(err.Error(), RedactURL(u)) {
				t.Errorf("error %q does not name node %s", err, RedactURL(u))
			}
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("error %q shows the password", err)
		}
		var ne *net.OpError
		if !errors.As(err, &ne) {
			t.Errorf("error %q does not wrap the dial errors (*net.OpError)", err)
		}
		_ = conn.Close(context.Background())
	})

	t.Run("first dead", func(t *testing.T) {
		needBroker(t)
		conn, err := NewConnection(Dialer{URLs: []string{d1, amqpURL()}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		conn.init()
		conn.addrs = []string{d1, amqpURL()} // not shuffled: the dead one first
		ch, l, err := conn.channelOn()
		if err != nil {
			t.Fatalf("channel() = %v; want the second node", err)
		}
		_ = ch.Close()
		if l.node != RedactURL(amqpURL()) {
			t.Errorf("connected to %s; want %s", l.node, RedactURL(amqpURL()))
		}
	})
}

// TestDialerURLsValidation: every address is checked by the constructor.
func TestDialerURLsValidation(t *testing.T) {
	good := "amqp://app:s3cret-pw@127.0.0.1:5672/"
	for _, tc := range []struct {
		name string
		d    Dialer
		want string // in the error
	}{
		{"URL and URLs", Dialer{URL: good, URLs: []string{good}}, "both URL and URLs"},
		{"empty element", Dialer{URLs: []string{good, ""}}, "URLs[1] is empty"},
		{"bad scheme", Dialer{URLs: []string{good, "http://app:s3cret-pw@h/"}}, "URLs[1]"},
		{"no slashes", Dialer{URLs: []string{"amqp:app:s3cret-pw@h"}}, "URLs[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) { checkInvalidDialer(t, tc.d, tc.want) })
	}
	if _, err := NewConnection(Dialer{URLs: []string{good, "amqp://app:s3cret-pw@127.0.0.2:5672/"}}); err != nil {
		t.Errorf("two good URLs: %v", err)
	}
}

// checkInvalidDialer checks that NewConnection, NewPublisher and NewSource
// each refuse d with an error wrapping broker.ErrInvalidConfig that says
// want and shows no password (the tests' URLs hold "s3cret").
func checkInvalidDialer(t *testing.T, d Dialer, want string) {
	t.Helper()
	for _, try := range []func() error{
		func() error { _, err := NewConnection(d); return err },
		func() error { _, err := NewPublisher(PublisherConfig{Dialer: d}); return err },
		func() error { _, err := NewSource(Config{Dialer: d, Queue: "q"}); return err },
	} {
		err := try()
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Fatalf("error = %v; want one wrapping broker.ErrInvalidConfig", err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error %q shows the password", err)
		}
	}
}
