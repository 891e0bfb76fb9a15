package rabbitmq

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/consumer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func amqpURL() string {
	if u := os.Getenv("QUEUEKIT_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

var (
	reachOnce sync.Once
	reachErr  error
)

// needBroker skips the test when no RabbitMQ answers, or fails it when
// QUEUEKIT_REQUIRE_BROKERS=1 (CI).
func needBroker(t testing.TB) {
	t.Helper()
	reachOnce.Do(func() {
		c, err := amqp.Dial(amqpURL())
		if err != nil {
			reachErr = err
			return
		}
		_ = c.Close()
	})
	if reachErr != nil {
		msg := fmt.Sprintf("no RabbitMQ at %s (%v); set QUEUEKIT_AMQP_URL or start rabbitmq-server", redactURL(amqpURL()), redactText(reachErr.Error(), amqpURL()))
		if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
			t.Fatal(msg + " (QUEUEKIT_REQUIRE_BROKERS=1)")
		}
		t.Skip(msg)
	}
}

// needCtl skips (or fails under QUEUEKIT_REQUIRE_BROKERS=1) when rabbitmqctl
// cannot reach the local node: fault-injection tests need it.
func needCtl(t testing.TB) {
	t.Helper()
	needBroker(t)
	if _, err := ctl("status"); err != nil {
		msg := fmt.Sprintf("rabbitmqctl unavailable: %v", err)
		if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

func ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

var nonName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// uniqueQueue returns a queue name for this test and deletes the queue and its
// companions (dlq, retry, dlx) when the test ends.
func uniqueQueue(t testing.TB) string {
	t.Helper()
	q := fmt.Sprintf("qk-test-%s-%06d", nonName.ReplaceAllString(t.Name(), "_"), rand.IntN(1000000))
	t.Cleanup(func() { deleteQueues(q) })
	return q
}

func deleteQueues(q string) {
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		return
	}
	defer c.Close()
	for _, name := range []string{q, q + ".dlq", q + ".retry"} {
		if ch, err := c.Channel(); err == nil {
			_, _ = ch.QueueDelete(name, false, false, false)
			_ = ch.Close()
		}
	}
	if ch, err := c.Channel(); err == nil {
		_ = ch.ExchangeDelete(q+".dlx", false, false)
		_ = ch.Close()
	}
}

// rawConn dials the broker with the plain client, for test setup.
func rawConn(t testing.TB) *amqp.Connection {
	t.Helper()
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// prepublish publishes n persistent messages with ids "0".."n-1" and a body of
// size bytes to q (declared by the caller), with confirms.
func prepublish(t testing.TB, q string, n, size int) {
	t.Helper()
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, size)
	const window = 512
	pending := make([]*amqp.DeferredConfirmation, 0, window)
	flush := func() {
		for _, dc := range pending {
			ok, err := dc.WaitContext(context.Background())
			if err != nil || !ok {
				t.Fatalf("prepublish confirm: ok=%v err=%v", ok, err)
			}
		}
		pending = pending[:0]
	}
	for i := 0; i < n; i++ {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: strconv.Itoa(i), Body: body,
		})
		if err != nil {
			t.Fatalf("prepublish: %v", err)
		}
		pending = append(pending, dc)
		if len(pending) == window {
			flush()
		}
	}
	flush()
}

// queueCounts returns messages ready and unacknowledged for q, from rabbitmqctl.
func queueCounts(t testing.TB, q string) (ready, unacked int) {
	t.Helper()
	out, err := ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == q {
			r, _ := strconv.Atoi(f[1])
			u, _ := strconv.Atoi(f[2])
			return r, u
		}
	}
	t.Fatalf("queue %s not in list_queues output:\n%s", q, out)
	return 0, 0
}

// declareQueue declares q with the given type using the plain client.
func declareQueue(t testing.TB, q, typ string) {
	t.Helper()
	c := rawConn(t)
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: typ}); err != nil {
		t.Fatalf("declare %s: %v", q, err)
	}
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

// hostPort returns the broker address from the URL.
func hostPort() string {
	u, err := url.Parse(amqpURL())
	if err != nil {
		return "127.0.0.1:5672"
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return u.Host + ":5672"
	}
	return u.Host
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
