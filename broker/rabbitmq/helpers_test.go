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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/consumer"
)

// TestMain checks for leaked goroutines, then deletes the vhost the tests
// created (after the leak check: deleting it closes whatever is still
// connected there, which would hide a leaked connection) and prints the
// one-line summary of the RabbitMQ tests that were skipped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if err := testBroker.teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "queuekit:", err)
			code = 1
		}
		if line := skips.summary(); line != "" {
			printSummary(line)
		}
		os.Exit(code)
	}))
}

// The tests never disturb what they did not create. They run in a vhost of
// their own (queuekit-test-<random>), created on the broker at
// QUEUEKIT_AMQP_URL when rabbitmqctl manages that broker, and deleted at the
// end; the rabbitmqctl commands they run are scoped to it (ctl). Tests that
// act on the whole broker (stop_app) run only with
// QUEUEKIT_DESTRUCTIVE_TESTS=1 (needDestructive), which .ci/run sets.
//
// When rabbitmqctl cannot create the vhost (not installed, no Erlang cookie,
// or it manages another node than the URL's), the tests that need no
// rabbitmqctl run in the URL's own vhost, each in queues of its own, and
// those that need it skip.
var testBroker rabbitServer

// rabbitServer is the RabbitMQ the tests use, found once (setup) on the first
// call that needs it, so that runs of unit tests alone never touch it.
type rabbitServer struct {
	once    sync.Once
	base    string // QUEUEKIT_AMQP_URL, or the local default
	url     string // base in the tests' vhost when they have one
	vhost   string // the vhost url names
	created bool   // vhost is the tests' own: they delete it at the end
	dialErr error  // nothing answers at base
	ctlErr  error  // rabbitmqctl cannot be used on this broker
}

const defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

func (b *rabbitServer) setup() {
	b.once.Do(func() {
		b.base = os.Getenv("QUEUEKIT_AMQP_URL")
		if b.base == "" {
			b.base = defaultAMQPURL
		}
		b.url = b.base
		b.vhost = vhostOf(b.base)
		c, err := amqp.Dial(b.base)
		if err != nil {
			b.dialErr = err
			return
		}
		_ = c.Close()
		vhost := fmt.Sprintf("queuekit-test-%08x", rand.Uint32())
		if _, err := rabbitmqctl("-q", "add_vhost", vhost); err != nil {
			b.ctlErr = fmt.Errorf("rabbitmqctl cannot create a vhost for the tests (run them as root or as a user with the broker's Erlang cookie): %s",
				firstLine(err.Error()))
			return
		}
		url := withVhost(b.base, vhost)
		_, err = rabbitmqctl("-q", "set_permissions", "-p", vhost, userOf(b.base), ".*", ".*", ".*")
		if err == nil {
			// rabbitmqctl talks to the node it finds locally, which need
			// not be the one QUEUEKIT_AMQP_URL names: only a broker where
			// the new vhost exists is the one the tests may manage.
			if c, derr := amqp.Dial(url); derr != nil {
				err = fmt.Errorf("rabbitmqctl manages another broker than %s, where the vhost it created is not there (%s); "+
					"point it at the URL's broker with RABBITMQ_NODENAME", RedactURL(b.base), redactText(derr.Error(), url))
			} else {
				_ = c.Close()
			}
		}
		if err != nil {
			_, _ = rabbitmqctl("-q", "delete_vhost", vhost)
			b.ctlErr = fmt.Errorf("%s", firstLine(err.Error()))
			return
		}
		b.url, b.vhost, b.created = url, vhost, true
	})
}

