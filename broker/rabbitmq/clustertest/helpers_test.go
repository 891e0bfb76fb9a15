package clustertest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/consumer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if n := skipped.Load(); n > 0 {
			printSummary(fmt.Sprintf("queuekit: %d RabbitMQ cluster tests skipped: QUEUEKIT_RABBITMQ_CLUSTER is unset (start one with .ci/rabbitmq-cluster start)", n))
		}
		os.Exit(code)
	}))
}

// skipped counts the tests skipped for want of the cluster, for the one
// summary line.
var skipped atomic.Int64

// skipOrFail fails the test under QUEUEKIT_REQUIRE_BROKERS=1 (in CI a
// missing broker is a failure), else skips it and counts the skip.
func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
		t.Fatal(why + " (QUEUEKIT_REQUIRE_BROKERS=1)")
	}
	skipped.Add(1)
	t.Skip(why)
}

// vhostOf returns the vhost an AMQP URL names ("/" when its path is empty).
func vhostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Path == "" || u.Path == "/" {
		return "/"
	}
	return strings.TrimPrefix(u.Path, "/")
}

// withVhost returns raw with its path naming vhost.
func withVhost(raw, vhost string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Path, u.RawPath = "/"+vhost, ""
	return u.String()
}

// userOf returns the user name of an AMQP URL, "guest" when it has none.
func userOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil && u.User.Username() != "" {
		return u.User.Username()
	}
	return "guest"
}

// firstLine returns the first line of s: rabbitmqctl follows its error
// with a page of diagnostics.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i]) + " …"
	}
	return s
}

// waitFor polls cond every 20ms until it is true or d passed.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quietLogger discards the logs of sources whose logging is not under test.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runInBackground fails the test if consumer.New failed (err), then runs c
// until cancel is called; done receives Run's result.
func runInBackground(t testing.TB, c *consumer.Consumer, err error) (ctx context.Context, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- c.Run(ctx) }()
	return ctx, cancel, ch
}

// printSummary shows line to whoever runs the tests, without -v: go test in
// package list mode discards what a passing test binary prints unless -v,
// so without -v and when stdout is not the terminal the line goes to the
// controlling terminal (/dev/tty) too, as broker/rabbitmq's summary does.
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
