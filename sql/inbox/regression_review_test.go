package inbox_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// doneKeys counts the done keys of scope in the default inbox table.
func doneKeys(t testing.TB, db *sql.DB, scope string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM queuekit_inbox WHERE scope = $1 AND done_at IS NOT NULL`, scope).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Issue 12 review R1 #1: an inbox nested in an inbox of the same table and
// scope (one inbox twice in a chain, or two Inbox values) ran nothing and
// acked: the inner insert met the outer transaction's own row and took it
// for a duplicate. The handler must run once, and the key be done once.
func TestReviewR1No1NestedInboxOfTheSameScopeRunsTheHandler(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		tx := newInbox(t, db, inbox.Config{Scope: "s"})
		tx2 := newInbox(t, db, inbox.Config{Scope: "s"})
		lease := newInbox(t, db, inbox.Config{Scope: "s", Mode: inbox.Lease, Busy: inbox.Requeue})
		for _, c := range []struct {
			name         string
			outer, inner *inbox.Inbox
		}{
			{"one inbox twice", tx, tx},
			{"two inboxes", tx, tx2},
			{"lease twice", lease, lease},
			{"transactional outside lease", tx, lease},
			{"lease outside transactional", lease, tx},
		} {
			t.Run(c.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				runs := 0
				h := consumer.Chain(c.outer.Middleware(), c.inner.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					runs++
					return nil
				}))
				key := "nested-" + c.name
				for n := range 2 {
					if err := h.Handle(ctx, msg(key)); err != nil {
						t.Fatalf("delivery %d: Handle = %v; want nil", n+1, err)
					}
				}
				var done int
				if err := db.QueryRow(`SELECT COUNT(*) FROM queuekit_inbox WHERE key = $1 AND done_at IS NOT NULL`, key).Scan(&done); err != nil {
					t.Fatal(err)
				}
				if runs != 1 || done != 1 {
					t.Errorf("handler ran %d times for 2 deliveries, %d done keys; want 1, 1", runs, done)
				}
			})
		}
	})
}

// Issue 12 review R1 #2: a Lease inbox inside a Transactional one on the
// same *sql.DB waited forever on SQLite (the outer transaction holds the
// pool's only connection; the reservation needs one). It records its key in
// the enclosing transaction instead, on both databases: both keys commit
// with the handler's effect, or none does.
func TestReviewR1No2LeaseInsideTransactionalRecordsInItsTransaction(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		createEffects(t, db)
		outer := newInbox(t, db, inbox.Config{Scope: "db"})
		inner := newInbox(t, db, inbox.Config{Scope: "ext", Mode: inbox.Lease})
		errBoom := errors.New("boom")
		fail := true
		runs := 0
		h := consumer.Chain(outer.Middleware(), inner.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs++
			if err := increment(ctx, "order-1"); err != nil {
				return err
			}
			if fail {
				return errBoom
			}
			return nil
		}))
		// No handler timeout, as under consumer.New: this bound only ends the
		// test if it hangs.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := h.Handle(ctx, msg("order-1")); !errors.Is(err, errBoom) {
			t.Fatalf("Handle = %v; want the handler's error", err)
		}
		if n := inboxRows(t, db); n != 0 || effectOf(t, db, "order-1") != 0 {
			t.Fatalf("after a failure: %d keys, effect %d; want 0, 0", n, effectOf(t, db, "order-1"))
		}
		fail = false
		for range 2 {
			if err := h.Handle(ctx, msg("order-1")); err != nil {
				t.Fatalf("Handle = %v; want nil", err)
			}
		}
		if runs != 2 || effectOf(t, db, "order-1") != 1 || doneKeys(t, db, "db") != 1 || doneKeys(t, db, "ext") != 1 {
			t.Errorf("runs %d, effect %d, done keys db %d ext %d; want 2, 1, 1, 1", runs, effectOf(t, db, "order-1"), doneKeys(t, db, "db"), doneKeys(t, db, "ext"))
		}
	})
}

// Issue 12 review R1 #3: Migrate accepted tables on which every message
// then failed with a retryable error: no primary key, a primary key on other
// columns (no ON CONFLICT target), an extra NOT NULL column without default.
func TestReviewR1No3MigrateRefusesATableTheInboxCannotWrite(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ts := "timestamptz"
		if d == sqldb.SQLite {
			ts = "INTEGER"
		}
		for _, c := range []struct{ name, ddl, want string }{
			{"no primary key", `CREATE TABLE %s (scope TEXT NOT NULL, key TEXT NOT NULL, done_at %[2]s, lease_token TEXT, lease_until %[2]s)`, "PRIMARY KEY (scope, key)"},
			{"primary key on key only", `CREATE TABLE %s (scope TEXT NOT NULL, key TEXT PRIMARY KEY, done_at %[2]s, lease_token TEXT, lease_until %[2]s)`, "PRIMARY KEY (scope, key)"},
			{"extra not null column", `CREATE TABLE %s (scope TEXT NOT NULL, key TEXT NOT NULL, done_at %[2]s, lease_token TEXT, lease_until %[2]s, tenant TEXT NOT NULL, PRIMARY KEY (scope, key))`, "tenant"},
		} {
			t.Run(c.name, func(t *testing.T) {
				ctx := ctxT(t)
				table := "wrong_" + strings.ReplaceAll(c.name, " ", "_")
				if _, err := db.ExecContext(ctx, fmt.Sprintf(c.ddl, table, ts)); err != nil {
					t.Fatal(err)
				}
				ib, err := inbox.New(db, inbox.Config{Table: table})
				if err != nil {
					t.Fatal(err)
				}
				err = ib.Migrate(ctx)
				if !errors.Is(err, sqldb.ErrSchema) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("Migrate = %v; want ErrSchema naming %q", err, c.want)
				}
				var rows int
				if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table).Scan(&rows); err != nil || rows != 0 {
					t.Errorf("rows after Migrate = %d, %v; want 0 (the check leaves nothing)", rows, err)
				}
			})
		}
	})
}

// Issue 12 review R1 #5: a key with NUL or invalid UTF-8 failed every
// delivery on PostgreSQL with a retryable "invalid byte sequence" until the
// budget ended. Such keys are hashed, like long ones: still keys.
func TestReviewR1No5BinaryKeysAreHashed(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		for _, mode := range []inbox.Mode{inbox.Transactional, inbox.Lease} {
			t.Run(mode.String(), func(t *testing.T) {
				ib := newInbox(t, db, inbox.Config{Mode: mode, Scope: mode.String()})
				runs := map[string]int{}
				h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					runs[m.Header[broker.HeaderIdempotencyKey]]++
					return nil
				}))
				keys := []string{"a\x00b", "a\x00c", "a\xff\xfeb", "a\xff\xfec"}
				for _, k := range keys {
					for range 2 {
						if err := h.Handle(ctxT(t), msg(k)); err != nil {
							t.Fatalf("key %q: Handle = %v; want nil", k, err)
						}
					}
				}
				for _, k := range keys {
					if runs[k] != 1 {
						t.Errorf("key %q: handler ran %d times for 2 deliveries; want 1", k, runs[k])
					}
				}
			})
		}
	})
}

// Issue 12 review R1 #6: on SQLite a Lease handler that holds a transaction
// (Lease(Transactional(h))) keeps the pool's only connection from the
// renewer. The lease is then lost, and the error says why.
func TestReviewR1No6LeaseLostOnASingleConnectionPoolSaysWhy(t *testing.T) {
	db := sqltest.SQLite(t)
	outer := newInbox(t, db, inbox.Config{Scope: "ext", Mode: inbox.Lease, LeaseTime: time.Second})
	inner := newInbox(t, db, inbox.Config{Scope: "db"})
	h := consumer.Chain(outer.Middleware(), inner.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		<-ctx.Done() // longer than the lease
		return context.Cause(ctx)
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := h.Handle(ctx, msg("order-1"))
	if !errors.Is(err, inbox.ErrLeaseLost) || !strings.Contains(err.Error(), "one connection") {
		t.Errorf("Handle = %v; want ErrLeaseLost saying the pool's one connection is held", err)
	}
}

// Issue 12 review R1 #7, #9: New refuses a lease too short to outlast a
// renewal's round trip, a scope PostgreSQL cannot store, and read-only
// transactions, which cannot record a key.
func TestReviewR1No7And9NewRefuses(t *testing.T) {
	db := sqltest.SQLite(t)
	for name, cfg := range map[string]inbox.Config{
		"lease of 500ms":      {Mode: inbox.Lease, LeaseTime: 500 * time.Millisecond},
		"scope with NUL":      {Scope: "a\x00b"},
		"scope not UTF-8":     {Scope: "a\xffb"},
		"read-only TxOptions": {TxOptions: &sql.TxOptions{ReadOnly: true}},
	} {
		if _, err := inbox.New(db, cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("New(%s) = %v; want ErrInvalidConfig", name, err)
		}
	}
	if _, err := inbox.New(db, inbox.Config{Mode: inbox.Lease, LeaseTime: time.Second}); err != nil {
		t.Errorf("New(lease of 1s) = %v; want nil", err)
	}
}

// Issue 12 review R1 #10: a literal key "sha256:<hex>" was taken for the
// long key whose hash it spells.
func TestReviewR1No10LiteralHashKeyIsNotALongKey(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ib := newInbox(t, db, inbox.Config{})
		runs := 0
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { runs++; return nil }))
		long := strings.Repeat("L", inbox.MaxKeyBytes+1)
		sum := sha256.Sum256([]byte(long))
		for _, k := range []string{long, "sha256:" + hex.EncodeToString(sum[:]), long} {
			if err := h.Handle(ctxT(t), msg(k)); err != nil {
				t.Fatal(err)
			}
		}
		if runs != 2 {
			t.Errorf("handler ran %d times for two keys (one twice); want 2", runs)
		}
	})
}

// Issue 12 review R5 #2: an inbox nested in an inbox of the same physical
// table and scope spelled another way ("main.t" around "t" on SQLite,
// "public.t" around "t" on PostgreSQL) acked without running the handler:
// the inner insert met the outer transaction's own row and took it for a
// duplicate, and the outer committed the key. The handler must run, and a
// key committed earlier by another delivery must still be acked unrun.
func TestReviewR5No2NestedInboxOfAnAliasedTableRunsTheHandler(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		alias := "main.queuekit_inbox"
		if d == sqldb.Postgres {
			alias = "public.QUEUEKIT_INBOX"
		}
		outer := newInbox(t, db, inbox.Config{Scope: "s"})
		for _, mode := range []inbox.Mode{inbox.Transactional, inbox.Lease} {
			inner := newInbox(t, db, inbox.Config{Table: alias, Scope: "s", Mode: mode})
			runs := 0
			h := outer.Middleware()(inner.Middleware()(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
				runs++
				return nil
			})))
			key := "r5-2-" + mode.String()
			if err := h.Handle(ctxT(t), msg(key)); err != nil {
				t.Fatalf("%v: %v", mode, err)
			}
			if runs != 1 {
				t.Fatalf("%v: handler ran %d times, want 1 (acked without running)", mode, runs)
			}
			// The genuine duplicate: committed by the first delivery.
			if err := h.Handle(ctxT(t), msg(key)); err != nil {
				t.Fatalf("%v: duplicate: %v", mode, err)
			}
			if runs != 1 {
				t.Fatalf("%v: duplicate ran the handler (%d runs)", mode, runs)
			}
			// Only the inner inbox saw the key before: a committed row of
			// another delivery, met inside the outer's transaction.
			only := inner.Middleware()(consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
			if err := only.Handle(ctxT(t), msg(key+"-inner")); err != nil {
				t.Fatal(err)
			}
			if err := h.Handle(ctxT(t), msg(key+"-inner")); err != nil {
				t.Fatalf("%v: %v", mode, err)
			}
			if runs != 1 {
				t.Fatalf("%v: a key done earlier in the inner scope ran the handler", mode)
			}
		}
	})
}

// Issue 12 review R5 #3: an inbox nested in an inbox on another *sql.DB to
// the same PostgreSQL database and table waited for the outer transaction's
// uncommitted key until the handler's context ended, on every redelivery.
// It must share the enclosing transaction, run the handler once and return.
func TestReviewR5No3NestedInboxOnAnotherPoolToTheSameDatabase(t *testing.T) {
	url := sqltest.PostgresURL(t)
	open := func() *sql.DB {
		db, _, err := sqldb.Open(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	db1, db2 := open(), open()
	outer := newInbox(t, db1, inbox.Config{Scope: "s"})
	for _, mode := range []inbox.Mode{inbox.Transactional, inbox.Lease} {
		for _, table := range []string{"queuekit_inbox", "public.queuekit_inbox"} {
			inner := newInbox(t, db2, inbox.Config{Table: table, Scope: "s", Mode: mode})
			runs := 0
			h := outer.Middleware()(inner.Middleware()(consumer.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
				runs++
				return nil
			})))
			// The bound only turns the old hang into a failure.
			ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
			key := "r5-3-" + mode.String() + table
			err := h.Handle(ctx, msg(key))
			if err == nil {
				err = h.Handle(ctx, msg(key))
			}
			cancel()
			if err != nil || runs != 1 {
				t.Fatalf("%v %s: err %v, %d runs; want nil, 1 run", mode, table, err, runs)
			}
		}
	}
}
