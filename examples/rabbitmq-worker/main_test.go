package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/rabbitmq"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines, then deletes the vhost the tests
// created (after the leak check: deleting it closes whatever is still
// connected there, which would hide a leaked connection) and prints one line
// when tests were skipped for want of a broker.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if err := testBroker.teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "queuekit:", err)
			code = 1
		}
		if n := skipped.Load(); n > 0 {
			tests := "tests"
			if n == 1 {
				tests = "test"
			}
			printSummary(fmt.Sprintf("queuekit: %d RabbitMQ %s of examples/rabbitmq-worker skipped: %s", n, tests, testBroker.why()))
		}
		os.Exit(code)
	}))
}

// The tests run the worker in a vhost of their own (queuekit-test-<random>),
// created with rabbitmqctl on the broker at QUEUEKIT_AMQP_URL (or the local
// default) and deleted at the end, so that they leave nothing on a broker
// other programs use. When rabbitmqctl cannot create it (not installed, no
// Erlang cookie, or it manages another broker than the URL's), they run in
// the URL's own vhost: the worker deletes what it created there.
var testBroker rabbitServer

// skipped counts the tests skipped for want of a broker, for the summary.
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
		b.base = envOr("QUEUEKIT_AMQP_URL", defaultURL)
		b.url = b.base
		conn, err := dial(b.base)
		if err != nil {
			b.dialErr = err
			return
		}
		_ = conn.Close()
		vhost := fmt.Sprintf("queuekit-test-%08x", rand.Uint32())
		if _, err := rabbitmqctl("-q", "add_vhost", vhost); err != nil {
			return // no rabbitmqctl here: the URL's vhost it is
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
			if conn, err = dial(u.String()); err == nil {
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
	for i := range 3 { // rabbitmqctl can time out on a loaded machine
		out, derr := rabbitmqctl("-q", "delete_vhost", b.vhost)
		if derr == nil || i > 0 && strings.Contains(out, "does not exist") { // a timed-out try that did it
			return nil
		}
		err = derr
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
		err = fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
		if o := strings.TrimSpace(string(out)); o != "" {
			err = fmt.Errorf("%w: %s", err, o)
		}
	}
	return string(out), err
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

// testURL is the broker URL the tests give the worker.
func testURL() string {
	testBroker.setup()
	return testBroker.url
}

// needBroker skips the test when no RabbitMQ answers at testURL, or fails it
// when QUEUEKIT_REQUIRE_BROKERS=1 (CI).
func needBroker(t *testing.T) {
	t.Helper()
	testBroker.setup()
	if testBroker.dialErr == nil {
		return
	}
	msg := testBroker.why()
	if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
		t.Fatal(msg + " (QUEUEKIT_REQUIRE_BROKERS=1)")
	}
	skipped.Add(1)
	t.Skip(msg)
}

// The worker handles the good orders and order-8 (after two delayed
// retries), dead-letters order-7 at once as permanent and order-9 after the
// delivery budget, each with its reason, and deletes its queues.
func TestWorkerDeadLettersAndRetries(t *testing.T) {
	needBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout bytes.Buffer
	logs := &lockedBuffer{}
	t.Logf("broker: %s", rabbitmq.RedactURL(testURL()))
	sum, err := run(ctx, config{URL: testURL(), Timeout: time.Minute, Logger: debugLogger(logs)}, &stdout)
	t.Logf("output:\n%s", stdout.String())
	if err != nil {
		t.Fatalf("run = %v", err)
	}
	if sum.Interrupted {
		t.Fatal("run reports Interrupted; want a complete run")
	}
	if len(sum.Published) != 9 {
		t.Errorf("published %d orders; want 9", len(sum.Published))
	}

	// Handled: the six good orders on their first delivery (a connection
	// loss caused by another test could redeliver one, hence "at least"),
	// and order-8 on its third, after two 503s.
	for _, id := range []string{"order-1", "order-2", "order-3", "order-4", "order-5", "order-6"} {
		if a, ok := sum.Handled[id]; !ok || a < 1 {
			t.Errorf("Handled[%s] = %d, %v; want handled", id, a, ok)
		}
	}
	if a := sum.Handled["order-8"]; a < 3 {
		t.Errorf("order-8 handled on attempt %d; want 3 (after two failed deliveries through the retry queue)", a)
	}
	for _, id := range []string{"order-7", "order-9"} {
		if _, ok := sum.Handled[id]; ok {
			t.Errorf("%s was handled; want it dead-lettered", id)
		}
	}
	if len(sum.Handled) != 7 {
		t.Errorf("handled %d distinct orders (%v); want 7", len(sum.Handled), sum.Handled)
	}

	// Dead letters, as read back from the dead-letter queue's headers.
	got := map[string]deadLetter{}
	for _, d := range sum.DeadLetters {
		if _, dup := got[d.ID]; dup {
			t.Logf("dead letter %s twice (at-least-once after a connection loss)", d.ID)
		}
		got[d.ID] = d
	}
	if len(got) != 2 {
		t.Fatalf("dead letters %+v; want order-7 and order-9", sum.DeadLetters)
	}
	if d := got["order-7"]; !d.Permanent || d.Attempts != 1 || !strings.Contains(d.Error, "cannot unmarshal") {
		t.Errorf("dead letter order-7 = %+v; want permanent, 1 attempt, a JSON decode error", d)
	}
	if d := got["order-9"]; d.Permanent || d.Attempts < maxDeliveries || !strings.Contains(d.Error, "panic: runtime error") {
		t.Errorf("dead letter order-9 = %+v; want not permanent, %d attempts, the panic's text", d, maxDeliveries)
	}

	// The queues it made are gone.
	if !strings.Contains(stdout.String(), "deleted "+sum.Queue) {
		t.Errorf("output does not say the queues were deleted")
	}
	for _, q := range []string{sum.Queue, sum.Queue + ".dlq", sum.Queue + ".retry"} {
		if queueExists(t, q) {
			t.Errorf("queue %s still exists after the run", q)
		}
	}
	// Credentials are never printed nor logged (the user name is, as in
	// "guest:xxxxx@").
	if u, err := url.Parse(testURL()); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			// guest:guest: the user name alone is not a leak.
			leaks := []string{u.User.String() + "@"}
			if pw != u.User.Username() {
				leaks = append(leaks, pw)
			}
			for _, s := range leaks {
				if strings.Contains(stdout.String(), s) {
					t.Error("the output contains the broker password")
				}
				if strings.Contains(logs.String(), s) {
					t.Error("the logs contain the broker password")
				}
			}
		}
	}
	if logs.String() == "" {
		t.Error("nothing was logged; want the failed deliveries in the logs")
	}
}

