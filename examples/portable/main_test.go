package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
)

// TestMain checks for leaked goroutines, then deletes the vhost the RabbitMQ
// case created (after the leak check: deleting it closes whatever is still
// connected there, which would hide a leaked connection) and prints one line
// when the case was skipped for want of a broker.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if err := testBroker.teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "queuekit:", err)
			code = 1
		}
		if skipped.Load() > 0 {
			printSummary("queuekit: the RabbitMQ case of examples/portable skipped: " + testBroker.why())
		}
		os.Exit(code)
	}))
}

// The same program, run with only its constructors changed, on the
// in-process broker, on RabbitMQ (in a vhost of the test's own) and on Kafka
// (an in-process kfake cluster): in a clean run every order arrives exactly
// once — handled once, acknowledged once, nothing requeued or
// dead-lettered, nothing left at the broker afterwards (asked through
// broker.BacklogReporter on a fresh source from the same constructor).
func TestSameProgramOnEveryBroker(t *testing.T) {
	const orders = 100
	cases := []struct {
		name string
		// constructor returns the broker's constructor for dest: the only
		// thing that differs between the cases.
		constructor func(t *testing.T, dest string) func() (broker.Publisher, broker.Source, error)
	}{
		{"memory", func(t *testing.T, dest string) func() (broker.Publisher, broker.Source, error) {
			b := memory.NewBroker()
			t.Cleanup(func() { b.Close() })
			return func() (broker.Publisher, broker.Source, error) { return onMemory(b, dest) }
		}},
		{"rabbitmq", func(t *testing.T, dest string) func() (broker.Publisher, broker.Source, error) {
			url := amqpURLForTest(t, dest)
			return func() (broker.Publisher, broker.Source, error) { return onRabbitMQ(url, dest, testLogger(t)) }
		}},
		{"kafka", func(t *testing.T, dest string) func() (broker.Publisher, broker.Source, error) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return func() (broker.Publisher, broker.Source, error) {
				return onKafka(context.Background(), c.ListenAddrs(), dest, testLogger(t))
			}
		}},
		{"franz", func(t *testing.T, dest string) func() (broker.Publisher, broker.Source, error) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return func() (broker.Publisher, broker.Source, error) {
				return onFranz(context.Background(), c.ListenAddrs(), dest, testLogger(t))
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dest := fmt.Sprintf("queuekit-portable-test-%08x", rand.Uint32())
			open := tc.constructor(t, dest)

			pub, src, err := open()
			if err != nil {
				t.Fatalf("constructor = %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			rep, err := run(ctx, pub, src, config{Dest: dest, Orders: orders, Timeout: time.Minute, Logger: testLogger(t)}, &out)
			t.Logf("output:\n%s", out.String())
			if err != nil {
				t.Fatalf("run = %v", err)
			}
			if rep.Interrupted {
				t.Fatal("run reports Interrupted; want a complete run")
			}

			if rep.Published != orders {
				t.Errorf("published %d orders; want %d", rep.Published, orders)
			}
			for i := 1; i <= orders; i++ {
				if n := rep.Handled[fmt.Sprintf("order-%d", i)]; n != 1 {
					t.Errorf("order-%d handled %d times; want exactly once", i, n)
				}
			}
			if len(rep.Handled) != orders {
				t.Errorf("handled %d distinct orders; want %d", len(rep.Handled), orders)
			}
			if rep.Earlier != 0 {
				t.Errorf("handled %d orders of an earlier run; want none on a fresh %s", rep.Earlier, dest)
			}
			want := map[consumer.Settlement]int{consumer.SettledAck: orders}
			if fmt.Sprint(rep.Settled) != fmt.Sprint(want) {
				t.Errorf("settlements %v; want %v (every order acknowledged once, nothing else)", rep.Settled, want)
			}
			if rep.Drain.Abandoned != 0 {
				t.Errorf("drain abandoned %d handlers; want 0", rep.Drain.Abandoned)
			}

			// Nothing is left to be delivered again: the queue is empty, or
			// the group committed every offset.
			pub2, src2, err := open()
			if err != nil {
				t.Fatalf("constructor (second time) = %v", err)
			}
			defer pub2.Close(context.Background())
			defer src2.Close(context.Background())
			br, ok := src2.(broker.BacklogReporter)
			if !ok {
				t.Fatalf("%T is not a broker.BacklogReporter", src2)
			}
			backlog, err := br.Backlog(ctx)
			if err != nil {
				t.Fatalf("Backlog = %v", err)
			}
			if backlog.Messages != 0 {
				t.Errorf("backlog after the run %+v; want 0 messages (every order settled for good)", backlog)
			}
		})
	}
}

// A bad -orders or -broker is an error, not a panic.
func TestStartRejectsBadArguments(t *testing.T) {
	for _, tc := range []struct {
		which  string
		orders int
	}{{"memory", -1}, {"memory", 1_000_000}, {"sqs", 10}} {
		if err := start(context.Background(), tc.which, config{Dest: "x", Orders: tc.orders}, &bytes.Buffer{}); err == nil {
			t.Errorf("start(%q, Orders %d) = nil; want an error", tc.which, tc.orders)
		}
	}
}

// The program as main runs it, on the in-process broker: what the README
// shows.
func TestStartOnMemory(t *testing.T) {
	var out bytes.Buffer
	if err := start(context.Background(), "memory", config{Dest: defaultDest, Orders: 20, Timeout: time.Minute}, &out); err != nil {
		t.Fatalf("start = %v", err)
	}
	for _, line := range []string{
		"on the in-process broker (memory)",
		"publishing 20 orders to " + defaultDest + ", keyed by customer",
		"published 20 orders, each taken by the broker before PublishJSON returned",
		"handled 20 of 20 orders in ",
		": 20 once, 0 more than once",
		"settled: 20 ack",
	} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("output lacks %q:\n%s", line, out.String())
		}
	}
	// The last handler may still be settling when the program stops the
	// consumer (it stops once every order was handled): it then finishes in
	// the drain. Nothing is given back or abandoned either way.
	if drained := regexp.MustCompile(`shut down gracefully: \d+ in flight finished, 0 given back, 0 abandoned`); !drained.MatchString(out.String()) {
		t.Errorf("output lacks a graceful shutdown with nothing given back or abandoned:\n%s", out.String())
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// tWriter sends log lines to t.Log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The RabbitMQ case runs in a vhost of its own (queuekit-portable-test-<random>),
// created with rabbitmqctl on the broker at QUEUEKIT_AMQP_URL (or the local
// default) and deleted at the end, so that it leaves nothing on a broker
// other programs use. When rabbitmqctl cannot create it (not installed, no
// Erlang cookie, or it manages another broker than the URL's), it runs in the
// URL's own vhost, on names of its own, which it deletes.
var testBroker rabbitServer

// skipped counts the cases skipped for want of a broker.
var skipped atomic.Int64

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
		vhost := fmt.Sprintf("queuekit-portable-test-%08x", rand.Uint32())
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

// amqpURLForTest returns the URL to run the RabbitMQ case on: the tests' own
// vhost on the broker. Without one, it deletes what the case declares for
// dest at the end. It skips the test when no RabbitMQ answers, or fails it
// when QUEUEKIT_REQUIRE_BROKERS=1 (CI).
func amqpURLForTest(t *testing.T, dest string) string {
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
		t.Logf("rabbitmqctl cannot make a vhost for the tests on %s: running in its own vhost, on names of the test's own", rabbitmq.RedactURL(testBroker.base))
		t.Cleanup(func() { deleteTopology(t, testBroker.url, dest) })
	}
	return testBroker.url
}

// deleteTopology deletes what onRabbitMQ's source declares for dest.
func deleteTopology(t *testing.T, url, dest string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer ch.Close()
	for _, q := range []string{dest + ".retry", dest, dest + ".dlq"} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("cleanup: delete the queue %s: %v", q, err)
		}
	}
	for _, x := range []string{dest, dest + ".dlx"} {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			t.Errorf("cleanup: delete the exchange %s: %v", x, err)
		}
	}
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
