package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// Issue 12 review R2 #1: a message the broker always rejects blocks only
// its key, not the other keys of its destination (they went in the same
// Publish call, which failed as a whole).
func TestReviewR2_1PoisonMessageBlocksOnlyItsKey(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		pub := &hookPublisher{inner: memory.NewBroker().Publisher(), before: func(_ context.Context, _ string, msgs []*broker.Message) error {
			for _, m := range msgs {
				if string(m.Body) == "poison" {
					return errors.New("message too large")
				}
			}
			return nil
		}}
		write(t, db, o, "orders", msg("p", "poison"))
		write(t, db, o, "orders", msg("a", "a1"), msg("b", "b1"), msg("p", "p2"), msg("", "nokey"))
		r := must(o.Relay(pub, outbox.RelayConfig{Logger: quiet}))
		start(t, r)
		waitFor(t, "a1, b1 and nokey published past the poison message", func() bool { return len(pub.published()) >= 3 })
		time.Sleep(200 * time.Millisecond) // p2 would be published by now if it overtook
		got := pub.published()
		slices.Sort(got)
		if want := []string{"orders/a1", "orders/b1", "orders/nokey"}; !slices.Equal(got, want) {
			t.Errorf("published %q; want %q (p2 waits for the poison row of its key)", got, want)
		}
	})
}

// Issue 12 review R2 #2: rows of a failing destination at the head of the
// table do not stall the other destinations (they are in retry backoff, so
// the next round reads past them), while a key whose earlier row waits does
// not move on.
func TestReviewR2_2FailingDestinationDoesNotStallOthers(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		pub := &hookPublisher{inner: memory.NewBroker().Publisher(), before: func(_ context.Context, dest string, _ []*broker.Message) error {
			if dest == "bad" {
				return errInjected
			}
			return nil
		}}
		for i := range 10 {
			write(t, db, o, "bad", msg(fmt.Sprint("b", i), "x"))
		}
		write(t, db, o, "good", msg("g", "g1"), msg("b3", "b3-later"), msg("h", "h1"))
		r := must(o.Relay(pub, outbox.RelayConfig{Batch: 10, Logger: quiet}))
		start(t, r)
		waitFor(t, "the good rows published", func() bool { return len(pub.published()) >= 2 })
		time.Sleep(200 * time.Millisecond)
		got := pub.published()
		slices.Sort(got)
		if want := []string{"good/g1", "good/h1"}; !slices.Equal(got, want) {
			t.Errorf("published %q; want %q (b3-later waits for its key's failing row)", got, want)
		}
	})
}

// Issue 12 review R2 #2, PostgreSQL with two relays and the default Batch.
func TestReviewR2_2FailingDestinationDoesNotStallTwoRelays(t *testing.T) {
	db := sqltest.Postgres(t)
	o := migrated(t, db, outbox.Config{})
	pub := &hookPublisher{inner: memory.NewBroker().Publisher(), before: func(_ context.Context, dest string, _ []*broker.Message) error {
		if dest == "bad" {
			return errInjected
		}
		return nil
	}}
	msgs := make([]*broker.Message, 100)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprint("b", i), "x")
	}
	write(t, db, o, "bad", msgs...)
	write(t, db, o, "good", msg("g", "g1"))
	for range 2 {
		start(t, must(o.Relay(pub, outbox.RelayConfig{Logger: quiet})))
	}
	waitFor(t, "the good row published", func() bool { return len(pub.published()) == 1 })
}

// sizePublisher records the bytes of each Publish call.
type sizePublisher struct {
	mu    sync.Mutex
	calls []int
	n     int
}

func (p *sizePublisher) Publish(_ context.Context, _ string, msgs ...*broker.Message) error {
	s := 0
	for _, m := range msgs {
		s += len(m.Body)
	}
	p.mu.Lock()
	p.calls = append(p.calls, s)
	p.n += len(msgs)
	p.mu.Unlock()
	return nil
}

func (p *sizePublisher) Close(context.Context) error { return nil }

// Issue 12 review R2 #3: a round holds at most MaxBatchBytes of rows (but
// at least one row), not Batch rows of any size.
func TestReviewR2_3RoundIsBoundedByBytes(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		body := bytes.Repeat([]byte("x"), 1<<20)
		for range 8 {
			write(t, db, o, "q", &broker.Message{Body: body})
		}
		write(t, db, o, "q", &broker.Message{Body: bytes.Repeat([]byte("y"), 3<<20)}) // larger than the limit
		pub := &sizePublisher{}
		r := must(o.Relay(pub, outbox.RelayConfig{MaxBatchBytes: 5 << 19, Logger: quiet})) // 2.5 MiB
		start(t, r)
		waitFor(t, "every row published", func() bool { pub.mu.Lock(); defer pub.mu.Unlock(); return pub.n == 9 })
		pub.mu.Lock()
		defer pub.mu.Unlock()
		for _, c := range pub.calls {
			if c > 5<<19 && c != 3<<20 {
				t.Errorf("a Publish carried %d bytes of bodies; want at most MaxBatchBytes %d, or the one row larger than it (calls %v)", c, 5<<19, pub.calls)
			}
		}
	})
	if _, err := must(outbox.New(sqltest.SQLite(t), outbox.Config{})).Relay(&sizePublisher{}, outbox.RelayConfig{MaxBatchBytes: -1}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Relay with a negative MaxBatchBytes = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
}

