package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Capabilities declares what an adapter supports beyond the core contract.
// Cases that need a capability the adapter lacks are skipped, with the name of
// the capability in the skip message.
type Capabilities struct {
	// DeliveryCount: Message.Attempt is 1 on the first delivery and grows by
	// one after each Requeue (the runtime's delivery budget depends on it).
	// An adapter that redelivers in process (Kafka) counts there.
	DeliveryCount bool
	// DurableDeliveryCount: Attempt also grows when a message is redelivered
	// because its source closed or its delivery went stale, including to a
	// new source (RabbitMQ quorum queues' x-delivery-count, memory). Kafka
	// cannot know: a new member starts again at 1.
	DurableDeliveryCount bool
	// Prefetch: a source never has more than its prefetch deliveries handed
	// out and unsettled; Receive blocks at the bound.
	Prefetch bool
	// DelayedRequeue: deliveries implement broker.DelayedRequeuer.
	DelayedRequeue bool
	// StaleDeliveries: Fixture.MakeStale can make the outstanding deliveries
	// of a source stale, and the adapter then redelivers their messages to
	// the same source after it recovered.
	StaleDeliveries bool
	// PublishedID: the ID a publisher sets on a message arrives as
	// Message.ID (RabbitMQ's message-id, memory). Kafka identifies a record
	// by its topic, partition and offset instead.
	PublishedID bool
	// UnknownDestination: Publish to a destination that does not exist
	// returns an error (Fixture.UnknownDestination names one), and the
	// publisher goes on working. A broker that creates destinations on first
	// use (memory) cannot tell.
	UnknownDestination bool
}

// A Harness plugs an adapter into the suite.
type Harness struct {
	// Capabilities declares what the adapter supports.
	Capabilities Capabilities
	// Setup creates a fresh, empty destination (queue, topic, subscription
	// group) for one test case and returns its fixture. It is called once per
	// case, on the case's *testing.T, and a second time by the dead-letter
	// case that needs a destination other than the case's own: the fixtures
	// of one case must be on the same broker (connection, vhost, cluster),
	// so that a redrive from one can reach the other. Use t.Cleanup to
	// delete what it created.
	Setup func(t *testing.T) Fixture
	// Timeout bounds each wait of the suite for something that should happen
	// (a delivery, a dead letter, a consumer draining). Zero means 10s.
	Timeout time.Duration
	// Quiet is how long the suite waits to be confident that something does
	// not happen (no redelivery of an acked message, Receive blocking at the
	// prefetch bound). Zero means 300ms. Raise it for a broker whose
	// redeliveries can take longer.
	Quiet time.Duration
}

// A Fixture is one fresh destination of the adapter under test.
type Fixture struct {
	// Destination is the queue or topic name the adapter reports in
	// Message.Topic and Reason.Source. If empty, those are not checked.
	Destination string
	// Publish publishes msgs to the destination, in order, and returns once
	// the broker has them. Message.ID may be empty; Attempt is ignored.
	// Required unless NewPublisher is set, in which case it defaults to
	// Publish on a publisher from NewPublisher, to PublishDestination.
	Publish func(ctx context.Context, msgs ...broker.Message) error
	// NewPublisher returns a new publisher of the adapter whose Publish to
	// PublishDestination reaches the sources of this fixture. The suite
	// closes every publisher it creates. If nil, the publisher cases are
	// skipped.
	NewPublisher func(t *testing.T) broker.Publisher
	// PublishDestination is the dest argument of Publish that reaches this
	// fixture's sources: the queue (memory), an exchange bound to the queue
	// that keeps the routing key (RabbitMQ), the topic (Kafka). Required with
	// NewPublisher.
	PublishDestination string
	// UnknownDestination is a destination that does not exist, which
	// Publish must refuse. Required if Capabilities.UnknownDestination.
	UnknownDestination string
	// NewSource returns a new, open source (a new consumer or group member)
	// on the destination, with the given prefetch (>= 1). Sources of one
	// fixture share their messages: what one source gave back, a source
	// created later receives. The suite closes every source it creates, but
	// NewSource may also register t.Cleanup to close it. Required.
	NewSource func(t *testing.T, prefetch int) broker.Source
	// DeadLetters waits until at least n messages were dead-lettered from the
	// destination, or ctx is done, and returns the dead letters it found, in
	// order (possibly fewer than n when ctx ended). Required.
	DeadLetters func(ctx context.Context, t *testing.T, n int) []broker.Message
	// DeadLetterDestination is the name of the destination's dead-letter
	// destination (queue, topic), which a Redrive must refuse as
	// RedriveOptions.Destination. If empty, the case that checks it is
	// skipped.
	DeadLetterDestination string
	// MakeStale makes every outstanding delivery of src stale, as a dropped
	// connection or a rebalance does, and returns when settling them can
	// only fail with broker.ErrStaleDelivery. src is a source made by
	// NewSource. Required if Capabilities.StaleDeliveries.
	MakeStale func(t *testing.T, src broker.Source)
}

