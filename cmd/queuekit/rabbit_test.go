package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// The RabbitMQ tests run the binary against the broker at QUEUEKIT_AMQP_URL
// (default amqp://guest:guest@127.0.0.1:5672/), in a vhost of their own
// (queuekit-test-<random>) made with rabbitmqctl and deleted at the end, as
// broker/rabbitmq's tests do. Without rabbitmqctl they use the URL's vhost,
// in queues of their own names. No broker: skip, or fail under
// QUEUEKIT_REQUIRE_BROKERS=1.
var rabbit struct {
	once    sync.Once
	base    string
	url     string
	vhost   string
	created bool
	err     error
}

func rabbitURL(t *testing.T) string {
	t.Helper()
	rabbit.once.Do(func() {
		rabbit.base = os.Getenv("QUEUEKIT_AMQP_URL")
		if rabbit.base == "" {
			rabbit.base = "amqp://guest:guest@127.0.0.1:5672/"
		}
		rabbit.url = rabbit.base
		c, err := amqp.Dial(rabbit.base)
		if err != nil {
			rabbit.err = rabbitmq.RedactError(err, rabbit.base)
			return
		}
		_ = c.Close()
		vhost := fmt.Sprintf("queuekit-test-%08x", rand.Uint32())
		if _, err := rabbitmqctl("add_vhost", vhost); err != nil {
			return // the URL's vhost, with queues of the tests' own
		}
		u, _ := url.Parse(rabbit.base)
		user := "guest"
		if u.User != nil && u.User.Username() != "" {
			user = u.User.Username()
		}
		u.Path, u.RawPath = "/"+vhost, ""
		if _, err := rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"); err != nil {
			_, _ = rabbitmqctl("delete_vhost", vhost)
			return
		}
		if c, err := amqp.Dial(u.String()); err != nil { // rabbitmqctl manages another node
			_, _ = rabbitmqctl("delete_vhost", vhost)
			return
		} else {
			_ = c.Close()
		}
		rabbit.url, rabbit.vhost, rabbit.created = u.String(), vhost, true
	})
	if rabbit.err != nil {
		why := fmt.Sprintf("no RabbitMQ at %s (%v); set QUEUEKIT_AMQP_URL or start rabbitmq-server", rabbitmq.RedactURL(rabbit.base), rabbit.err)
		if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
			t.Fatal(why + " (QUEUEKIT_REQUIRE_BROKERS=1)")
		}
		rabbitSkipped.Add(1)
		t.Skip(why)
	}
	return rabbit.url
}

// teardownRabbit deletes the tests' vhost, with everything in it.
func teardownRabbit(code int) int {
	if !rabbit.created {
		return code
	}
	if out, err := rabbitmqctl("delete_vhost", rabbit.vhost); err != nil && !strings.Contains(out, "does not exist") {
		fmt.Fprintf(os.Stderr, "the tests' vhost %s is left on the broker: %v\n", rabbit.vhost, err)
		return 1
	}
	return code
}

// rabbitSkipped counts the tests skipped for want of RabbitMQ, for the one
// line TestMain prints (go test shows skips only with -v).
var rabbitSkipped atomic.Int64

func rabbitmqctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// rabbitFixture makes a work queue of the test's own, with its dead-letter
// topology declared by a real Source, which also dead-letters the seeds and
// takes what the redrives send back.
func rabbitFixture(t *testing.T) (fixture, string) {
	u := rabbitURL(t)
	queue := fmt.Sprintf("cli-%s-%08x", strings.ToLower(t.Name()), rand.Uint32())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, err := rabbitmq.NewSource(rabbitmq.Config{Dialer: rabbitmq.Dialer{URL: u}, Queue: queue, Prefetch: 1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: rabbitmq.Dialer{URL: u}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dcancel()
	if err := src.DeclareTopology(dctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = pub.Close(ctx)
		_ = src.Close(ctx)
		if !rabbit.created { // the URL's own vhost: leave nothing behind
			if c, err := amqp.Dial(u); err == nil {
				if ch, err := c.Channel(); err == nil {
					for _, q := range []string{queue, queue + ".dlq", queue + ".retry"} {
						_, _ = ch.QueueDelete(q, false, false, false)
					}
					_ = ch.ExchangeDelete(queue+".dlx", false, false)
				}
				_ = c.Close()
			}
		}
	})
	receive := func(ctx context.Context) (broker.Delivery, error) { return src.Receive(ctx) }
	f := fixture{
		name: "RabbitMQ " + rabbitmq.RedactURL(u),
		run: func(t *testing.T, args ...string) result {
			t.Helper()
			return queuekit(t, []string{"AMQP_URL=" + u}, append(args, "--queue", queue)...)
		},
		deadLetter: func(t *testing.T, letters []seedLetter) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, l := range letters {
				if err := pub.Publish(ctx, "", &broker.Message{Key: []byte(queue), Body: []byte(l.body), Header: l.header}); err != nil {
					t.Fatal(err)
				}
				d, err := receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				reason := l.reason
				reason.Time = time.Now()
				if err := d.DeadLetter(ctx, reason); err != nil {
					t.Fatal(err)
				}
			}
		},
		arrived: func(t *testing.T) []string {
			return drain(t, receive)
		},
	}
	return f, queue
}

