package clustertest_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
)

// The cluster tests run against the 3-node cluster of .ci/rabbitmq-cluster
// (nodes of their own, never the machine's broker), named by
// QUEUEKIT_RABBITMQ_CLUSTER (the URLs the script prints). They run in a
// vhost of their own, stop and kill nodes of that cluster only, and start
// again what they stopped before they end, so the cluster can be reused.

// clusterScript is the script that runs the cluster (from the package
// directory, where go test runs the tests).
var clusterScript = filepath.Join("..", "..", "..", ".ci", "rabbitmq-cluster")

// testCluster is the cluster of QUEUEKIT_RABBITMQ_CLUSTER, with a vhost of
// this test's own.
type testCluster struct {
	urls  []string // with the test's vhost
	nodes []int    // the script's node number of each URL
}

// needCluster returns the cluster of QUEUEKIT_RABBITMQ_CLUSTER, with a vhost
// made for the test and deleted when it ends. Without the variable the test
// skips (fails under QUEUEKIT_REQUIRE_BROKERS=1).
func needCluster(t *testing.T) *testCluster {
	t.Helper()
	env := os.Getenv("QUEUEKIT_RABBITMQ_CLUSTER")
	if env == "" {
		skipOrFail(t, "no RabbitMQ cluster: QUEUEKIT_RABBITMQ_CLUSTER is unset (start one with .ci/rabbitmq-cluster start and export the line it prints)")
	}
	c := &testCluster{}
	vhost := fmt.Sprintf("queuekit-test-cluster-%06d", rand.IntN(1000000))
	for _, raw := range strings.Split(env, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			t.Fatalf("QUEUEKIT_RABBITMQ_CLUSTER: %s", rabbitmq.RedactURL(raw))
		}
		port, _ := strconv.Atoi(u.Port())
		n := port - 5680
		if n < 1 || n > 3 {
			t.Fatalf("QUEUEKIT_RABBITMQ_CLUSTER: %s is not a node of .ci/rabbitmq-cluster (ports 5681-5683)", rabbitmq.RedactURL(raw))
		}
		c.nodes = append(c.nodes, n)
		c.urls = append(c.urls, withVhost(u.String(), vhost))
	}
	if _, err := c.ctl(c.nodes[0], "add_vhost", vhost); err != nil {
		t.Fatalf("cluster: add_vhost: %v (are all its nodes up? .ci/rabbitmq-cluster status)", err)
	}
	user := userOf(c.urls[0])
	if _, err := c.ctl(c.nodes[0], "set_permissions", "-p", vhost, user, ".*", ".*", ".*"); err != nil {
		t.Fatalf("cluster: set_permissions: %v", err)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes { // the first node that runs
			if _, err := c.ctl(n, "delete_vhost", vhost); err == nil {
				return
			}
		}
		t.Errorf("cluster: could not delete vhost %s", vhost)
	})
	return c
}

// ctl runs rabbitmqctl on node n of the cluster (through the script, which
// knows its cookie).
func (c *testCluster) ctl(n int, args ...string) (string, error) {
	return clusterCmd(append([]string{"ctl", strconv.Itoa(n), "-q"}, args...)...)
}

func clusterCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, clusterScript, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf(".ci/rabbitmq-cluster %s: %w: %s", strings.Join(args, " "), err, firstLine(string(out)))
	}
	return string(out), nil
}

// nodeOfAddr is the script's node number of a host:port the client dialled.
func (c *testCluster) nodeOfAddr(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return p - 5680
}