// With -redrive, once every order is settled, the run lists the dead letters
// with their reasons, fixes the bug and redrives the dead letter it caused
// (order-9, selected by its reason): the worker handles the copy on a fresh
// delivery budget (attempt 1) with x-queuekit-redriven 1, and order-7, whose
// body does not decode, stays the only dead letter.
func TestWorkerRedrivesAfterTheFix(t *testing.T) {
	needBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout bytes.Buffer
	sum, err := run(ctx, config{URL: testURL(), Timeout: time.Minute, Redrive: true}, &stdout)
	t.Logf("output:\n%s", stdout.String())
	if err != nil {
		t.Fatalf("run = %v", err)
	}
	if sum.Interrupted {
		t.Fatal("run reports Interrupted; want a complete run")
	}
	if !slices.Equal(sum.Redriven, []string{"order-9"}) {
		t.Errorf("Redriven = %v; want [order-9]", sum.Redriven)
	}
	if a, ok := sum.Handled["order-9"]; !ok || a != 1 {
		t.Errorf("order-9 handled = attempt %d, %v; want handled on attempt 1 (the redrive resets the delivery budget)", a, ok)
	}
	if n := sum.RedrivenHandled["order-9"]; n != 1 {
		t.Errorf("order-9 handled with x-queuekit-redriven %d; want 1", n)
	}
	if len(sum.Handled) != 8 {
		t.Errorf("handled %d distinct orders (%v); want 8", len(sum.Handled), sum.Handled)
	}
	if len(sum.DeadLetters) != 1 || sum.DeadLetters[0].ID != "order-7" || !sum.DeadLetters[0].Permanent || sum.DeadLettersQueued != 1 {
		t.Errorf("dead letters after the redrive %+v (%d queued); want order-7 alone, permanent", sum.DeadLetters, sum.DeadLettersQueued)
	}
	for _, s := range []string{
		"order-9 after 3 attempts, budget spent: panic: runtime error: invalid memory address or nil pointer dereference", // seen before the fix
		`would send order-9 back`,
		"order-7 stays a dead letter",
		"deleted " + sum.Queue,
	} {
		if !strings.Contains(stdout.String(), s) {
			t.Errorf("output does not contain %q", s)
		}
	}
}

