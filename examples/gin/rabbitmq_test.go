package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// The RabbitMQ tests run the service in a vhost of their own
// (queuekit-gin-test-<random>), created with rabbitmqctl on the broker at
// QUEUEKIT_AMQP_URL (or the local default) and deleted at the end, so that
// they leave nothing on a broker other programs use and close no connection
// but their own (deleting the vhost closes only what is connected to it).
// When rabbitmqctl cannot create it (not installed, no Erlang cookie, or it
// manages another broker than the URL's), they run in the URL's own vhost,
// in queues of their own, which they delete (issue 9 item 12).
var testBroker rabbitServer

// skipped counts the tests skipped for want of a broker, for the summary
// TestMain prints.
var skipped atomic.Int64

const defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

type rabbitServer struct {
	once    sync.Once
	base    string // QUEUEKIT_AMQP_URL, or the local default
	url     string // base in the tests' vhost when they have one
	vhost   string // the tests' own vhost, "" without one
	dialErr error  // nothing answers at base
}

func (b *rabbitServer) setup() {
	b.once.Do(func() {
		b.base = os.Getenv("QUEUEKIT_AMQP_URL")
		if b.base == "" {
			b.base = defaultAMQPURL
		}
		b.url = b.base
		conn, err := amqp.Dial(b.base)
		if err != nil {
			b.dialErr = err
			return
		}
		_ = conn.Close()
		vhost := fmt.Sprintf("queuekit-gin-test-%08x", rand.Uint32())
		if _, err := rabbitmqctl("-q", "add_vhost", vhost); err != nil {
			return // no usable rabbitmqctl here: the URL's vhost it is
		}
		u, err := url.Parse(b.base)
		if err == nil {
			user := "guest"
			if u.User != nil && u.User.Username() != "" {
				user = u.User.Username()
			}
			_, err = rabbitmqctl("-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
		}
		if err == nil {
			// rabbitmqctl manages the local node, which need not be the
			// broker the URL names: use the vhost only where it exists.
			u.Path, u.RawPath = "/"+vhost, ""
			if conn, err = amqp.Dial(u.String()); err == nil {
				_ = conn.Close()
				b.url, b.vhost = u.String(), vhost
				return
			}
		}
		_, _ = rabbitmqctl("-q", "delete_vhost", vhost)
	})
}

// teardown deletes the tests' vhost, with everything in it.
func (b *rabbitServer) teardown() error {
	if b.vhost == "" {
		return nil
	}
	var err error
	for range 3 { // rabbitmqctl can time out on a loaded machine
		if _, err = rabbitmqctl("-q", "delete_vhost", b.vhost); err == nil {
			return nil
		}
	}
	return fmt.Errorf("the tests' vhost %s is left on the broker: %w", b.vhost, err)
}

func (b *rabbitServer) why() string {
	return fmt.Sprintf("no RabbitMQ at %s (%v); set QUEUEKIT_AMQP_URL or start rabbitmq-server", rabbitmq.RedactURL(b.base), b.dialErr)
}

func rabbitmqctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// amqpURLForTest returns the URL the service under test is given: the
// tests' own vhost on the broker. It skips the test when no RabbitMQ
// answers, or fails it when QUEUEKIT_REQUIRE_BROKERS=1 (CI).
func amqpURLForTest(t *testing.T) string {
	t.Helper()
	testBroker.setup()
	if testBroker.dialErr != nil {
		msg := testBroker.why()
		if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
			t.Fatal(msg + " (QUEUEKIT_REQUIRE_BROKERS=1)")
		}
		skipped.Add(1)
		t.Skip(msg)
	}
	if testBroker.vhost == "" {
		t.Logf("rabbitmqctl cannot make a vhost for the tests on %s: running in its own vhost, in queues of the test's own", rabbitmq.RedactURL(testBroker.base))
	}
	return testBroker.url
}

// printSummary shows line to whoever runs the tests, without -v.
//
// go test in package list mode (go test ./...) discards everything a
// passing test binary writes, stdout and stderr alike, unless -v. So,
// without -v and when stdout is not the terminal itself, the line goes to
// the controlling terminal (/dev/tty) too; without one (CI), stdout is all
// there is: shown with -v and when the package fails.
func printSummary(line string) {
	fmt.Println(line)
	if testing.Verbose() {
		return
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(tty, line)
		_ = tty.Close()
	}
}