// teardown deletes the tests' vhost, with everything in it.
func (b *rabbitServer) teardown() error {
	if !b.created {
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

// userOf returns the user name of an AMQP URL, "guest" when it has none (as
// the client assumes).
func userOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil && u.User.Username() != "" {
		return u.User.Username()
	}
	return "guest"
}

// amqpURL returns the URL the tests connect to: QUEUEKIT_AMQP_URL (or the
// local default) in the tests' own vhost when they have one.
func amqpURL() string {
	testBroker.setup()
	return testBroker.url
}

// needBroker skips the test when no RabbitMQ answers, or fails it when
// QUEUEKIT_REQUIRE_BROKERS=1 (CI).
func needBroker(t testing.TB) {
	t.Helper()
	testBroker.setup()
	if err := testBroker.dialErr; err != nil {
		skipOrFail(t, fmt.Sprintf("no RabbitMQ at %s (%s); set QUEUEKIT_AMQP_URL or start rabbitmq-server",
			RedactURL(testBroker.base), redactText(err.Error(), testBroker.base)))
	}
}

// needCtl skips (or fails under QUEUEKIT_REQUIRE_BROKERS=1) when the tests
// cannot use rabbitmqctl on their broker in a vhost of their own:
// fault-injection and queue-count tests need it.
func needCtl(t testing.TB) {
	t.Helper()
	needBroker(t)
	if err := testBroker.ctlErr; err != nil {
		skipOrFail(t, fmt.Sprintf("they need rabbitmqctl: %v", err))
	}
}

// ctlUsable reports whether needCtl would let a test run.
func ctlUsable() bool {
	testBroker.setup()
	return testBroker.dialErr == nil && testBroker.ctlErr == nil
}

// needDestructive skips the test unless QUEUEKIT_DESTRUCTIVE_TESTS=1: it
// would do what (e.g. "restart the whole broker"), which disturbs every
// program using the broker, not just the tests. The skip is never a failure,
// even under QUEUEKIT_REQUIRE_BROKERS=1: the opt-in must be explicit.
func needDestructive(t testing.TB, what string) {
	t.Helper()
	if !destructiveAllowed() {
		why := fmt.Sprintf("would %s, cutting off every program using it; set QUEUEKIT_DESTRUCTIVE_TESTS=1 to run on a broker nothing else uses", what)
		skips.add(why)
		t.Skip("this test " + why)
	}
	needCtl(t)
}

func destructiveAllowed() bool { return os.Getenv("QUEUEKIT_DESTRUCTIVE_TESTS") == "1" }

// skipOrFail fails the test under QUEUEKIT_REQUIRE_BROKERS=1 (in CI a
// missing broker is a failure), else skips it and counts the skip.
func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
		t.Fatal(why + " (QUEUEKIT_REQUIRE_BROKERS=1)")
	}
	skips.add(why)
	t.Skip(why)
}

// firstLine returns the first line of s: rabbitmqctl follows its error
// with a page of diagnostics, and the skip summary is one line.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i]) + " …"
	}
	return s
}

// skips counts the RabbitMQ tests skipped, by reason, for the summary line.
var skips skipCounter

type skipCounter struct {
	mu      sync.Mutex
	reasons []string // in the order first seen
	n       map[string]int
}

func (s *skipCounter) add(why string) {
	why = strings.Join(strings.Fields(why), " ") // the summary is one line
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	if s.n[why] == 0 {
		s.reasons = append(s.reasons, why)
	}
	s.n[why]++
}

// summary returns the one line that says how many RabbitMQ tests were
// skipped and why, or "" when none was.
func (s *skipCounter) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for _, n := range s.n {
		total += n
	}
	if total == 0 {
		return ""
	}
	tests := "tests"
	if total == 1 {
		tests = "test"
	}
	if len(s.reasons) == 1 {
		return fmt.Sprintf("queuekit: %d RabbitMQ %s skipped: %s", total, tests, s.reasons[0])
	}
	parts := make([]string, len(s.reasons))
	for i, why := range s.reasons {
		parts[i] = fmt.Sprintf("%d: %s", s.n[why], why)
	}
	return fmt.Sprintf("queuekit: %d RabbitMQ %s skipped: %s", total, tests, strings.Join(parts, "; "))
}

// printSummary shows line to whoever runs the tests, without -v.
//
// go test in package list mode (go test ./...) discards everything a
// passing test binary writes, stdout and stderr alike, unless -v: a skip
// line there would never be seen. So, without -v and when stdout is not
// the terminal itself (go test with no package arguments streams it), the
// line goes to the controlling terminal (/dev/tty) too. Without one (CI,
// where QUEUEKIT_REQUIRE_BROKERS=1 turns skips into failures), stdout is
// all there is: shown with -v and when the package fails.
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

