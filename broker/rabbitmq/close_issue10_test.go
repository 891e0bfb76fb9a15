package rabbitmq

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// hungSource returns a Source on queue q (holding one message, id "m1")
// through a proxy, the delivery it received and not settled, and the proxy,
// frozen both ways: the connection hangs as a broker that stopped answering
// or a network that drops everything would leave it.
func hungSource(t *testing.T, q string) (*Source, broker.Delivery, *tcpProxy) {
	t.Helper()
	proxy := newTCPProxy(t)
	cfg := testConfig(q)
	cfg.Dialer.URL = proxy.URL()
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive = %v", err)
	}
	proxy.freeze(toBroker, toClient)
	return src, d, proxy
}

// publishOne puts a message with id into q (declared by the caller).
func publishOne(t *testing.T, q, id string) {
	t.Helper()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp.Publishing{MessageId: id, Body: []byte(id)}); err != nil {
		t.Fatal(err)
	}
}

// redelivered checks that a fresh source on q (connected directly) gets the
// message with id: nothing was lost.
func redelivered(t *testing.T, q, id string) {
	t.Helper()
	src, err := NewSource(testConfig(q))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	if got := receiveOne(t, src, 20*time.Second); got.ID != id {
		t.Fatalf("fresh source received %q; want the unsettled %q again", got.ID, id)
	}
}

// Issue 10 item 4: Source.Close is bounded by its context, like net/http's
// Server.Shutdown. On a hung connection it used to wait for the channel
// close handshake until the heartbeat timeout (~15 s, or longer with a
// longer heartbeat); now it gives up at ctx's end, closes the socket, and
// every goroutine of the source exits (TestMain's goleak check). The
// unsettled delivery stays with the broker.
func TestIssue10SourceCloseIsBoundedByItsContext(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	publishOne(t, q, "m1")
	src, _, proxy := hungSource(t, q)

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := src.Close(ctx)
	took := time.Since(start)
	t.Logf("Close(500 ms) on a hung connection = %v after %v", err, took)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	if took > 2*time.Second {
		t.Errorf("Close(ctx with 500 ms) took %v; want about 500 ms", took)
	}
	// A second Close returns at once: the first is done.
	if err := src.Close(context.Background()); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Close = %v", err)
	}
	// The broker notices the hung connection by its heartbeat timeout; the
	// proxy's close stands for it.
	proxy.Close()
	redelivered(t, q, "m1")
}

// Issue 10 item 4 (must show): a consumer on a hung RabbitMQ connection,
// whose handler ignores its context, shuts down within its context's 2 s,
// and the message it was handling is delivered again afterwards.
func TestIssue10ConsumerShutdownOnAHungConnectionIsBoundedByItsContext(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	publishOne(t, q, "m1")
	proxy := newTCPProxy(t)
	cfg := testConfig(q)
	cfg.Dialer.URL = proxy.URL()
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started <- struct{}{}
		<-release // ignores ctx, as a handler stuck in a call without one would
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithConcurrency(1), consumer.WithLogger(quietLogger()))
	_, cancelRun, runDone := runInBackground(t, c, err)
	defer cancelRun()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler did not start")
	}
	proxy.freeze(toBroker, toClient)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = c.Shutdown(ctx)
	took := time.Since(start)
	t.Logf("Shutdown(ctx with 2 s) on a hung connection, handler ignoring its ctx = %v after %v", err, took)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v; want context.DeadlineExceeded", err)
	}
	if took > 2200*time.Millisecond {
		t.Errorf("Shutdown(ctx with 2 s) took %v; want at most 2.2 s", took)
	}
	close(release)
	select {
	case err := <-runDone:
		t.Logf("Run = %v", err)
	case <-time.After(5 * time.Second):
		t.Error("Run did not return within 5 s of the handler's return")
	}
	proxy.Close() // the broker's heartbeat timeout, sooner
	redelivered(t, q, "m1")
}

// Issue 10 item 4: on a shared Connection, a Source's Close cannot close the
// connection: it returns at its ctx's end, and the Connection's own
// Close(ctx) is what gives up on the broker, ending what the source still
// waited for (TestMain's goleak check sees every goroutine gone).
func TestIssue10SharedConnectionCloseIsBoundedByItsContext(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	publishOne(t, q, "m1")
	proxy := newTCPProxy(t)
	conn, err := NewConnection(Dialer{URL: proxy.URL()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(q)
	cfg.Conn = conn
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if _, err := src.Receive(rctx); err != nil {
		t.Fatalf("Receive = %v", err)
	}
	proxy.freeze(toBroker, toClient)

	for _, c := range []struct {
		what  string
		close func(context.Context) error
	}{{"Source.Close", src.Close}, {"Connection.Close", conn.Close}} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		err := c.close(ctx)
		took := time.Since(start)
		cancel()
		t.Logf("%s(300 ms) on a hung shared connection = %v after %v", c.what, err, took)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s = %v; want an error wrapping context.DeadlineExceeded", c.what, err)
		}
		if took > 2*time.Second {
			t.Errorf("%s(ctx with 300 ms) took %v", c.what, took)
		}
	}
	// The source's shutdown, left in the background, ends with the
	// connection.
	select {
	case <-src.closeDone:
	case <-time.After(2 * time.Second):
		t.Fatal("the source's close still waits 2 s after the Connection gave up")
	}
	proxy.Close()
	redelivered(t, q, "m1")
}