// drain takes every message that arrives within a short wait, acking it.
func drain(t *testing.T, receive func(context.Context) (broker.Delivery, error)) []string {
	t.Helper()
	var got []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		d, err := receive(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(d.Message().Body))
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// The operator scenario against a real RabbitMQ, through the binary.
func TestScenarioRabbitMQ(t *testing.T) {
	f, queue := rabbitFixture(t)
	runScenario(t, f, queue)
}

// Exit codes and redaction on connection failures: a port where nothing
// listens (3), a wrong password (3, and the password is in no output), a
// server that accepts and never answers (bounded by --timeout), a queue
// without dead-letter queue (4).
func TestRabbitMQConnectionFailures(t *testing.T) {
	u := rabbitURL(t)
	const password = "Wr0ng-pa55word-7f3a"
	parsed, _ := url.Parse(u)
	wrong := *parsed
	wrong.User = url.UserPassword(parsed.User.Username(), password)

	t.Run("wrong password: exit 3, password never printed", func(t *testing.T) {
		for _, args := range [][]string{
			{"dlq", "list", "--queue", "q", "--amqp-url", wrong.String()},
			{"dlq", "redrive", "--queue", "q", "--all", "--json", "--amqp-url", wrong.String()},
		} {
			r := queuekit(t, nil, args...)
			wantCode(t, r, exitConnect)
			if strings.Contains(r.stdout+r.stderr, password) || strings.Contains(r.stdout+r.stderr, url.QueryEscape(password)) {
				t.Errorf("the password is printed:\n%s", r)
			}
			if !strings.Contains(r.stderr, "password not allowed") && !strings.Contains(r.stderr, "ACCESS_REFUSED") {
				t.Errorf("stderr does not say the credentials were refused:\n%s", r.stderr)
			}
		}
		// From the environment too.
		r := queuekit(t, []string{"AMQP_URL=" + wrong.String()}, "dlq", "count", "--queue", "q")
		wantCode(t, r, exitConnect)
		if strings.Contains(r.stdout+r.stderr, password) {
			t.Errorf("the password is printed:\n%s", r)
		}
	})

	t.Run("nothing listens at the port: exit 3", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // a port that was just free
		r := queuekit(t, nil, "dlq", "list", "--queue", "q", "--amqp-url", "amqp://guest:"+password+"@"+addr+"/")
		wantCode(t, r, exitConnect)
		if !strings.Contains(r.stderr, "connection refused") || strings.Contains(r.stderr, password) {
			t.Errorf("stderr:\n%s", r.stderr)
		}
	})

	t.Run("a server that never answers: exit 4 after --timeout", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var held []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		}()
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range held {
				c.Close()
			}
		}()
		start := time.Now()
		r := queuekit(t, nil, "dlq", "list", "--queue", "q", "--timeout", "1s", "--amqp-url", "amqp://guest:"+password+"@"+l.Addr().String()+"/")
		took := time.Since(start)
		wantCode(t, r, exitFailed)
		if strings.Contains(r.stderr, password) || !strings.Contains(r.stderr, "--timeout of 1s expired") {
			t.Errorf("stderr:\n%s", r)
		}
		// Not a timing claim on the code: the bound is what is tested. The
		// command must end long before the 10 s dial timeout below it.
		if took > 8*time.Second {
			t.Errorf("queuekit --timeout 1s took %v", took)
		}
	})

	// Review of issue 11's CLI, finding 4: RabbitMQ refuses a vhost that
	// does not exist (or that the user may not use) with 530 NOT_ALLOWED,
	// which exited 4 as a failed operation.
	t.Run("no such vhost: exit 3, the message says vhost", func(t *testing.T) {
		nope := *parsed
		nope.Path = fmt.Sprintf("/queuekit-test-never-created-%08x", rand.Uint32())
		r := queuekit(t, nil, "dlq", "list", "--queue", "q", "--amqp-url", nope.String())
		wantCode(t, r, exitConnect)
		if !strings.Contains(r.stderr, "vhost not found or not allowed") {
			t.Errorf("stderr does not name the vhost as the cause:\n%s", r.stderr)
		}
	})

	t.Run("no dead-letter queue: exit 4", func(t *testing.T) {
		r := queuekit(t, []string{"AMQP_URL=" + u}, "dlq", "list", "--queue", fmt.Sprintf("never-declared-%08x", rand.Uint32()))
		wantCode(t, r, exitFailed)
		if !strings.Contains(r.stderr, "NOT_FOUND") && !strings.Contains(r.stderr, "does not exist") {
			t.Errorf("stderr:\n%s", r.stderr)
		}
	})
}
