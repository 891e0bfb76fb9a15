package rabbitmq

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// eventLog records source and consumer events for assertions.
type eventLog struct {
	mu     sync.Mutex
	events []consumer.Event
}

func (l *eventLog) hook(e consumer.Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) count(k consumer.EventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if e.Kind == k {
			n++
		}
	}
	return n
}

func (l *eventLog) errs(k consumer.EventKind) []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []error
	for _, e := range l.events {
		if e.Kind == k && e.Err != nil {
			out = append(out, e.Err)
		}
	}
	return out
}

// TestChaosCloseAllConnections is the main regression test of the
// reconnection logic (issue 3): messages consumed with concurrency 8 and
// prefetch 64 while every connection is force-closed 5 times. Every message
// must be handled at least once, the queue must end empty with nothing
// unacked, duplicates are bounded by prefetch × closes, no settlement may be
// sent on a channel the delivery did not come from (which the broker would
// answer with PRECONDITION_FAILED "unknown delivery tag"), and no goroutine
// may leak. 20,000 messages with QUEUEKIT_CHAOS=1 or without -short; 4,000
// with -short.
//
// The closes are those of the tests' own vhost (close_all_connections
// --vhost), so the test needs no opt-in: other programs on the broker keep
// their connections.
//
// The source runs with its defaults, so acks are coalesced (issue 15): an
// ack queued but not yet written when its connection goes is lost, and its
// message delivered again, within the same bound.
func TestChaosCloseAllConnections(t *testing.T) { runChaos(t, 20000, 4000, nil) }

// TestChaosCloseAllConnectionsWithAcksWaiting is the chaos test with acks
// coalesced over a second (the most AckDelay allows) instead of 2 ms, so that they go out only in
// batches of 16 and every close finds some queued and not yet written
// (issue 15): their messages are delivered again (duplicates beyond the
// stale settlements, which must be seen), and duplicates must still stay
// within prefetch × closes, with nothing lost.
func TestChaosCloseAllConnectionsWithAcksWaiting(t *testing.T) {
	runChaos(t, 8000, 2000, func(c *Config) { c.AckDelay = maxAckDelay })
}

