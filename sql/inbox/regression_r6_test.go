package inbox_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// openPostgres opens u with sqldb.Open, closed when t ends.
func openPostgres(t *testing.T, u string) *sql.DB {
	t.Helper()
	db, _, err := sqldb.Open(u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Issue 12 review R6 #1: two pools to one PostgreSQL database with per-tenant
// schemas (search_path s1 and s2) were taken for one database: the nested
// inbox of s2 ran in the transaction of s1, so its effect and key landed in
// s1. Each must stay in its own schema.
func TestReviewR6No1TenantSchemasDoNotShareTheTransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u := sqltest.PostgresURL(t)
	admin := openPostgres(t, u)
	for _, s := range []string{"s1", "s2"} {
		if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+s+`; CREATE TABLE `+s+`.effects (v text)`); err != nil {
			t.Fatal(err)
		}
	}
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	a := openPostgres(t, u+sep+"search_path=s1")
	b := openPostgres(t, u+sep+"search_path=s2")
	ia := newInbox(t, a, inbox.Config{Scope: "a"})
	ib := newInbox(t, b, inbox.Config{Scope: "b"})
	h := consumer.Chain(ia.Middleware(), ib.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		_, err := inbox.Tx(ctx).ExecContext(ctx, `INSERT INTO effects VALUES ('b')`)
		return err
	}))
	if err := h.Handle(ctx, msg("k1")); err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]int{"s1": 0, "s2": 1} {
		var effects, keysB int
		if err := admin.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM `+s+`.effects), (SELECT count(*) FROM `+s+`.queuekit_inbox WHERE scope = 'b')`).Scan(&effects, &keysB); err != nil {
			t.Fatal(err)
		}
		if effects != want || keysB != want {
			t.Errorf("%s: %d effects, %d keys of scope b; want %d and %d", s, effects, keysB, want, want)
		}
	}
}

// Issue 12 review R6 #2: in a chain A → B (another database) → A2 (A's table
// spelled "public.queuekit_inbox", same scope), A2 looked only at B's
// transaction, began its own and waited for A's uncommitted key until the
// context ended. It must run the handler once, and ack the redelivery.
func TestReviewR6No2ChainThroughAnotherDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := sqltest.Postgres(t)
	b := sqltest.Postgres(t)
	ia := newInbox(t, a, inbox.Config{Scope: "x"})
	ia2 := newInbox(t, a, inbox.Config{Scope: "x", Table: "public.queuekit_inbox"})
	ib := newInbox(t, b, inbox.Config{Scope: "y"})
	runs := 0
	h := consumer.Chain(ia.Middleware(), ib.Middleware(), ia2.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		runs++
		return nil
	}))
	for n := range 2 {
		hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.Handle(hctx, msg("k"))
		hcancel()
		if err != nil {
			t.Fatalf("delivery %d: %v", n+1, err)
		}
	}
	if runs != 1 || doneKeys(t, a, "x") != 1 || doneKeys(t, b, "y") != 1 {
		t.Errorf("runs %d, keys in A %d, in B %d; want 1, 1, 1", runs, doneKeys(t, a, "x"), doneKeys(t, b, "y"))
	}
}

// Issue 12 review R6 #3: the own-row check compared xmin with the top-level
// transaction id, so a row written in a savepoint (a subtransaction id) was
// taken for another delivery's committed row and the handler did not run.
func TestReviewR6No3OwnRowWrittenInASavepoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db := sqltest.Postgres(t)
	outer := newInbox(t, db, inbox.Config{Scope: "o"})
	inner := newInbox(t, db, inbox.Config{Scope: "s"})
	inner2 := newInbox(t, db, inbox.Config{Scope: "s", Table: "public.queuekit_inbox"})
	runs := 0
	final := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		runs++
		return nil
	})
	// outer → savepoint → inner (its key written in the subtransaction) →
	// release → inner2: the same table and scope under another name.
	viaSavepoint := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		tx := inbox.Tx(ctx)
		if _, err := tx.ExecContext(ctx, `SAVEPOINT sp`); err != nil {
			return err
		}
		if err := inner.Middleware()(consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })).Handle(ctx, m); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `RELEASE SAVEPOINT sp`); err != nil {
			return err
		}
		return inner2.Middleware()(final).Handle(ctx, m)
	})
	h := outer.Middleware()(viaSavepoint)
	for n := range 2 {
		if err := h.Handle(ctx, msg("k")); err != nil {
			t.Fatalf("delivery %d: %v", n+1, err)
		}
	}
	if runs != 1 || doneKeys(t, db, "s") != 1 || doneKeys(t, db, "o") != 1 {
		t.Errorf("runs %d, keys o %d, s %d; want 1, 1, 1", runs, doneKeys(t, db, "o"), doneKeys(t, db, "s"))
	}
}