// leader returns the node number of the leader of quorum queue q, asking
// node ask.
func (c *testCluster) leader(t *testing.T, ask int, q string) int {
	t.Helper()
	vhost := vhostOf(c.urls[0])
	out, err := c.ctl(ask, "list_queues", "-p", vhost, "--no-table-headers", "name", "leader")
	if err != nil {
		t.Fatalf("leader of %s: %v", q, err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == q {
			var n int
			if _, err := fmt.Sscanf(f[1], "qk-c%d@", &n); err == nil {
				return n
			}
		}
	}
	t.Fatalf("leader of %s: not in %q", q, out)
	return 0
}

// stopApp stops the rabbit app of node n (its VM stays up) and makes sure
// it is started again when the test ends.
func (c *testCluster) stopApp(t *testing.T, n int) {
	t.Helper()
	t.Cleanup(func() { c.restore(t, n) })
	if _, err := c.ctl(n, "stop_app"); err != nil {
		t.Fatalf("stop_app on node %d: %v", n, err)
	}
}

// kill stops the rabbit app of node n, then kills its VM (SIGKILL, the pid
// of that node only), and makes sure the node runs again when the test ends.
func (c *testCluster) kill(t *testing.T, n int) {
	t.Helper()
	out, err := clusterCmd("pid", strconv.Itoa(n))
	if err != nil {
		t.Fatalf("pid of node %d: %v", n, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || pid <= 1 {
		t.Fatalf("pid of node %d: %q", n, out)
	}
	c.stopApp(t, n)
	p, err := os.FindProcess(pid)
	if err == nil {
		err = p.Kill()
	}
	if err != nil {
		t.Fatalf("kill node %d (pid %d): %v", n, pid, err)
	}
}

// restore starts node n again: start_app when its VM runs, else the
// script's start of that node. Idempotent.
func (c *testCluster) restore(t *testing.T, n int) {
	t.Helper()
	if _, err := c.ctl(n, "start_app"); err == nil {
		return
	}
	if _, err := clusterCmd("start", strconv.Itoa(n)); err != nil {
		t.Errorf("restarting node %d: %v", n, err)
	}
}

// dialRecorder is a Dialer.Dial that records the address of the last
// network connection it opened: the node a Source or Publisher is on.
type dialRecorder struct{ last atomic.Value }

func (r *dialRecorder) dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err == nil {
		r.last.Store(addr)
	}
	return c, err
}

func (r *dialRecorder) addr() string {
	s, _ := r.last.Load().(string)
	return s
}

// TestClusterFailover is issue 13's must-show: 20,000 messages published
// (Publisher over the cluster's address list) and consumed at once from a
// quorum queue (consumer.Consumer over a Source, prefetch 64) while first
// the node the consumer is connected to stops (stop_app), then, once it is
// back, the node of the queue's leader stops and its VM is killed. Every
// message the Publisher confirmed must be consumed (lost 0); the
// redeliveries of messages already handled stay within the prefetch per
// failover. A publish that failed is retried (as a new message id, so that
// its possible first copy tells a publisher duplicate from a redelivery).
func TestClusterFailover(t *testing.T) {
	c := needCluster(t)
	const (
		total      = 20000
		prefetch   = 64
		rate       = 1000 // messages per second published, at most
		publishers = 16
	)
	start := time.Now()
	q := fmt.Sprintf("qk-cluster-failover-%06d", rand.IntN(1000000))
	topo := rabbitmq.Topology{QueueType: rabbitmq.Quorum}
	if err := rabbitmq.DeclareTopology(context.Background(), rabbitmq.Dialer{URLs: c.urls}, q, topo); err != nil {
		t.Fatal(err)
	}

	// The consumer: counts every handled message id, and when.
	var (
		mu        sync.Mutex
		handled   = map[string]int{}
		handledAt []time.Time // every handling, in order
		dupAt     []time.Time // handlings of an id already handled
	)
	consumedOnce := func() int { mu.Lock(); defer mu.Unlock(); return len(handled) }
	var rec dialRecorder
	src, err := rabbitmq.NewSource(rabbitmq.Config{
		Dialer:       rabbitmq.Dialer{URLs: c.urls, Dial: rec.dial, Heartbeat: 2 * time.Second},
		Queue:        q,
		Prefetch:     prefetch,
		Topology:     topo,
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
		Logger:       clusterLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		now := time.Now()
		mu.Lock()
		handled[m.ID]++
		handledAt = append(handledAt, now)
		if handled[m.ID] > 1 {
			dupAt = append(dupAt, now)
		}
		mu.Unlock()
		return nil
	})
	type srcEvent struct {
		kind consumer.EventKind
		at   time.Time
	}
	var events []srcEvent // the source's connection events, under mu
	hook := consumer.WithEventHook(func(e consumer.Event) {
		if e.Kind == consumer.EventReconnecting || e.Kind == consumer.EventConnected {
			mu.Lock()
			events = append(events, srcEvent{e.Kind, time.Now()})
			mu.Unlock()
		}
	})
	cons, err := consumer.New(src, h, consumer.WithConcurrency(8), consumer.WithMaxDeliveries(50), consumer.WithLogger(quietLogger()), hook)
	_, cancel, done := runInBackground(t, cons, err)
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer Run = %v", err)
		}
	}()

	// The publishers: at most rate messages a second in all; messages
	// from 3,000 on wait for the first failover to start, and from 12,000
	// on for the second, so that publishing goes on through both however
	// long the nodes take to stop and restart. A failed publish is retried
	// with a new id until one is confirmed.
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{
		Dialer:       rabbitmq.Dialer{URLs: c.urls, Heartbeat: 2 * time.Second},
		Timeout:      5 * time.Second,
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
		Logger:       quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(context.Background()) }()
	var (
		pubMu     sync.Mutex
		confirmed []string // ids the rabbitmq.Publisher confirmed
		failed    []string // ids whose publish returned an error (may or may not be in the queue)
		pubErrs   = map[string]int{}
	)
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	gate1, gate2 := make(chan struct{}), make(chan struct{}) // closed when failover 1, 2 start
	var gateOnce1, gateOnce2 sync.Once
	defer gateOnce1.Do(func() { close(gate1) })
	defer gateOnce2.Do(func() { close(gate2) })
	var pwg sync.WaitGroup
	stopPub := make(chan struct{}) // a test that failed early stops its publishers
	defer pwg.Wait()
	defer close(stopPub)
	for g := range publishers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := g; i < total; i += publishers {
				if i >= 3000 && !waitOr(gate1, stopPub) || i >= 12000 && !waitOr(gate2, stopPub) || !waitOr(tick.C, stopPub) {
					return
				}
				for try := 1; ; try++ {
					id := fmt.Sprintf("%d.%d", i, try)
					err := pub.Publish(context.Background(), "", &broker.Message{ID: id, Key: []byte(q), Body: []byte(id)})
					pubMu.Lock()
					if err == nil {
						confirmed = append(confirmed, id)
					} else {
						failed = append(failed, id)
						pubErrs[firstLine(err.Error())]++
						if strings.Contains(err.Error(), "guest:guest") {
							t.Errorf("publish error shows the password: %v", err)
						}
					}
					pubMu.Unlock()
					if err == nil {
						break
					}
					if try == 20 {
						t.Errorf("message %d: 20 publishes failed, the last with %v", i, err)
						break
					}
				}
			}
		}()
	}
	pubDone := make(chan struct{})
	go func() { pwg.Wait(); close(pubDone) }()

	waitFor(t, 30*time.Second, "the first 1,500 messages consumed", func() bool { return consumedOnce() >= 1500 })

	// Failover 1: the consumer's node stops.
	type failover struct {
		what       string
		node       int
		at         time.Time     // the stop command started
		maxGap     time.Duration // the longest pause in consuming after at
		lost       bool          // the consumer lost its connection
		subscribed time.Duration // from its loss to the source subscribed again
		resumed    time.Duration // from its loss to the first message handled after
		dups       int
		consumedAt int
	}
	var fos []*failover
	resume := func(fo *failover) {
		mu.Lock()
		before := len(handledAt)
		mu.Unlock()
		waitFor(t, 60*time.Second, "consuming to resume after "+fo.what, func() bool {
			mu.Lock()
			defer mu.Unlock()
			// 200 new handlings after the command returned: the queue is
			// served again (not just the last prefetched messages).
			return len(handledAt) >= before+200
		})
		mu.Lock()
		defer mu.Unlock()
		// The outage as the handlers see it: the longest pause between
		// two handlings since the stop command started (the command
		// itself takes a second or two before the node stops).
		for i := 1; i < len(handledAt); i++ {
			if handledAt[i].Before(fo.at) {
				continue
			}
			prev := handledAt[i-1]
			if prev.Before(fo.at) {
				prev = fo.at
			}
			fo.maxGap = max(fo.maxGap, handledAt[i].Sub(prev))
		}
		// When the consumer's connection was lost: from then to the
		// source subscribed again, and to the next message handled.
		for i, e := range events {
			if e.at.Before(fo.at) || e.kind != consumer.EventReconnecting {
				continue
			}
			fo.lost = true
			for _, e2 := range events[i+1:] {
				if e2.kind == consumer.EventConnected {
					fo.subscribed = e2.at.Sub(e.at)
					break
				}
			}
			for _, at := range handledAt {
				if at.After(e.at) {
					fo.resumed = at.Sub(e.at)
					break
				}
			}
			break
		}
	}

	n1 := c.nodeOfAddr(rec.addr())
	fo1 := &failover{what: "stop_app of the consumer's node", node: n1, at: time.Now(), consumedAt: consumedOnce()}
	fos = append(fos, fo1)
	gateOnce1.Do(func() { close(gate1) })
	c.stopApp(t, n1)
	resume(fo1)
	t.Logf("%v: failover 1: consumer's node qk-c%d stopped (consumer now on qk-c%d)", since(start), n1, c.nodeOfAddr(rec.addr()))
	c.restore(t, n1) // two of three must run for the second failover to keep a quorum
	// A quorum member that was down catches up before it counts again.
	waitFor(t, 60*time.Second, "node back", func() bool {
		_, err := c.ctl(n1, "await_startup", "--timeout", "5")
		return err == nil
	})
	t.Logf("%v: qk-c%d back", since(start), n1)
	time.Sleep(time.Second)

	// Failover 2: the leader's node stops, and its VM is killed.
	l := c.leader(t, n1, q)
	ask := n1 // a node that stays up, to ask for the new leader
	if ask == l {
		ask = c.nodes[slices.IndexFunc(c.nodes, func(n int) bool { return n != l })]
	}
	fo2 := &failover{what: "stop_app and kill of the queue leader's node", node: l, at: time.Now(), consumedAt: consumedOnce()}
	fos = append(fos, fo2)
	gateOnce2.Do(func() { close(gate2) })
	c.kill(t, l)
	resume(fo2)
	t.Logf("%v: failover 2: leader's node qk-c%d stopped and killed (new leader qk-c%d, consumer on qk-c%d)", since(start), l, c.leader(t, ask, q), c.nodeOfAddr(rec.addr()))
	// The killed node restarts meanwhile (the cluster is reusable after).
	restored := make(chan error, 1) // no t.Error on this goroutine: the test may have ended when it is done
	go func() { _, err := clusterCmd("start", strconv.Itoa(l)); restored <- err }()
	defer func() {
		if err := <-restored; err != nil {
			t.Errorf("restarting node %d: %v", l, err)
		}
		t.Logf("%v: qk-c%d back", since(start), l)
	}()

	select {
	case <-pubDone:
	case <-time.After(90 * time.Second):
		t.Fatal("publishing did not finish within 90 s")
	}
	pubMu.Lock()
	want := slices.Clone(confirmed)
	pubMu.Unlock()
	waitFor(t, 60*time.Second, "every confirmed message consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range want {
			if handled[id] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("%v: every confirmed message consumed", since(start))
	time.Sleep(500 * time.Millisecond) // late redeliveries count too
	cancel()
	if err := <-done; err != nil {
		t.Errorf("consumer Run = %v", err)
	}
	done = closedErr()

	mu.Lock()
	defer mu.Unlock()
	lost := 0
	for _, id := range want {
		if handled[id] == 0 {
			lost++
		}
	}
	// Duplicates: handlings of an id already handled, by the failover
	// whose window they fall in (none is expected before the first).
	before := 0
	for _, at := range dupAt {
		i := len(fos) - 1
		for i >= 0 && at.Before(fos[i].at) {
			i--
		}
		if i < 0 {
			before++
		} else {
			fos[i].dups++
		}
	}
	pubMu.Lock()
	defer pubMu.Unlock()
	failedArrived := 0
	for _, id := range failed {
		if handled[id] > 0 {
			failedArrived++
		}
	}
	t.Logf("%d messages: %d publishes confirmed, %d failed (%d of those arrived anyway); lost %d; total %v",
		total, len(confirmed), len(failed), failedArrived, lost, time.Since(start).Round(time.Millisecond))
	for err, n := range pubErrs {
		t.Logf("  publish error ×%d: %s", n, err)
	}
	for i, fo := range fos {
		conn := "the consumer kept its connection"
		if fo.lost {
			conn = fmt.Sprintf("the consumer lost its connection: subscribed again after %v, first message handled after %v",
				fo.subscribed.Round(time.Millisecond), fo.resumed.Round(time.Millisecond))
		}
		t.Logf("failover %d (%s, qk-c%d, after %d consumed): longest pause in consuming %v; %s; %d duplicates",
			i+1, fo.what, fo.node, fo.consumedAt, fo.maxGap.Round(time.Millisecond), conn, fo.dups)
		if fo.dups > prefetch {
			t.Errorf("failover %d: %d duplicates; want at most the prefetch, %d", i+1, fo.dups, prefetch)
		}
	}
	if lost != 0 {
		t.Errorf("lost %d of %d confirmed messages", lost, len(want))
	}
	if before != 0 {
		t.Errorf("%d duplicates before the first failover; want 0", before)
	}
	if len(confirmed) != total {
		t.Errorf("%d messages confirmed; want %d (each retried until confirmed)", len(confirmed), total)
	}
}

