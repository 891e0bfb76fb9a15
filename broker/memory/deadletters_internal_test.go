package memory

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/queuekit/queuekit/broker"
)

// probeCtx is a context whose Err calls probe, so that a test sees each
// time a dead-letter call checks its context: whether the broker's lock is
// held then, and what the call does when the context ends half-way.
type probeCtx struct {
	context.Context
	calls int
	probe func(call int) error
}

func (c *probeCtx) Err() error {
	c.calls++
	return c.probe(c.calls)
}

// fillDead records n dead letters of queue (whose source queue exists), each
// with a reason naming queue.
func fillDead(t *testing.T, b *Broker, queue string, n int) {
	t.Helper()
	if err := b.Publish(context.Background(), queue, &broker.Message{Body: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Body: []byte(fmt.Sprint(i)), Header: broker.Reason{Err: "boom", Source: queue, Attempts: 1}.Header(nil)}
	}
	if err := b.Publish(context.Background(), DeadLetterQueue(queue), msgs...); err != nil {
		t.Fatal(err)
	}
}

// deadCalls are the dead-letter calls that walk the record, by name.
var deadCalls = []struct {
	name string
	call func(ctx context.Context, dl broker.DeadLetters, ids []string) error
}{
	{"List", func(ctx context.Context, dl broker.DeadLetters, ids []string) error {
		_, err := dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{IDs: ids}, Limit: broker.MaxListLimit})
		return err
	}},
	{"Count", func(ctx context.Context, dl broker.DeadLetters, ids []string) error {
		_, err := dl.Count(ctx, broker.DeadLetterFilter{IDs: ids})
		return err
	}},
	{"Redrive", func(ctx context.Context, dl broker.DeadLetters, ids []string) error {
		_, err := dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: ids}}, broker.RedriveOptions{})
		return err
	}},
	{"Redrive DryRun", func(ctx context.Context, dl broker.DeadLetters, ids []string) error {
		_, err := dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: ids}}, broker.RedriveOptions{DryRun: true})
		return err
	}},
	{"Purge", func(ctx context.Context, dl broker.DeadLetters, ids []string) error {
		_, err := dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: ids}}, false)
		return err
	}},
}

// TestDeadLettersCheckContextWithoutTheLock: a call over many dead letters
// (and a long id list) checks its context as it goes, never while it holds
// the broker's lock (which every Publish and Receive of every queue waits
// for), and returns the context's error when it ends half-way. Found by
// review: 50,000 ids over 10,000 dead letters held the lock for seconds
// past a 100ms context.
func TestDeadLettersCheckContextWithoutTheLock(t *testing.T) {
	const n = 3000
	ids := make([]string, 0, 2*n)
	for i := range n {
		ids = append(ids, fmt.Sprintf("q.dlq-%d", i+1), fmt.Sprintf("nope-%d", i))
	}
	for _, c := range deadCalls {
		t.Run(c.name, func(t *testing.T) {
			b := NewBroker()
			defer b.Close()
			fillDead(t, b, "q", n)
			held := 0
			ctx := &probeCtx{Context: context.Background(), probe: func(int) error {
				if !b.mu.TryLock() {
					held++
					return nil
				}
				b.mu.Unlock()
				return nil
			}}
			if err := c.call(ctx, b.DeadLettersOf("q"), ids); err != nil && !errors.Is(err, broker.ErrDeadLetterNotFound) {
				t.Fatalf("%s = %v", c.name, err)
			}
			if held > 0 {
				t.Errorf("%s checked its context %d times with the broker's lock held", c.name, held)
			}
			if ctx.calls < 2 {
				t.Errorf("%s over %d dead letters checked its context %d time(s); want it checked as it goes", c.name, n, ctx.calls)
			}
		})
		t.Run(c.name+" cancelled half-way", func(t *testing.T) {
			b := NewBroker()
			defer b.Close()
			fillDead(t, b, "q", n)
			ctx := &probeCtx{Context: context.Background(), probe: func(call int) error {
				if call > 1 {
					return context.Canceled
				}
				return nil
			}}
			if err := c.call(ctx, b.DeadLettersOf("q"), ids); !errors.Is(err, context.Canceled) {
				t.Errorf("%s with a context cancelled after its first check = %v; want context.Canceled", c.name, err)
			}
			if got := len(b.DeadLetters("q")); got == 0 {
				t.Errorf("%s cancelled half-way handled every dead letter", c.name)
			}
		})
	}
}
