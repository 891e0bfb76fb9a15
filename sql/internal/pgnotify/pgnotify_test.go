package pgnotify_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/sql/internal/pgnotify"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { sqltest.PrintSkipSummary() }))
}

func TestWaitWakesOnNotifyAfterCommit(t *testing.T) {
	db := sqltest.Postgres(t)
	ctx := context.Background()
	l, err := pgnotify.Listen(ctx, db, "queuekit_test")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgnotify.Notify(ctx, tx, "queuekit_test"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = l.Wait(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait before the commit = %v; want the deadline (a notification is sent at commit)", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	long, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.Wait(long); err != nil {
		t.Fatalf("Wait after the commit = %v; want nil", err)
	}
}

func TestListenRefuses(t *testing.T) {
	db := sqltest.SQLite(t)
	if _, err := pgnotify.Listen(context.Background(), db, "x"); !errors.Is(err, pgnotify.ErrNotPgx) {
		t.Errorf("Listen on SQLite = %v; want ErrNotPgx", err)
	}
	pg := sqltest.Postgres(t)
	if _, err := pgnotify.Listen(context.Background(), pg, `x"; drop`); err == nil {
		t.Errorf("Listen with an invalid channel name = nil; want an error")
	}
}

// TestConnectionLost: a listener whose connection the server terminated
// reports an error from Wait (not ctx's), so its owner can fall back to
// polling; and the pool does not get the connection back.
func TestConnectionLost(t *testing.T) {
	db := sqltest.Postgres(t)
	ctx := context.Background()
	l, err := pgnotify.Listen(ctx, db, "queuekit_lost")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := db.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'`); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = l.Wait(wctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a terminated connection = %v; want a connection error", err)
	}
	l.Close()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("the pool after a lost listener: %v", err)
	}
}