// A queue named with -queue is the user's: the run uses it and keeps it at
// the end, whatever it holds; -delete then deletes only what is empty (the
// retry queue and the queue) and keeps the dead-letter queue with its dead
// letters, and the exchange bound to it.
func TestWorkerKeepsANamedQueue(t *testing.T) {
	needBroker(t)
	q := fmt.Sprintf("%stest-%08x", queuePrefix, rand.Uint32())
	t.Cleanup(func() { forceDelete(t, q) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout bytes.Buffer
	sum, err := run(ctx, config{URL: testURL(), Queue: q, Timeout: time.Minute}, &stdout)
	t.Logf("output:\n%s", stdout.String())
	if err != nil {
		t.Fatalf("run = %v", err)
	}
	if len(sum.DeadLetters) != 2 {
		t.Errorf("dead letters %+v; want order-7 and order-9", sum.DeadLetters)
	}
	for _, name := range []string{q, q + ".retry", q + ".dlq"} {
		if !queueExists(t, name) {
			t.Errorf("queue %s was deleted; want the queues of -queue kept", name)
		}
	}

	var out bytes.Buffer
	kept, err := deleteTopology(testURL(), q, false, &printer{w: &out})
	t.Logf("-delete output:\n%s", out.String())
	if err != nil {
		t.Fatalf("deleteTopology = %v", err)
	}
	if kept != 2 {
		t.Errorf("deleteTopology kept %d objects; want 2 (the dead-letter queue and its exchange)", kept)
	}
	if !queueExists(t, q+".dlq") {
		t.Errorf("queue %s.dlq, holding dead letters, was deleted", q)
	}
	for _, name := range []string{q, q + ".retry"} {
		if queueExists(t, name) {
			t.Errorf("queue %s, empty, was not deleted", name)
		}
	}
	if !strings.Contains(out.String(), "kept "+q+".dlq: it holds 2 messages") {
		t.Errorf("-delete does not say it kept %s.dlq and why", q)
	}
}

// The demo consumes and acknowledges what is in its queue, so it refuses a
// queue that is not an example queue, before connecting.
func TestWorkerRefusesAQueueOfSomeoneElse(t *testing.T) {
	for _, q := range []string{"orders", queuePrefix, "x" + queuePrefix + "orders"} {
		_, err := run(context.Background(), config{URL: "amqp://guest:guest@127.0.0.1:1/", Queue: q, Timeout: time.Minute}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), queuePrefix) {
			t.Errorf("run with Queue %q = %v; want an error naming the prefix %q", q, err, queuePrefix)
		}
	}
}

// A wrong password is fatal at once (retrying cannot help), and neither the
// error, the output nor the logs contain it.
func TestWorkerWrongPassword(t *testing.T) {
	needBroker(t)
	u, err := url.Parse(testURL())
	if err != nil || u.User == nil {
		t.Skipf("cannot make a wrong password for %s", rabbitmq.RedactURL(testURL()))
	}
	const wrong = "wr0ng-pa55w0rd"
	u.User = url.UserPassword(u.User.Username(), wrong)
	var stdout bytes.Buffer
	logs := &lockedBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err = run(ctx, config{URL: u.String(), Timeout: time.Minute, Logger: debugLogger(logs)}, &stdout)
	if err == nil {
		t.Fatal("run with a wrong password = nil; want an error")
	}
	if strings.Contains(err.Error()+stdout.String()+logs.String(), wrong) {
		t.Errorf("the password leaked: err=%v output=%q logs=%q", err, stdout.String(), logs.String())
	}
	if !strings.Contains(err.Error(), "could not use RabbitMQ") || !strings.Contains(err.Error(), "403") {
		t.Errorf("run = %v; want a refusal (403) without waiting for the timeout", err)
	}
}

// An unreachable broker is an error within the timeout, with the URL's
// password redacted, not a hang.
func TestWorkerUnreachableBroker(t *testing.T) {
	var stdout bytes.Buffer
	logs := &lockedBuffer{}
	_, err := run(context.Background(), config{URL: "amqp://guest:s3cret@127.0.0.1:1/", Timeout: 2 * time.Second, Logger: debugLogger(logs)}, &stdout)
	if err == nil {
		t.Fatal("run against a closed port = nil; want an error")
	}
	if strings.Contains(err.Error()+stdout.String()+logs.String(), "s3cret") {
		t.Errorf("the password leaked: err=%v output=%q logs=%q", err, stdout.String(), logs.String())
	}
	if !strings.Contains(err.Error(), "could not connect") {
		t.Errorf("run = %v; want it to say it could not connect", err)
	}
}

// A cancelled context (Ctrl-C) before connecting stops the run cleanly.
func TestWorkerInterruptedBeforeConnecting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	sum, err := run(ctx, config{URL: "amqp://guest:guest@127.0.0.1:1/", Timeout: time.Minute}, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("run = %v; want nil after an interrupt", err)
	}
	if !sum.Interrupted {
		t.Error("summary not marked Interrupted")
	}
}

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// debugLogger logs everything to w, so that a test can check what is in it.
func debugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// forceDelete deletes q's topology whatever it holds, so that a test leaves
// nothing on the broker.
func forceDelete(t *testing.T, q string) {
	t.Helper()
	conn, err := dial(testURL())
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
	for _, name := range []string{q + ".retry", q, q + ".dlq"} {
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			t.Errorf("cleanup: delete %s: %v", name, err)
		}
	}
	if err := ch.ExchangeDelete(q+".dlx", false, false); err != nil {
		t.Errorf("cleanup: delete %s.dlx: %v", q, err)
	}
}

func queueExists(t *testing.T, q string) bool {
	t.Helper()
	conn, err := dial(testURL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	_, err = ch.QueueDeclarePassive(q, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return false
	}
	if err != nil {
		t.Fatalf("passive declare %s: %v", q, err)
	}
	return true
}
