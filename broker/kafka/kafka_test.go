package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// The tests run against the Kafka protocol served by an in-process kfake
// cluster (github.com/twmb/franz-go/pkg/kfake): a protocol-level stand-in,
// not Apache Kafka. Set QUEUEKIT_KAFKA_BROKERS=host:port[,host:port] to run
// the same tests against a real cluster instead (the tests that need kfake's
// fault injection are then skipped).

const partitions = 4

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type env struct {
	brokers []string
	cluster *kfake.Cluster // nil against a real cluster
	what    string
}

var topicSeq atomic.Int64

func newEnv(t testing.TB) *env {
	t.Helper()
	if b := os.Getenv("QUEUEKIT_KAFKA_BROKERS"); b != "" {
		return &env{brokers: strings.Split(b, ","), what: "Kafka cluster at QUEUEKIT_KAFKA_BROKERS"}
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("kfake.NewCluster: %v", err)
	}
	t.Cleanup(c.Close)
	return &env{brokers: c.ListenAddrs(), cluster: c, what: "Kafka protocol (in-process kfake cluster)"}
}

func (e *env) needKfake(t testing.TB) {
	t.Helper()
	if e.cluster == nil {
		t.Skip("needs kfake's request control (fault injection); skipped against a real cluster")
	}
}

func (e *env) client() (*kafkago.Client, *kafkago.Transport) {
	tr := &kafkago.Transport{}
	return &kafkago.Client{Addr: kafkago.TCP(e.brokers...), Timeout: 10 * time.Second, Transport: tr}, tr
}

// topic creates a fresh topic with 4 partitions and its dead-letter topic.
func (e *env) topic(t testing.TB, name string) string {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1},
		{Topic: topic + ".dlt", NumPartitions: 1, ReplicationFactor: 1},
	}})
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	for name, err := range resp.Errors {
		if err != nil {
			t.Fatalf("CreateTopics %s: %v", name, err)
		}
	}
	return topic
}

// produce writes n records to topic; record i has key key(i) and body "i".
func (e *env) produce(t testing.TB, topic string, from, n int, key func(i int) string) {
	t.Helper()
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: topic, BatchSize: 1000, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	const chunk = 5000
	for i := from; i < from+n; i += chunk {
		end := min(i+chunk, from+n)
		msgs := make([]*broker.Message, 0, end-i)
		for j := i; j < end; j++ {
			msgs = append(msgs, &broker.Message{Key: []byte(key(j)), Body: []byte(strconv.Itoa(j))})
		}
		if err := p.Publish(context.Background(), topic, msgs...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
}

func (e *env) endOffsets(t testing.TB, topic string) map[int]int64 {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	var reqs []kafkago.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafkago.LastOffsetOf(p))
	}
	resp, err := cli.ListOffsets(context.Background(), &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("ListOffsets: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.LastOffset
	}
	return out
}

func (e *env) committed(t testing.TB, group, topic string) map[int]int64 {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.OffsetFetch(context.Background(), &kafkago.OffsetFetchRequest{
		GroupID: group, Topics: map[string][]int{topic: {0, 1, 2, 3}},
	})
	if err != nil {
		t.Fatalf("OffsetFetch: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// config is tuned for fast group operations (see KAFKA_TESTING.md): with
// kafka-go's defaults a rebalance takes ~9 s.
func (e *env) config(topic, group string) kafka.Config {
	return kafka.Config{
		Brokers:               e.brokers,
		GroupID:               group,
		Topic:                 topic,
		HeartbeatInterval:     100 * time.Millisecond,
		SessionTimeout:        2 * time.Second,
		RebalanceTimeout:      3 * time.Second,
		RebalanceDrainTimeout: time.Second,
		JoinGroupBackoff:      100 * time.Millisecond,
		MaxWait:               100 * time.Millisecond,
		CommitInterval:        100 * time.Millisecond,
		Logger:                quietLogger(),
	}
}

func newSource(t testing.TB, cfg kafka.Config) *kafka.Source {
	t.Helper()
	src, err := kafka.NewSource(cfg)
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	return src
}

// member is one consumer (runtime + Source) running in the background.
type member struct {
	c    *consumer.Consumer
	src  *kafka.Source
	done chan error
	// abandons is set by tests whose handlers outlive the drain on purpose:
	// stop then gives Shutdown a short budget (ctx alone bounds it), and
	// Shutdown reports its end (ErrDrainTimeout, or ctx's error).
	abandons bool
	// closeFails is set by tests whose member cannot commit at the end on
	// purpose: Shutdown then reports the failed final commit (Source.Close
	// returns it), with an error wrapping closeFails.
	closeFails error
}

func startMember(t testing.TB, src *kafka.Source, h consumer.Handler, opts ...consumer.Option) *member {
	t.Helper()
	opts = append([]consumer.Option{consumer.WithLogger(quietLogger()), consumer.WithDrainTimeout(5 * time.Second)}, opts...)
	c, err := consumer.New(src, h, opts...)
	if err != nil {
		t.Fatalf("consumer.New: %v", err)
	}
	m := &member{c: c, src: src, done: make(chan error, 1)}
	go func() { m.done <- c.Run(context.Background()) }()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// stop shuts the member down gracefully and returns how long it took.
func (m *member) stop(t testing.TB) time.Duration {
	t.Helper()
	start := time.Now()
	budget := 30 * time.Second
	if m.abandons {
		budget = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	err := m.c.Shutdown(ctx)
	abandoned := errors.Is(err, consumer.ErrDrainTimeout) || errors.Is(err, context.DeadlineExceeded)
	refused := m.closeFails != nil && errors.Is(err, m.closeFails)
	if err != nil && !(m.abandons && abandoned) && !refused {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-m.done:
		if err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
			t.Errorf("Run = %v; want ErrConsumerClosed", err)
		}
		m.done <- err // for a second stop
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30s after Shutdown")
	}
	return time.Since(start)
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ledger records what handlers saw.
type ledger struct {
	mu    sync.Mutex
	seen  map[string]int // message ID → successful handlings
	total int
}

func newLedger() *ledger { return &ledger{seen: map[string]int{}} }

func (l *ledger) add(id string) {
	l.mu.Lock()
	l.seen[id]++
	l.total++
	l.mu.Unlock()
}

func (l *ledger) has(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[id] > 0
}

// ids returns a copy of the handled IDs.
func (l *ledger) ids() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.seen)
}

func (l *ledger) distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

func (l *ledger) duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total - len(l.seen)
}

func idOffset(id string) (partition int, offset int64) {
	parts := strings.Split(id, "/")
	p, _ := strconv.Atoi(parts[len(parts)-2])
	o, _ := strconv.ParseInt(parts[len(parts)-1], 10, 64)
	return p, o
}

func quietLogger() *slog.Logger {
	if os.Getenv("QUEUEKIT_KAFKA_DEBUG") != "" {
		return slog.Default()
	}
	return slog.New(slog.DiscardHandler)
}

func itoa(i int) string { return strconv.Itoa(i) }
