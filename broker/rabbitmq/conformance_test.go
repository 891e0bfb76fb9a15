package rabbitmq

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
)

// TestConformance runs the public conformance suite (broker/brokertest)
// against the real RabbitMQ, on a classic and on a quorum queue. Only quorum
// queues count deliveries durably (x-delivery-count): a classic queue counts
// requeues itself (by republishing) but knows only "redelivered" after a
// connection loss.
//
// It runs in parallel with the other parallel tests (never with the serial
// ones, such as the chaos and broker-restart tests that cut every
// connection of the vhost), and its classic and quorum runs in parallel
// with each other: each case works on a queue and connections of its own,
// and the cases mostly wait for broker round trips.
func TestConformance(t *testing.T) {
	needBroker(t)
	t.Parallel()
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			brokertest.Run(t, brokertest.Harness{
				Capabilities: brokertest.Capabilities{
					DeliveryCount:        true,
					DurableDeliveryCount: typ == Quorum,
					Prefetch:             true,
					DelayedRequeue:       true,
					StaleDeliveries:      true,
					PublishedID:          true, // the message-id
					UnknownDestination:   true, // 404 NOT_FOUND for an exchange that does not exist
				},
				Setup:   func(t *testing.T) brokertest.Fixture { return conformanceFixture(t, typ) },
				Timeout: 20 * time.Second,
				Quiet:   500 * time.Millisecond,
			})
		})
	}
}

// conformanceFixture declares a fresh queue of type typ, bound to a fanout
// exchange so that published routing keys reach the queue unchanged.
func conformanceFixture(t *testing.T, typ string) brokertest.Fixture {
	q := uniqueQueue(t)
	x := q + ".in"
	topo := Topology{
		QueueType: typ,
		Exchanges: []Exchange{{Name: x, Kind: amqp.ExchangeFanout}},
		Bindings:  []Binding{{Exchange: x}},
	}
	if err := topo.resolve(q); err != nil {
		t.Fatal(err)
	}
	conn := rawConn(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.declare(ch, q); err != nil {
		t.Fatalf("declare: %v", err)
	}
	_ = ch.Close()
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_ = ch.ExchangeDelete(x, false, false)
			_ = ch.Close()
		}
	})
	return brokertest.Fixture{
		Destination: q,
		// Publishing to the fanout exchange keeps each message's Key as
		// its routing key; the default exchange would need the queue name.
		PublishDestination: x,
		UnknownDestination: x + ".missing",
		NewPublisher: func(t *testing.T) broker.Publisher {
			pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
			if err != nil {
				t.Fatalf("NewPublisher = %v", err)
			}
			return pub
		},
		NewSource: func(t *testing.T, prefetch int) broker.Source {
			cfg := testConfig(q)
			cfg.Prefetch = prefetch
			cfg.Topology = topo
			src, err := NewSource(cfg)
			if err != nil {
				t.Fatalf("NewSource(prefetch %d) = %v", prefetch, err)
			}
			t.Cleanup(func() { _ = src.Close(context.Background()) })
			return src
		},
		DeadLetterDestination: topo.DeadLetterQueue,
		DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
			return readQueue(ctx, t, topo.DeadLetterQueue, n)
		},
		MakeStale: func(t *testing.T, src broker.Source) {
			dropConnection(t, src.(*Source))
		},
	}
}

// readQueue gets messages from q (without removing them: they are nacked
// back when the channel closes) until it has n or ctx is done.
func readQueue(ctx context.Context, t *testing.T, q string, n int) []broker.Message {
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
	var out []broker.Message
	for len(out) < n {
		d, ok, err := ch.Get(q, false)
		if err != nil {
			t.Fatalf("get from %s: %v", q, err)
		}
		if ok {
			out = append(out, toMessage(&d, q, nil))
			continue
		}
		select {
		case <-ctx.Done():
			return out
		case <-time.After(20 * time.Millisecond):
		}
	}
	return out
}

// dropConnection closes the source's AMQP connection under it, as a network
// failure would, and returns once its channel is closed: from then on its
// outstanding deliveries are stale.
func dropConnection(t testing.TB, s *Source) {
	t.Helper()
	s.conn.mu.Lock()
	conn := s.conn.cur
	s.conn.mu.Unlock()
	if conn == nil {
		t.Fatal("dropConnection: source not connected")
	}
	_ = conn.Close()
	waitFor(t, 10*time.Second, "channel closed", func() bool {
		st := s.st.Load()
		return st.sess == nil || st.sess.ch.IsClosed()
	})
}
