package sqltest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/queuekit/queuekit/sql/sqldb"
)

// DefaultPostgresURL is the server the tests use when QUEUEKIT_POSTGRES_URL
// is not set: the local one, as Debian's package and .ci/run start it.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ServerURL returns the URL of the PostgreSQL server the tests use.
func ServerURL() string {
	if u := os.Getenv("QUEUEKIT_POSTGRES_URL"); u != "" {
		return u
	}
	return DefaultPostgresURL
}

var (
	skipMu  sync.Mutex
	skipped = map[string]int{}
)

func required() bool { return os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" }

// unavailable skips t, or fails it when the databases are required.
func unavailable(t testing.TB, why string) {
	t.Helper()
	if required() {
		t.Fatalf("QUEUEKIT_REQUIRE_BROKERS=1 and %s", why)
	}
	skipMu.Lock()
	skipped[why]++
	skipMu.Unlock()
	t.Skip(why)
}

var (
	serverOnce sync.Once
	serverErr  error
)

// admin opens the server's maintenance database.
func admin(ctx context.Context) (*sql.DB, error) {
	db, err := sql.Open("pgx", ServerURL())
	if err != nil {
		return nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// PostgresURL creates a fresh database on the test server, drops it (with
// FORCE, closing what is still connected) when t's test ends, and returns
// its URL.
func PostgresURL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	serverOnce.Do(func() {
		db, err := admin(ctx)
		if err == nil {
			db.Close()
		}
		serverErr = err
	})
	if serverErr != nil {
		unavailable(t, fmt.Sprintf("PostgreSQL at %s unreachable (set QUEUEKIT_POSTGRES_URL)", sqldb.Redact(ServerURL())))
	}
	db, err := admin(ctx)
	if err != nil {
		t.Fatalf("sqltest: connect to %s: %v", sqldb.Redact(ServerURL()), err)
	}
	defer db.Close()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "queuekit_test_" + hex.EncodeToString(b)
	if _, err := db.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("sqltest: CREATE DATABASE %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := admin(ctx)
		if err != nil {
			t.Errorf("sqltest: drop %s: %v", name, err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("sqltest: DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(ServerURL())
	if err != nil {
		t.Fatalf("sqltest: QUEUEKIT_POSTGRES_URL: invalid URL")
	}
	u.Path = "/" + name
	return u.String()
}

// Postgres returns a fresh PostgreSQL database (see PostgresURL), opened
// with sqldb.Open and closed when t's test ends (before the drop).
func Postgres(t testing.TB) *sql.DB {
	t.Helper()
	u := PostgresURL(t)
	db, d, err := sqldb.Open(u)
	if err != nil {
		t.Fatal(err)
	}
	if d != sqldb.Postgres {
		t.Fatalf("sqltest: %s opened as %v", sqldb.Redact(u), d)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// SQLitePath returns the path of a SQLite file in a directory of t's own
// (the file does not exist yet).
func SQLitePath(t testing.TB) string {
	return t.TempDir() + "/test.db"
}

// SQLite returns a fresh SQLite database in a file of t's own, opened with
// sqldb.Open and closed when t's test ends.
func SQLite(t testing.TB) *sql.DB {
	t.Helper()
	db, _, err := sqldb.Open("sqlite:" + SQLitePath(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Each runs fn as the subtests "postgres" and "sqlite", each on a fresh
// database of that dialect.
func Each(t *testing.T, fn func(t *testing.T, db *sql.DB, d sqldb.Dialect)) {
	t.Helper()
	t.Run("postgres", func(t *testing.T) { fn(t, Postgres(t), sqldb.Postgres) })
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLite(t), sqldb.SQLite) })
}

// Open returns a fresh database of dialect d, as Postgres or SQLite do.
func Open(t testing.TB, d sqldb.Dialect) *sql.DB {
	t.Helper()
	if d == sqldb.Postgres {
		return Postgres(t)
	}
	return SQLite(t)
}

// PrintSkipSummary prints, in one line, the tests that were skipped because
// PostgreSQL was unreachable; nothing when none was. Call it from TestMain
// after m.Run. Without -v, go test hides what a passing package prints, so
// the line also goes to the controlling terminal when there is one.
func PrintSkipSummary() {
	skipMu.Lock()
	defer skipMu.Unlock()
	if len(skipped) == 0 {
		return
	}
	total := 0
	var parts []string
	for why, n := range skipped {
		total += n
		parts = append(parts, fmt.Sprintf("%d: %s", n, why))
	}
	sort.Strings(parts)
	line := fmt.Sprintf("queuekit: %d PostgreSQL tests skipped: %s", total, strings.Join(parts, "; "))
	fmt.Println(line)
	if testing.Verbose() {
		return
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(tty, line)
		_ = tty.Close()
	}
}
