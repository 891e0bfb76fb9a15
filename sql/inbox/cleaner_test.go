package inbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// insertAged inserts n rows named prefix-i, done (or reserved, when done is
// false) age ago.
func insertAged(t *testing.T, db *sql.DB, d sqldb.Dialect, prefix string, n int, done bool, age time.Duration) {
	t.Helper()
	at := `clock_timestamp() - $3::bigint * interval '1 millisecond'`
	if d == sqldb.SQLite {
		at = `CAST(unixepoch('subsec') * 1000 AS INTEGER) - $3`
	}
	q := `INSERT INTO queuekit_inbox (scope, key, done_at) VALUES ($1, $2, ` + at + `)`
	if !done {
		q = `INSERT INTO queuekit_inbox (scope, key, lease_token, lease_until) VALUES ($1, $2, 'gone', ` + at + `)`
	}
	for i := range n {
		if _, err := db.Exec(q, "default", fmt.Sprintf("%s-%d", prefix, i), age.Milliseconds()); err != nil {
			t.Fatal(err)
		}
	}
}

func countPrefix(t *testing.T, db *sql.DB, prefix string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM queuekit_inbox WHERE key LIKE $1`, prefix+"-%").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Clean deletes the keys done longer ago than Retention and the
// reservations whose lease ended that long ago, in bounded batches, and
// nothing else.
func TestCleanDeletesOnlyOldRowsInBatches(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		const retention = time.Hour
		ib := newInbox(t, db, inbox.Config{Retention: retention})
		inbox.SetCleanBatch(ib, 7) // 30 old rows: 5 statements each
		insertAged(t, db, d, "old-done", 30, true, 2*retention)
		insertAged(t, db, d, "new-done", 5, true, retention/2)
		insertAged(t, db, d, "old-lease", 30, false, 2*retention)
		insertAged(t, db, d, "live-lease", 5, false, -retention) // lease ends in an hour
		insertAged(t, db, d, "new-lease", 5, false, retention/2) // ended, but recently

		n, err := ib.Clean(ctxT(t))
		if err != nil || n != 60 {
			t.Fatalf("Clean = %d, %v; want 60, nil", n, err)
		}
		for prefix, want := range map[string]int{"old-done": 0, "new-done": 5, "old-lease": 0, "live-lease": 5, "new-lease": 5} {
			if got := countPrefix(t, db, prefix); got != want {
				t.Errorf("%s rows after Clean = %d; want %d", prefix, got, want)
			}
		}
	})
}

// The Cleaner runner cleans at once, again every interval, and returns nil
// when its context ends.
func TestCleanerRunner(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		const retention = time.Hour
		ib := newInbox(t, db, inbox.Config{Retention: retention})
		ctx, cancel := context.WithCancel(ctxT(t))
		done := make(chan error, 1)
		go func() { done <- ib.Cleaner(10 * time.Millisecond).Run(ctx) }()
		insertAged(t, db, d, "old", 3, true, 2*retention)
		insertAged(t, db, d, "new", 3, true, 0)
		deadline := time.Now().Add(30 * time.Second)
		for countPrefix(t, db, "old") > 0 {
			if time.Now().After(deadline) {
				t.Fatal("the Cleaner did not delete old rows within 30s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v; want nil after its context ended", err)
		}
		if got := countPrefix(t, db, "new"); got != 3 {
			t.Errorf("new rows = %d; want 3", got)
		}
	})
}

// A Cleaner on a table that does not exist fails, for the Supervisor to
// report and restart.
func TestCleanerFailsWithoutItsTable(t *testing.T) {
	db := sqltest.SQLite(t)
	ib, err := inbox.New(db, inbox.Config{Table: "never_migrated"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Cleaner(time.Hour).Run(ctxT(t)); err == nil {
		t.Error("Run = nil; want the error of the missing table")
	}
}