// Run runs the conformance suite against h. Each case is a subtest of t
// whose name reads as the contract it checks.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Setup == nil {
		t.Fatal("brokertest: Harness.Setup is nil")
	}
	if h.Timeout <= 0 {
		h.Timeout = 10 * time.Second
	}
	if h.Quiet <= 0 {
		h.Quiet = 300 * time.Millisecond
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, need := range c.needs {
				if ok, name := need(h.Capabilities); !ok {
					t.Skipf("adapter does not declare Capabilities.%s", name)
				}
			}
			f := h.Setup(t)
			switch {
			case f.NewPublisher != nil && f.PublishDestination == "":
				t.Fatal("brokertest: Fixture.NewPublisher is set but PublishDestination is empty")
			case f.Publish == nil && f.NewPublisher != nil:
				f.Publish = publishVia(t, f)
			}
			if f.Publish == nil || f.NewSource == nil || f.DeadLetters == nil {
				t.Fatal("brokertest: Fixture.Publish (or NewPublisher), NewSource and DeadLetters are required")
			}
			if h.Capabilities.StaleDeliveries && f.MakeStale == nil {
				t.Fatal("brokertest: Capabilities.StaleDeliveries is set but Fixture.MakeStale is nil")
			}
			if h.Capabilities.UnknownDestination && f.UnknownDestination == "" {
				t.Fatal("brokertest: Capabilities.UnknownDestination is set but Fixture.UnknownDestination is empty")
			}
			c.run(&env{T: t, h: h, f: f})
		})
	}
}

// publishVia is the default Fixture.Publish: one publisher of the case,
// made on first use and closed when the case ends.
func publishVia(t *testing.T, f Fixture) func(ctx context.Context, msgs ...broker.Message) error {
	var (
		once sync.Once
		p    broker.Publisher
	)
	return func(ctx context.Context, msgs ...broker.Message) error {
		once.Do(func() {
			p = f.NewPublisher(t)
			if p != nil {
				t.Cleanup(func() { p.Close(context.Background()) })
			}
		})
		if p == nil {
			return errors.New("brokertest: Fixture.NewPublisher returned nil")
		}
		ps := make([]*broker.Message, len(msgs))
		for i := range msgs {
			ps[i] = &msgs[i]
		}
		return p.Publish(ctx, f.PublishDestination, ps...)
	}
}

type need func(Capabilities) (bool, string)

func needDeliveryCount(c Capabilities) (bool, string) { return c.DeliveryCount, "DeliveryCount" }
func needPrefetch(c Capabilities) (bool, string)      { return c.Prefetch, "Prefetch" }
func needDelayed(c Capabilities) (bool, string)       { return c.DelayedRequeue, "DelayedRequeue" }
func needStale(c Capabilities) (bool, string)         { return c.StaleDeliveries, "StaleDeliveries" }
func needUnknownDestination(c Capabilities) (bool, string) {
	return c.UnknownDestination, "UnknownDestination"
}