// runChaos runs the chaos test over n messages (short with -short), with
// the source's Config adjusted by adjust.
func runChaos(t *testing.T, n, short int, adjust func(*Config)) {
	needCtl(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	if testing.Short() && os.Getenv("QUEUEKIT_CHAOS") != "1" {
		n = short
	}
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_CHAOS_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	const (
		closes      = 5
		prefetch    = 64
		concurrency = 8
	)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	prepublish(t, q, n, 256)

	cfg := testConfig(q)
	cfg.Prefetch = prefetch
	if adjust != nil {
		adjust(&cfg)
	}
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	var evs eventLog
	// Pace the handlers so that the stream lasts about 12s, longer than the
	// closes take (rabbitmqctl needs ~1s each): every close must land while
	// handlers run and messages remain.
	// On a loaded machine rabbitmqctl can take several seconds, so in
	// addition the handlers are held while each close is under way: the
	// stream cannot run out before a close lands, and every close finds
	// handlers running and deliveries prefetched.
	work := max(time.Millisecond, 12*time.Second*concurrency/time.Duration(n))
	var hold atomic.Pointer[chan struct{}]
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		cnt.add(m.ID)
		if h := hold.Load(); h != nil {
			select {
			case <-*h:
			case <-ctx.Done():
			}
		}
		time.Sleep(work)
		return nil
	}), consumer.WithConcurrency(concurrency), consumer.WithEventHook(evs.hook))
	if err != nil {
		t.Fatal(err)
	}
	tagErrorsBefore, logReadable := brokerLogCount("unknown delivery tag", testBroker.vhost)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(ctx) }()

	for i := 1; i <= closes; i++ {
		target := int64(n * i / (closes + 1))
		waitFor(t, 2*time.Minute, "progress before close "+strconv.Itoa(i), func() bool { return cnt.n.Load() >= target })
		before := evs.count(consumer.EventConnected)
		release := make(chan struct{})
		hold.Store(&release)
		err := closeTestConnections("queuekit chaos test")
		hold.Store(nil)
		close(release)
		if err != nil {
			t.Fatal(err)
		}
		if cnt.distinct() == n {
			t.Fatalf("close %d came after every message was handled; the run proves nothing (slow rabbitmqctl?)", i)
		}
		// Wait for the source to have resubscribed before the next close,
		// so that each close hits a live subscription.
		waitFor(t, time.Minute, "resubscribe after close "+strconv.Itoa(i), func() bool {
			return evs.count(consumer.EventConnected) > before
		})
	}
	waitFor(t, 3*time.Minute, "every message handled", func() bool { return cnt.distinct() == n })
	elapsed := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v; want nil", err)
	}

	total := cnt.n.Load()
	dups := total - int64(n)
	ready, unacked := queueCounts(t, q)
	stale := 0
	for _, err := range evs.errs(consumer.EventSettleFailed) {
		if errors.Is(err, broker.ErrStaleDelivery) {
			stale++
		} else {
			t.Errorf("settlement failed with a non-stale error: %v", err)
		}
	}
	for _, err := range evs.errs(consumer.EventReconnecting) {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed || strings.Contains(err.Error(), "unknown delivery tag") {
			t.Errorf("a settlement reached the wrong channel: %v", err)
		}
	}
	t.Logf("chaos: %d messages, %d closes, concurrency %d, prefetch %d: handled %d times (%d duplicates, bound %d), "+
		"%d stale settlements fenced, %d reconnecting events, %d connected events, queue ready=%d unacked=%d, %v",
		n, closes, concurrency, prefetch, total, dups, prefetch*closes, stale,
		evs.count(consumer.EventReconnecting), evs.count(consumer.EventConnected), ready, unacked, elapsed.Round(time.Millisecond))
	st := &src.ackStats
	t.Logf("acks coalesced (AckBatch %d, AckDelay %v): %d acks in %d multiple and %d single frames; "+
		"%d duplicates beyond the stale settlements (acks queued but lost with their connection)",
		src.cfg.AckBatch, src.cfg.AckDelay, st.acked.Load(), st.multiples.Load(), st.singles.Load(), dups-int64(stale))
	if logReadable {
		after, _ := brokerLogCount("unknown delivery tag", testBroker.vhost)
		t.Logf("broker log: %d new \"unknown delivery tag\" errors", after-tagErrorsBefore)
		if after != tagErrorsBefore {
			t.Errorf("the broker logged %d \"unknown delivery tag\" errors during the run; want 0", after-tagErrorsBefore)
		}
	}
	if cnt.distinct() != n {
		t.Errorf("distinct messages handled = %d; want %d", cnt.distinct(), n)
	}
	if dups > prefetch*closes {
		t.Errorf("duplicates = %d; want <= prefetch × closes = %d", dups, prefetch*closes)
	}
	if ready != 0 || unacked != 0 {
		t.Errorf("queue after run: ready=%d unacked=%d; want 0 0", ready, unacked)
	}
	// With 1 ms handlers on 8 workers, closes find handlers running: their
	// acks must have been fenced (stale), and each such message redelivered.
	if stale == 0 {
		t.Errorf("stale settlements = 0; want > 0 (handlers were running at %d closes)", closes)
	}
	if dups < int64(stale) {
		t.Errorf("duplicates = %d < stale settlements %d; every fenced message must be redelivered", dups, stale)
	}
	if src.cfg.AckDelay >= time.Minute && dups == int64(stale) {
		t.Errorf("no duplicate beyond the stale settlements: no close found an ack queued and not written; the test proves nothing")
	}
	if got := evs.count(consumer.EventReconnecting); got < closes {
		t.Errorf("reconnecting events = %d; want >= %d (one per close)", got, closes)
	}
}

// brokerLogCount counts the lines of the broker's log that contain s and
// belong to a channel error in vhost (other programs on the broker have
// errors of their own), when the log is readable (QUEUEKIT_RABBITMQ_LOG,
// default the Debian location). A channel error takes two lines written by
// the same channel process: "<pid> Channel error on connection ... vhost:
// 'name', ...", then "<pid> operation ... caused a channel exception ...".
func brokerLogCount(s, vhost string) (int, bool) {
	paths := []string{os.Getenv("QUEUEKIT_RABBITMQ_LOG")}
	if paths[0] == "" {
		paths, _ = filepath.Glob("/var/log/rabbitmq/rabbit@*.log")
	}
	n, ok := 0, false
	for _, p := range paths {
		if strings.HasSuffix(p, "_upgrade.log") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		ok = true
		vhostOfPid := map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			pid := logPid.FindString(line)
			if m := logChannelError.FindStringSubmatch(line); m != nil {
				vhostOfPid[pid] = m[1]
				continue
			}
			if strings.Contains(line, s) && vhostOfPid[pid] == vhost {
				n++
			}
		}
	}
	return n, ok
}

