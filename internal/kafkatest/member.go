package kafkatest

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// config returns the scenario's SourceConfig for topic and group on c.
func (c *Cluster) config(topic, group string) SourceConfig {
	return SourceConfig{Brokers: c.Brokers, Topic: topic, Group: group, Logger: Logger()}.Timings()
}

// member is one consumer (runtime + Source) running in the background.
type member struct {
	c    *consumer.Consumer
	done chan error
	// abandons is set by scenarios whose handlers outlive the drain on
	// purpose: stop then gives Shutdown a short budget (ctx alone bounds
	// it), and Shutdown reports its end (ErrDrainTimeout, or ctx's error).
	abandons bool
	// closeFails is set by scenarios whose member cannot commit at the end
	// on purpose: Shutdown then reports the failed final commit (the
	// Source's Close returns it), with an error wrapping closeFails.
	closeFails error
}

func startMember(t testing.TB, src broker.Source, h consumer.Handler, opts ...consumer.Option) *member {
	t.Helper()
	opts = append([]consumer.Option{consumer.WithLogger(Logger()), consumer.WithDrainTimeout(5 * time.Second)}, opts...)
	c, err := consumer.New(src, h, opts...)
	if err != nil {
		t.Fatalf("consumer.New: %v", err)
	}
	m := &member{c: c, done: make(chan error, 1)}
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

func (l *ledger) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[id]
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

// Ledger records handled message IDs, for Baseline functions: Add is safe
// for concurrent use.
type Ledger struct{ l *ledger }

// NewLedger returns an empty Ledger.
func NewLedger() *Ledger { return &Ledger{l: newLedger()} }

// Add records one handling of the message id.
func (l *Ledger) Add(id string) { l.l.add(id) }

// Distinct returns how many distinct IDs were handled.
func (l *Ledger) Distinct() int { return l.l.distinct() }

// Duplicates returns how many handlings were of an ID handled before.
func (l *Ledger) Duplicates() int { return l.l.duplicates() }

// WaitFor polls cond every 10ms and fails t if it is not true within
// timeout.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	waitFor(t, what, timeout, cond)
}

// ID returns the message ID both adapters give the record at topic,
// partition, offset.
func ID(topic string, partition int, offset int64) string {
	return topic + "/" + strconv.Itoa(partition) + "/" + strconv.FormatInt(offset, 10)
}

// idOffset splits a message ID "topic/partition/offset".
func idOffset(id string) (partition int, offset int64) {
	parts := strings.Split(id, "/")
	p, _ := strconv.Atoi(parts[len(parts)-2])
	o, _ := strconv.ParseInt(parts[len(parts)-1], 10, 64)
	return p, o
}