type testCase struct {
	name  string
	needs []need
	run   func(e *env)
}

// env is what a case works with: the fixture plus helpers bounded by the
// harness timeouts.
type env struct {
	*testing.T
	h Harness
	f Fixture
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	e.Cleanup(cancel)
	return ctx
}

func (e *env) publish(msgs ...broker.Message) {
	e.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := e.f.Publish(ctx, msgs...); err != nil {
		e.Fatalf("Publish(%d messages) = %v; the fixture must be able to publish", len(msgs), err)
	}
}

func (e *env) source(prefetch int) broker.Source {
	e.Helper()
	src := e.f.NewSource(e.T, prefetch)
	if src == nil {
		e.Fatal("Fixture.NewSource returned nil")
	}
	e.Cleanup(func() { src.Close(context.Background()) })
	return src
}

// receive waits up to Timeout for a delivery; what says what was expected.
func (e *env) receive(src broker.Source, what string) broker.Delivery {
	e.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		e.Fatalf("%s: Receive = %v after waiting up to %v", what, err, e.h.Timeout)
	}
	if d == nil || d.Message() == nil {
		e.Fatalf("%s: Receive returned a nil delivery or message with a nil error", what)
	}
	return d
}

// nothing checks that Receive delivers nothing for Quiet.
func (e *env) nothing(src broker.Source, why string) {
	e.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Quiet)
	defer cancel()
	d, err := src.Receive(ctx)
	if err == nil {
		e.Fatalf("%s; but Receive delivered %s", why, describe(d.Message()))
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		e.Fatalf("%s: Receive = %v; want it to block until its context ends and return context.DeadlineExceeded", why, err)
	}
}

func (e *env) ack(d broker.Delivery) {
	e.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := d.Ack(ctx); err != nil {
		e.Fatalf("Ack(%s) = %v; want nil for a delivery settled once", describe(d.Message()), err)
	}
}

func (e *env) requeue(d broker.Delivery) {
	e.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := d.Requeue(ctx); err != nil {
		e.Fatalf("Requeue(%s) = %v; want nil for a delivery settled once", describe(d.Message()), err)
	}
}

// publisher returns a new publisher of the fixture, closed when the case
// ends, or skips the case when the fixture has none.
func (e *env) publisher() broker.Publisher {
	e.Helper()
	if e.f.NewPublisher == nil {
		e.Skip("the fixture has no NewPublisher")
	}
	p := e.f.NewPublisher(e.T)
	if p == nil {
		e.Fatal("Fixture.NewPublisher returned nil")
	}
	e.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// eventually polls cond until it holds, for up to Timeout; what says what
// was expected, and last (if not nil) what was seen last.
func (e *env) eventually(what string, cond func() bool, last func() string) {
	e.Helper()
	deadline := time.Now().Add(e.h.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			seen := ""
			if last != nil {
				seen = "; last seen: " + last()
			}
			e.Fatalf("%s: not so within %v%s", what, e.h.Timeout, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) close(src broker.Source) {
	e.Helper()
	if err := src.Close(context.Background()); err != nil {
		e.Fatalf("Source.Close() = %v; want nil", err)
	}
}

// msg returns a test message whose body is "<prefix>-<i>".
func msg(prefix string, i int) broker.Message {
	return broker.Message{
		Key:    []byte(fmt.Sprintf("key-%d", i)),
		Body:   []byte(fmt.Sprintf("%s-%d", prefix, i)),
		Header: map[string]string{"x-test-index": fmt.Sprint(i)},
	}
}

func msgs(prefix string, n int) []broker.Message {
	out := make([]broker.Message, n)
	for i := range out {
		out[i] = msg(prefix, i)
	}
	return out
}

func describe(m *broker.Message) string {
	if m == nil {
		return "<nil message>"
	}
	return fmt.Sprintf("message %q (ID %q, Attempt %d)", m.Body, m.ID, m.Attempt)
}
