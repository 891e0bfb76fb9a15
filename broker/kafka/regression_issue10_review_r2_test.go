package kafka_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// Regression tests for the outside review of issue 10, round 2 (Kafka
// adapter: F1, F3, F4, F5). They run against the Kafka protocol
// (in-process kfake cluster); those that need kfake's request control are
// skipped against a real cluster.

// F1: broker.Source says Close finishes the session by committing what was
// settled. When that final commit fails for good (here every OffsetCommit is
// answered with COORDINATOR_LOAD_IN_PROGRESS, so the retries within the
// drain budget fail too), Close must say so, wrapping the commit's error:
// the handled records will be handled again. Before the fix it returned nil
// with nothing committed.
func TestCloseReportsAFailedFinalCommit(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.topic(t, "close-commit-fails")
	e.produce(t, topic, 0, 20, func(i int) string { return "k" + itoa(i) })
	const group = "close-commit-fails"
	cfg := e.config(topic, group)
	cfg.CommitInterval = time.Hour // nothing is committed before Close
	cfg.CommitBatch = 1 << 20
	src := newSource(t, cfg)
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d, err := src.Receive(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	e.cluster.ControlKey(int16(kmsg.OffsetCommit), func(r kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		req := r.(*kmsg.OffsetCommitRequest)
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, tp := range req.Topics {
			rt := kmsg.NewOffsetCommitResponseTopic()
			rt.Topic = tp.Topic
			for _, p := range tp.Partitions {
				rp := kmsg.NewOffsetCommitResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = kerr.CoordinatorLoadInProgress.Code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	err := src.Close(context.Background())
	committed := e.committed(t, group, topic)
	t.Logf("Close = %v; committed %v", err, committed)
	if !errors.Is(err, kafkago.GroupLoadInProgress) {
		t.Errorf("Close after a final commit that failed for good = %v; want an error wrapping the commit's (GroupLoadInProgress)", err)
	}
	for p, off := range committed {
		if off >= 0 {
			t.Errorf("partition %d committed at %d although every OffsetCommit failed", p, off)
		}
	}
}

// F3: Backlog, Lag and DeclareTopology after Close return an error wrapping
// broker.ErrSourceClosed and start nothing: before the fix each left a
// kafka-go connPool.discover goroutine running for ever (its transport's
// pools had been closed by Close; the call made a new one).
func TestCallsAfterCloseAreRefusedAndLeakNothing(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "after-close")
	ctx := context.Background()
	calls := map[string]func(*kafka.Source) error{
		"Backlog":         func(s *kafka.Source) error { _, err := s.Backlog(ctx); return err },
		"Lag":             func(s *kafka.Source) error { _, err := s.Lag(ctx); return err },
		"DeclareTopology": func(s *kafka.Source) error { return s.DeclareTopology(ctx) },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			src := newSource(t, e.config(topic, "after-close"))
			if err := src.Close(ctx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := call(src); !errors.Is(err, broker.ErrSourceClosed) {
				t.Errorf("%s after Close = %v; want an error wrapping broker.ErrSourceClosed", name, err)
			}
			if err := goleak.Find(before); err != nil {
				t.Errorf("%s after Close left goroutines behind: %v", name, err)
			}
		})
	}
}

// F3: Backlog polled concurrently with Close (as health and Prometheus do)
// leaks nothing: Close waits for a call in progress (its ctx bounds the
// wait), and a call that starts after Close began is refused.
func TestBacklogRacingCloseLeaksNothing(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "backlog-race")
	e.produce(t, topic, 0, 10, func(i int) string { return "k" + itoa(i) })
	before := goleak.IgnoreCurrent()
	for range 10 {
		src := newSource(t, e.config(topic, "backlog-race"))
		var wg sync.WaitGroup
		stop := make(chan struct{})
		var bad atomic.Value
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := src.Backlog(ctx)
				cancel()
				if err != nil && !errors.Is(err, broker.ErrSourceClosed) {
					bad.Store(err)
				}
			}
		}()
		time.Sleep(20 * time.Millisecond)
		if err := src.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
		close(stop)
		wg.Wait()
		if err, _ := bad.Load().(error); err != nil {
			t.Logf("a Backlog racing Close failed with: %v", err) // allowed: it may be cut off
		}
	}
	if err := goleak.Find(before); err != nil {
		t.Errorf("Backlog racing Close left goroutines behind: %v", err)
	}
}