// ctl runs rabbitmqctl for a test. Commands scoped to a vhost run in the
// tests' own unless args name one (-p, --vhost); commands that act on the
// whole broker are refused unless QUEUEKIT_DESTRUCTIVE_TESTS=1 (the test
// must call needDestructive first), and so is closing the connections of a
// vhost that is not the tests' own: without --vhost, close_all_connections
// closes those of vhost "/", where other programs are.
func ctl(args ...string) (string, error) {
	testBroker.setup()
	if err := testBroker.ctlErr; err != nil {
		return "", fmt.Errorf("rabbitmqctl unavailable: %w", err)
	}
	args, err := scopeCtl(args, testBroker.vhost, testBroker.created, destructiveAllowed())
	if err != nil {
		return "", err
	}
	return rabbitmqctl(args...)
}

// vhostScoped are the rabbitmqctl commands that act on one vhost ("/" unless
// told otherwise).
var vhostScoped = []string{
	"list_queues", "list_exchanges", "list_bindings", "list_consumers", "list_permissions",
	"list_policies", "set_policy", "clear_policy", "purge_queue", "delete_queue",
	"close_all_connections", "list_unresponsive_queues",
}

// brokerWide are the rabbitmqctl commands that disturb every user of the
// broker.
var brokerWide = []string{
	"stop_app", "start_app", "stop", "shutdown", "reset", "force_reset",
	"set_vm_memory_high_watermark", "set_disk_free_limit",
}

// scopeCtl returns args with the tests' vhost added to a vhost-scoped
// command that names none, or an error for a command the tests may not run
// here.
func scopeCtl(args []string, vhost string, own, destructive bool) ([]string, error) {
	cmd, named := "", ""
	global := false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-p" || a == "--vhost":
			if i+1 < len(args) {
				named = args[i+1]
				i++
			}
		case strings.HasPrefix(a, "--vhost="):
			named = strings.TrimPrefix(a, "--vhost=")
		case a == "--global":
			global = true
		case a == "-n" || a == "--node" || a == "-t" || a == "--timeout" || a == "--limit" || a == "--per-connection-delay":
			i++
		case cmd == "" && !strings.HasPrefix(a, "-"):
			cmd = a
		}
	}
	refuse := func(why string) ([]string, error) {
		return nil, fmt.Errorf("rabbitmqctl %s: %s; a test that must do it calls needDestructive (QUEUEKIT_DESTRUCTIVE_TESTS=1)",
			strings.Join(args, " "), why)
	}
	switch {
	case slices.Contains(brokerWide, cmd) && !destructive:
		return refuse("acts on the whole broker, not just the tests' vhost")
	case cmd == "close_all_connections" && global && !destructive:
		return refuse("--global closes the connections of every vhost")
	case cmd == "close_all_connections" && !global && !destructive && (!own || (named != "" && named != vhost)):
		return refuse("closes the connections of a vhost that is not the tests' own")
	case slices.Contains(vhostScoped, cmd) && named == "" && !global:
		i := slices.Index(args, cmd)
		return slices.Concat(args[:i+1], []string{"--vhost", vhost}, args[i+1:]), nil
	}
	return args, nil
}

// rabbitmqctl runs rabbitmqctl as is.
func rabbitmqctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
		if o := strings.TrimSpace(string(out)); o != "" {
			err = fmt.Errorf("%w: %s", err, o)
		}
		return string(out), err
	}
	return string(out), nil
}