// clusterLogger logs to stderr with QUEUEKIT_CLUSTER_VERBOSE=1, else
// nowhere.
func clusterLogger() *slog.Logger {
	if os.Getenv("QUEUEKIT_CLUSTER_VERBOSE") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return quietLogger()
}

// waitOr waits for ch; it reports false when stop came first.
func waitOr[T any](ch <-chan T, stop <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-stop:
		return false
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

// closedErr returns a channel that yields one nil.
func closedErr() chan error {
	ch := make(chan error, 1)
	ch <- nil
	return ch
}

// TestClusterPublisherFailsOver: a Publisher on the cluster's address list
// publishes through the loss of its node: the next Publish goes to
// another node and is confirmed, within its own deadline.
func TestClusterPublisherFailsOver(t *testing.T) {
	c := needCluster(t)
	q := fmt.Sprintf("qk-cluster-pub-%06d", rand.IntN(1000000))
	if err := rabbitmq.DeclareTopology(context.Background(), rabbitmq.Dialer{URLs: c.urls}, q, rabbitmq.Topology{QueueType: rabbitmq.Quorum}); err != nil {
		t.Fatal(err)
	}
	var rec dialRecorder
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{
		Dialer:       rabbitmq.Dialer{URLs: c.urls, Dial: rec.dial},
		Timeout:      20 * time.Second,
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
		Logger:       quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(context.Background()) }()
	msg := func(id string) *broker.Message { return &broker.Message{ID: id, Key: []byte(q), Body: []byte(id)} }
	if err := pub.Publish(context.Background(), "", msg("before")); err != nil {
		t.Fatal(err)
	}
	n := c.nodeOfAddr(rec.addr())
	c.stopApp(t, n)
	if err := pub.Publish(context.Background(), "", msg("after")); err != nil {
		t.Fatalf("Publish after node qk-c%d stopped = %v; want it confirmed by another node", n, err)
	}
	if m := c.nodeOfAddr(rec.addr()); m == n {
		t.Fatalf("Publisher still on qk-c%d, which is stopped", n)
	}
	c.restore(t, n)
}

// TestClusterPassiveSourceSurvivesItsQueueNodeStopping (review H4): a
// classic queue on node 1, a Passive source connected to the other nodes,
// and node 1 stopped (stop_app) for a while. The passive check answered 404
// "process is stopped by supervisor" (or "is down or inaccessible"), which
// is fatal under Passive for a queue that does not exist: the source gave
// up for good. It must retry, and deliver once the node is back.
func TestClusterPassiveSourceSurvivesItsQueueNodeStopping(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	q := fmt.Sprintf("qk-review-h4-%06d", rand.IntN(1000000))
	topo := rabbitmq.Topology{} // classic
	// Declared through the first node: the classic queues are local to it.
	if err := rabbitmq.DeclareTopology(ctx, rabbitmq.Dialer{URL: c.urls[0]}, q, topo); err != nil {
		t.Fatal(err)
	}
	others := rabbitmq.Dialer{URLs: c.urls[1:]}
	topo.Passive = true
	src, err := rabbitmq.NewSource(rabbitmq.Config{Dialer: others, Queue: q, Topology: topo, Logger: clusterLogger(),
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close(ctx) }()
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, _ = src.Receive(rctx) // subscribes
	cancel()
	if err := src.Status().Err; err != nil {
		t.Fatalf("source not subscribed: %v", err)
	}
	c.stopApp(t, c.nodes[0])
	waitFor(t, 20*time.Second, "the source to see its queue's node go", func() bool { return src.Status().Err != nil })
	time.Sleep(time.Second) // a few passive checks while the node is down
	t.Logf("while node %d is stopped: %v", c.nodes[0], src.Status().Err)
	c.restore(t, c.nodes[0])
	pub, err := rabbitmq.NewPublisher(rabbitmq.PublisherConfig{Dialer: others, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(ctx) }()
	waitFor(t, 20*time.Second, "a publish to the queue once its node is back", func() bool {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return pub.Publish(pctx, "", &broker.Message{ID: "m", Key: []byte(q), Body: []byte("m")}) == nil
	})
	rctx, cancel = context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	d, err := src.Receive(rctx)
	if err != nil {
		t.Fatalf("Receive from a passive source after its queue's node came back = %v (status %+v); want the message", err, src.Status())
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}