// F4: names Kafka refuses as topic names (legal: 1–249 characters of
// [a-zA-Z0-9._-], not "." or "..") and compression codecs kafka-go does not
// know are refused by the constructors with an error wrapping
// broker.ErrInvalidConfig. Before the fix they were accepted: a Source that
// could never consume, a Publisher whose every write failed ("does not
// exist") or went out uncompressed (codec 99).
func TestInvalidTopicNamesAndCompressionAreRefused(t *testing.T) {
	bad := []string{"a b/c", "x y", ".", "..", "a:b", "ä", strings.Repeat("x", 250)}
	good := []string{"a", "A.b_c-9", strings.Repeat("x", 249), "...", "_"}
	base := kafka.Config{Brokers: []string{"127.0.0.1:1"}, GroupID: "g", Topic: "t"}
	for _, name := range bad {
		c := base
		c.Topic = name
		if _, err := kafka.NewSource(c); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewSource(Topic %.20q) = %v; want ErrInvalidConfig", name, err)
		}
		c = base
		c.DeadLetterTopic = name
		if _, err := kafka.NewSource(c); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewSource(DeadLetterTopic %.20q) = %v; want ErrInvalidConfig", name, err)
		}
		if _, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: base.Brokers, Topic: name}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewPublisher(Topic %.20q) = %v; want ErrInvalidConfig", name, err)
		}
	}
	for _, name := range good {
		c := base
		c.Topic = name
		// The default, name + ".dlt", is too long for a 249-character name.
		c.DeadLetterTopic = "dead-letters"
		src, err := kafka.NewSource(c)
		if err != nil {
			t.Errorf("NewSource(Topic %.20q) = %v; want nil", name, err)
		} else {
			src.Close(context.Background())
		}
		p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: base.Brokers, Topic: name})
		if err != nil {
			t.Errorf("NewPublisher(Topic %.20q) = %v; want nil", name, err)
		} else {
			p.Close(context.Background())
		}
	}
	for _, c := range []kafkago.Compression{99, -1, 5} {
		if _, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: base.Brokers, Compression: c}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewPublisher(Compression %d) = %v; want ErrInvalidConfig", c, err)
		}
	}
	for _, c := range []kafkago.Compression{0, kafkago.Gzip, kafkago.Snappy, kafkago.Lz4, kafkago.Zstd} {
		p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: base.Brokers, Compression: c})
		if err != nil {
			t.Errorf("NewPublisher(Compression %d) = %v; want nil", c, err)
			continue
		}
		p.Close(context.Background())
	}
}

// F4: Publish to a topic name Kafka refuses says that the name is invalid
// (wrapping kafkago.InvalidTopic), not that the topic "does not exist", and
// sends nothing.
func TestPublishToAnInvalidTopicNameSaysSo(t *testing.T) {
	e := newEnv(t)
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.Publish(ctx, "bad topic/name", &broker.Message{Body: []byte("x")})
	if !errors.Is(err, kafkago.InvalidTopic) || errors.Is(err, kafkago.UnknownTopicOrPartition) {
		t.Errorf("Publish to an invalid topic name = %v; want an error wrapping kafkago.InvalidTopic", err)
	}
}

// F5: Publish checks ctx while it converts a large batch, so that a deadline
// that passes meanwhile cuts the call within one chunk instead of after the
// whole batch. The Inject hook counts the messages converted: the ctx ends
// at the 10th; before the fix all 100 000 were converted (and Publish then
// returned ctx's error anyway). Nothing is written.
func TestPublishStopsConvertingWhenItsContextEnds(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "publish-ctx-chunks")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var injected atomic.Int64
	p, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers: e.brokers, BatchTimeout: time.Millisecond,
		Inject: func(_ context.Context, h map[string]string) map[string]string {
			if injected.Add(1) == 10 {
				cancel()
			}
			return h
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	const n = 100_000
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Body: []byte("x")}
	}
	start := time.Now()
	err = p.Publish(ctx, topic, msgs...)
	t.Logf("Publish = %v after %v; %d of %d messages converted", err, time.Since(start), injected.Load(), n)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a ctx cancelled mid-conversion = %v; want context.Canceled", err)
	}
	if got := injected.Load(); got > 10+kafka.PublishChunk {
		t.Errorf("Publish converted %d messages after its ctx ended at the 10th; want at most one chunk (%d) more", got, kafka.PublishChunk)
	}
	for part, off := range e.endOffsets(t, topic) {
		if off != 0 {
			t.Errorf("partition %d has %d records; want none written", part, off)
		}
	}
}