// closeTestConnections force-closes every connection in the tests' vhost,
// and nothing else: the connection-loss fault of the chaos tests.
func closeTestConnections(reason string) error {
	testBroker.setup()
	if !testBroker.created {
		return fmt.Errorf("the tests have no vhost of their own: %v", testBroker.ctlErr)
	}
	_, err := ctl("close_all_connections", "--vhost", testBroker.vhost, reason)
	return err
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

// drainedQueueCounts is queueCounts for a run that has ended, when the test
// expects nothing left (0 ready, 0 unacked): the broker's counters, quorum
// queues' especially, can lag the acks of a consumer that just closed, so it
// asks again for a few seconds before it returns what it last saw.
func drainedQueueCounts(t testing.TB, q string) (ready, unacked int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ready, unacked = queueCounts(t, q)
		if (ready == 0 && unacked == 0) || time.Now().After(deadline) {
			return ready, unacked
		}
		time.Sleep(200 * time.Millisecond)
	}
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

// TestCtlStaysInTheTestsVhost pins issue 9 item 12: the rabbitmqctl commands
// the tests run never reach beyond their own vhost unless
// QUEUEKIT_DESTRUCTIVE_TESTS=1. Before, close_all_connections without
// --vhost closed every connection of vhost "/" (other programs'), and
// stop_app ran on any broker.
func TestCtlStaysInTheTestsVhost(t *testing.T) {
	const own = "queuekit-test-0000abcd"
	tests := []struct {
		name        string
		args        []string
		owned       bool // the tests created the vhost
		destructive bool // QUEUEKIT_DESTRUCTIVE_TESTS=1
		want        string
		refused     bool
	}{
		{"close_all_connections gets the tests' vhost", []string{"close_all_connections", "test"}, true, false,
			"close_all_connections --vhost " + own + " test", false},
		{"close_all_connections in the tests' vhost", []string{"close_all_connections", "--vhost", own, "test"}, true, false,
			"close_all_connections --vhost " + own + " test", false},
		{"close_all_connections in vhost / is refused", []string{"close_all_connections", "-p", "/", "test"}, true, false, "", true},
		{"close_all_connections --global is refused", []string{"close_all_connections", "--global", "test"}, true, false, "", true},
		{"close_all_connections without a vhost of their own is refused", []string{"close_all_connections", "test"}, false, false, "", true},
		{"stop_app is refused", []string{"stop_app"}, true, false, "", true},
		{"start_app is refused", []string{"-q", "start_app"}, true, false, "", true},
		{"a memory alarm is refused", []string{"set_vm_memory_high_watermark", "0.0001"}, true, false, "", true},
		{"stop_app with the opt-in", []string{"stop_app"}, true, true, "stop_app", false},
		{"close_all_connections --global with the opt-in", []string{"close_all_connections", "--global", "x"}, true, true,
			"close_all_connections --global x", false},
		{"list_queues gets the tests' vhost", []string{"list_queues", "-q", "name"}, true, false,
			"list_queues --vhost " + own + " -q name", false},
		{"list_queues in the URL's vhost", []string{"-q", "list_queues", "name"}, false, false, "-q list_queues --vhost " + own + " name", false},
		{"status is left alone", []string{"-q", "status"}, true, false, "-q status", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := scopeCtl(tt.args, own, tt.owned, tt.destructive)
			if tt.refused {
				if err == nil {
					t.Fatalf("scopeCtl(%q) = %q; want it refused", tt.args, got)
				}
				if !strings.Contains(err.Error(), "QUEUEKIT_DESTRUCTIVE_TESTS=1") {
					t.Errorf("refusal %q does not name QUEUEKIT_DESTRUCTIVE_TESTS=1", err)
				}
				return
			}
			if err != nil || strings.Join(got, " ") != tt.want {
				t.Fatalf("scopeCtl(%q) = %q, %v; want %q", tt.args, got, err, tt.want)
			}
		})
	}
}

// TestSkipSummaryIsOneLine checks the line TestMain prints when RabbitMQ
// tests were skipped: how many, and why, on one line.
func TestSkipSummaryIsOneLine(t *testing.T) {
	var s skipCounter
	if got := s.summary(); got != "" {
		t.Fatalf("summary with no skips = %q; want \"\"", got)
	}
	for range 3 {
		s.add("no RabbitMQ at amqp://guest:xxxxx@127.0.0.1:1/ (connection refused)")
	}
	want := "queuekit: 3 RabbitMQ tests skipped: no RabbitMQ at amqp://guest:xxxxx@127.0.0.1:1/ (connection refused)"
	if got := s.summary(); got != want {
		t.Fatalf("summary = %q; want %q", got, want)
	}
	s.add("would restart the whole broker")
	want = "queuekit: 4 RabbitMQ tests skipped: 3: no RabbitMQ at amqp://guest:xxxxx@127.0.0.1:1/ (connection refused); " +
		"1: would restart the whole broker"
	if got := s.summary(); got != want {
		t.Fatalf("summary = %q; want %q", got, want)
	}
}