var (
	logPid          = regexp.MustCompile(`<\d+\.\d+\.\d+>`)
	logChannelError = regexp.MustCompile(`Channel error on connection .*vhost: '([^']*)'`)
)

// TestCloseTestConnectionsSparesOtherVhosts pins issue 9 item 12: the
// connection-loss fault of the chaos tests closes the connections of the
// tests' own vhost and no other. A connection in the URL's vhost ("/" by
// default, where other programs are) stands for everyone else; it must
// outlive the fault, while the tests' own connection is force-closed.
func TestCloseTestConnectionsSparesOtherVhosts(t *testing.T) {
	needCtl(t)
	if testBroker.vhost == vhostOf(testBroker.base) {
		t.Fatalf("the tests run in the URL's vhost %q; want a vhost of their own", testBroker.vhost)
	}
	other, err := amqp.Dial(testBroker.base)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	otherClosed := other.NotifyClose(make(chan *amqp.Error, 1))
	own := rawConn(t)
	ownClosed := own.NotifyClose(make(chan *amqp.Error, 1))

	if err := closeTestConnections("queuekit item 12 test"); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ownClosed:
		t.Logf("the tests' connection: %v", e)
		if e == nil || e.Code != amqp.ConnectionForced {
			t.Errorf("the tests' connection closed with %v; want CONNECTION_FORCED", e)
		}
	case <-time.After(time.Minute):
		t.Fatal("the tests' own connection is still open after closeTestConnections")
	}
	// A round trip on the other connection proves it is alive.
	ch, err := other.Channel()
	if err == nil {
		_, err = ch.QueueDeclare("", false, true, true, false, nil)
		_ = ch.Close()
	}
	select {
	case e := <-otherClosed:
		t.Fatalf("the connection in vhost %q was closed: %v", vhostOf(testBroker.base), e)
	default:
	}
	if err != nil {
		t.Fatalf("the connection in vhost %q is unusable: %v", vhostOf(testBroker.base), err)
	}
}

// TestBrokerLogCountOnlyCountsItsVhost: the chaos test's check of the broker
// log counts the channel errors of its own vhost, not those of the other
// programs on the broker.
func TestBrokerLogCountOnlyCountsItsVhost(t *testing.T) {
	const log = `2026-12-05 12:53:48.188866+00:00 [error] <0.1413.0> Channel error on connection <0.1404.0> (127.0.0.1:45458 -> 127.0.0.1:5672, vhost: 'queuekit-test-1', user: 'guest'), channel 1:
2026-12-05 12:53:48.188866+00:00 [error] <0.1413.0> operation basic.ack caused a channel exception precondition_failed: unknown delivery tag 99
2026-12-05 12:53:49.100000+00:00 [error] <0.1500.0> Channel error on connection <0.1490.0> (127.0.0.1:45460 -> 127.0.0.1:5672, vhost: '/', user: 'guest'), channel 1:
2026-12-05 12:53:49.100000+00:00 [error] <0.1500.0> operation basic.ack caused a channel exception precondition_failed: unknown delivery tag 7
2026-12-05 12:53:50.100000+00:00 [error] <0.1413.0> operation basic.ack caused a channel exception precondition_failed: unknown delivery tag 100
`
	path := filepath.Join(t.TempDir(), "rabbit@test.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QUEUEKIT_RABBITMQ_LOG", path)
	for vhost, want := range map[string]int{"queuekit-test-1": 2, "/": 1, "queuekit-test-2": 0} {
		if got, ok := brokerLogCount("unknown delivery tag", vhost); got != want || !ok {
			t.Errorf("brokerLogCount(%q) = %d, %v; want %d, true", vhost, got, ok, want)
		}
	}
}