// Issue 12 review R2 #4 and #8: headers, destinations and message IDs whose
// bytes the table cannot keep (invalid UTF-8; NUL in a text column) are
// refused by Write, naming them, never changed silently.
func TestReviewR2_4WriteRefusesBytesItCannotKeep(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		ctx := context.Background()
		for _, c := range []struct {
			dest, want string
			m          *broker.Message
		}{
			{"q", `header "h\xff"`, &broker.Message{Header: map[string]string{"h\xff": "v"}}},
			{"q", `header "h"`, &broker.Message{Header: map[string]string{"h": "v\xfe"}}},
			{"q", `ID "i\xffd"`, &broker.Message{ID: "i\xffd"}},
			{"q", `ID "i\x00d"`, &broker.Message{ID: "i\x00d"}},
			{"d\x00x", `destination "d\x00x"`, &broker.Message{}},
			{"d\xffx", `destination "d\xffx"`, &broker.Message{}},
		} {
			tx := must(db.BeginTx(ctx, nil))
			err := o.Write(ctx, tx, c.dest, c.m)
			tx.Rollback()
			if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Write(dest %q, %+v) = %v; want an error wrapping broker.ErrInvalidConfig naming %s", c.dest, c.m, err, c.want)
			}
		}
		// NUL in a header, key and body round-trip.
		b := memory.NewBroker()
		src := must(b.Source("q", memory.SourceConfig{}))
		m := &broker.Message{Key: []byte("k\x00\xff"), Body: []byte("b\x00\xff"), Header: map[string]string{"n\x00": "a\x00b"}}
		write(t, db, o, "q", m)
		start(t, must(o.Relay(b.Publisher(), outbox.RelayConfig{Logger: quiet})))
		g := receive(t, src, 1)[0]
		if !bytes.Equal(g.Key, m.Key) || !bytes.Equal(g.Body, m.Body) || g.Header["n\x00"] != "a\x00b" {
			t.Errorf("published %+v; want %+v", g, m)
		}
	})
}

// Issue 12 review R2 #5 and #6: a table name whose index (PostgreSQL) or
// lease table (SQLite) names would pass 63 characters is refused by New,
// not cut (two tables' indexes colliding) or failed in Migrate.
func TestReviewR2_5NewRefusesTooLongTableNames(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ok := "o" + strings.Repeat("x", 51)   // 52 characters
		long := "o" + strings.Repeat("x", 52) // 53
		if _, err := outbox.New(db, outbox.Config{Table: long}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("New with a %d-character table name = %v; want an error wrapping broker.ErrInvalidConfig", len(long), err)
		}
		o := migrated(t, db, outbox.Config{Table: ok})
		if err := o.Migrate(context.Background()); err != nil {
			t.Errorf("second Migrate of a %d-character table name: %v", len(ok), err)
		}
		if d == sqldb.Postgres {
			if n := count(t, db, `SELECT count(*) FROM pg_indexes WHERE tablename = $1`, ok); n < 5 {
				t.Errorf("indexes of %s = %d; want 5 (primary key, unsent, unsent by key, retry, sent)", ok, n)
			}
		}
	})
}

// Issue 12 (examples/gin chaos run): on SQLite, a relay whose process was
// killed on this machine leaves its lease; a new relay takes over at once,
// not after the lease ran out.
func TestReviewR2_SQLiteTakesOverADeadProcessesLeaseAtOnce(t *testing.T) {
	db := sqltest.SQLite(t)
	o := migrated(t, db, outbox.Config{})
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skip("cannot run a process to see die:", err)
	}
	owner, ok := outbox.LeaseOwnerOfProcess(cmd.Process.Pid)
	cmd.Process.Kill()
	cmd.Wait()
	if !ok {
		t.Skip("no process identity on this system")
	}
	until := time.Now().Add(time.Hour).UnixMilli()
	if _, err := db.Exec(`INSERT INTO queuekit_outbox_relay (name, owner, lease_until) VALUES ('relay', $1, $2)`, owner, until); err != nil {
		t.Fatal(err)
	}
	write(t, db, o, "q", msg("k", "left by the dead relay"))
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	start(t, must(o.Relay(b.Publisher(), outbox.RelayConfig{})))
	receive(t, src, 1) // within eventually, not the hour of the lease

	// A live process's lease (this test's own) is respected.
	db2 := sqltest.SQLite(t)
	o2 := migrated(t, db2, outbox.Config{})
	live, _ := outbox.LeaseOwnerOfProcess(0)
	if _, err := db2.Exec(`INSERT INTO queuekit_outbox_relay (name, owner, lease_until) VALUES ('relay', $1, $2)`, live, until); err != nil {
		t.Fatal(err)
	}
	r2 := must(o2.Relay(b.Publisher(), outbox.RelayConfig{}))
	start(t, r2)
	waitFor(t, "the relay to stand by", func() bool { return r2.Stats().Standby && r2.Stats().Rounds > 2 })
}
