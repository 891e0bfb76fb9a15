package kafka_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/internal/kafkatest"
)

// The scenarios of two members with one shut down mid-run and of a member
// that vanishes are shared with the franz-go adapter: internal/kafkatest,
// run by TestScenarios (scenarios_test.go).

// twoRawReaders is the kafka-go adapter's kafkatest.Adapter.Baseline: it
// runs the scenario of kafkatest.TwoMembersOneShutDownMidRun with two plain
// kafka-go group Readers instead of queuekit: n records with the same keys,
// the same handler, the same group timings; reader A alone, then B joins,
// then A is stopped gracefully mid-run — its loop finishes the record in
// hand, commits it, and only then is the Reader closed. Each loop is the
// strictest at-least-once loop the Reader offers: FetchMessage, handle,
// a synchronous CommitMessages of that record. Whatever duplicates remain
// come from the rebalances: the Reader has no step that commits before its
// partitions are given up. It reports the duplicates and the rebalances
// the remaining Reader saw.
func twoRawReaders(t *testing.T, c *kafkatest.Cluster, n int) (duplicates, rebalances int) {
	t.Helper()
	topic := c.Topic(t, "twomembers-raw")
	c.Produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%997) })
	const group = "g-two-raw"
	l := kafkatest.NewLedger()
	type reader struct {
		r      *kafkago.Reader
		cancel context.CancelFunc
		done   chan struct{}
	}
	var commitErrs atomic.Int64
	start := func() *reader {
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers:           c.Brokers,
			GroupID:           group,
			Topic:             topic,
			HeartbeatInterval: 100 * time.Millisecond,
			SessionTimeout:    2 * time.Second,
			RebalanceTimeout:  3 * time.Second,
			MaxWait:           100 * time.Millisecond,
			StartOffset:       kafkago.FirstOffset,
		})
		ctx, cancel := context.WithCancel(context.Background())
		rd := &reader{r: r, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(rd.done)
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					return // stopped
				}
				time.Sleep(100 * time.Microsecond)
				l.Add(kafkatest.ID(m.Topic, m.Partition, m.Offset))
				// Not ctx: the record in hand is committed even when stopping.
				if err := r.CommitMessages(context.Background(), m); err != nil {
					commitErrs.Add(1)
				}
			}
		}()
		return rd
	}
	stop := func(rd *reader) {
		rd.cancel()
		<-rd.done
		if err := rd.r.Close(); err != nil {
			t.Errorf("raw Reader Close: %v", err)
		}
	}
	a := start()
	kafkatest.WaitFor(t, "raw reader A to start handling", 20*time.Second, func() bool { return l.Distinct() > n/10 })
	b := start()
	defer stop(b)
	kafkatest.WaitFor(t, "both raw readers to share the work", 30*time.Second, func() bool { return l.Distinct() > n/3 })
	stop(a)
	kafkatest.WaitFor(t, "every record handled by the raw readers", 60*time.Second, func() bool { return l.Distinct() == n })
	duplicates, rebalances = l.Duplicates(), int(b.r.Stats().Rebalances)
	if c := commitErrs.Load(); c > 0 {
		t.Logf("raw readers: %d CommitMessages calls failed", c)
	}
	return duplicates, rebalances
}

// A delivery still unsettled when its generation's drain budget ran out is
// fenced: acking it later returns ErrStaleDelivery and its offset is never
// committed, so the partition's next owner gets it again (kafka-go #1308).
func TestDeliveryOutlivingItsGenerationIsFencedAndNotCommitted(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "fence")
	e.produce(t, topic, 0, 40, func(i int) string { return "k" + strconv.Itoa(i) })

	cfg := e.config(topic, "g-fence")
	cfg.RebalanceDrainTimeout = 300 * time.Millisecond
	src := newSource(t, cfg)
	rebalanced := make(chan error, 4)
	src.SetEventHook(func(ev broker.Event) {
		if ev.Kind == broker.EventRebalanced {
			select {
			case rebalanced <- ev.Err:
			default:
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	heldPart, heldOff := idOffset(held.Message().ID)

	// A second member joins: the first one's generation ends, the drain
	// budget passes with `held` unsettled.
	l := newLedger()
	b := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		l.add(m.ID)
		return nil
	}))
	select {
	case err := <-rebalanced:
		if !errors.Is(err, kafka.ErrRebalance) {
			t.Errorf("rebalance event Err = %v; want ErrRebalance", err)
		}
	case <-ctx.Done():
		t.Fatal("no rebalance event")
	}
	if err := held.Ack(ctx); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Fatalf("Ack after the generation ended = %v; want ErrStaleDelivery", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitFor(t, "member B to take every partition and handle all", 20*time.Second, func() bool { return l.distinct() == 40 })
	b.stop(t)
	if got := l.seen[held.Message().ID]; got != 1 {
		t.Errorf("fenced record %s handled %d times by the new owner; want 1", held.Message().ID, got)
	}
	t.Logf("fenced record %s (partition %d offset %d) was redelivered to the new owner", held.Message().ID, heldPart, heldOff)
}
