package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/sql/outbox"
)

// eventually is the bound on anything a test waits for: it must happen, and
// a loaded machine may take a while.
const eventually = 60 * time.Second

// hookPublisher wraps a real publisher (the memory broker's) and injects
// faults: before may fail a Publish before anything is published, after may
// fail it once the messages were published (a lost confirm).
type hookPublisher struct {
	inner  broker.Publisher
	mu     sync.Mutex
	before func(ctx context.Context, dest string, msgs []*broker.Message) error
	after  func(dest string, msgs []*broker.Message) error
	ok     []string // dest/body of every message of a Publish that returned nil, in order
}

func (p *hookPublisher) Publish(ctx context.Context, dest string, msgs ...*broker.Message) error {
	p.mu.Lock()
	before, after := p.before, p.after
	p.mu.Unlock()
	if before != nil {
		if err := before(ctx, dest, msgs); err != nil {
			return err
		}
	}
	if err := p.inner.Publish(ctx, dest, msgs...); err != nil {
		return err
	}
	if after != nil {
		if err := after(dest, msgs); err != nil {
			return err
		}
	}
	p.mu.Lock()
	for _, m := range msgs {
		p.ok = append(p.ok, dest+"/"+string(m.Body))
	}
	p.mu.Unlock()
	return nil
}

func (p *hookPublisher) Close(ctx context.Context) error { return p.inner.Close(ctx) }

func (p *hookPublisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ok...)
}

var errInjected = errors.New("injected publish failure")

// migrated returns an outbox on db's default table, migrated.
func migrated(t testing.TB, db *sql.DB, cfg outbox.Config) *outbox.Outbox {
	t.Helper()
	o, err := outbox.New(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return o
}

// write writes msgs to dest in a transaction of its own and commits it.
func write(t testing.TB, db *sql.DB, o *outbox.Outbox, dest string, msgs ...*broker.Message) {
	t.Helper()
	if err := writeErr(db, o, dest, msgs...); err != nil {
		t.Fatal(err)
	}
}

func writeErr(db *sql.DB, o *outbox.Outbox, dest string, msgs ...*broker.Message) error {
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := o.Write(ctx, tx, dest, msgs...); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// start runs r until the returned stop is called (or the test ends) and
// checks that Run returned nil.
func start(t testing.TB, r *outbox.Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Relay.Run = %v; want nil after its ctx is done", err)
				}
			case <-time.After(eventually):
				t.Errorf("Relay.Run did not return %v after its ctx was done", eventually)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// receive takes n messages from src, acking each.
func receive(t testing.TB, src *memory.Source, n int) []*broker.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	out := make([]*broker.Message, 0, n)
	for len(out) < n {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatalf("received %d of %d messages: %v", len(out), n, err)
		}
		m := *d.Message()
		out = append(out, &m)
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// waitFor polls cond until it is true.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", eventually, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// count runs a SELECT count(*) … query.
func count(t testing.TB, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// unsent is the number of unsent rows of the default table.
func unsent(t testing.TB, db *sql.DB) int {
	return count(t, db, `SELECT count(*) FROM queuekit_outbox WHERE sent_at IS NULL`)
}

func msg(key, body string) *broker.Message {
	m := &broker.Message{Body: []byte(body)}
	if key != "" {
		m.Key = []byte(key)
	}
	return m
}

func bodies(ms []*broker.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Body)
	}
	return out
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprint("unexpected error: ", err))
	}
	return v
}
