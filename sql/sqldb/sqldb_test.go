package sqldb_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { sqltest.PrintSkipSummary() }))
}

func TestOpenRefusesWhatItCannotServe(t *testing.T) {
	for _, dsn := range []string{"", "mysql://u:secret@h/db", "sqlite::memory:", "sqlite:", "file::memory:?cache=shared", "sqlite:x.db?mode=memory", "sqlite:x.db?%zz",
		// issue 12 review R4 #3, #4: no host (the local socket's default
		// database), settings that can never work (retried forever as if the
		// server were down).
		"postgres://", "postgres:///db", "postgres://u:secret@h:99999/db", "postgres://u:secret@h/db?sslmode=bogus", "postgres://u:secret@h/db?connect_timeout=abc"} {
		db, _, err := sqldb.Open(dsn)
		if err == nil {
			db.Close()
			t.Errorf("Open(%q) = nil error; want an error", dsn)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error %q shows the password", dsn, err)
		}
	}
}

// TestOpenUpperCaseScheme: pgx reads "POSTGRES://…" as key=value settings;
// Open hands it a lower-case scheme (issue 12 review R4 #3).
func TestOpenUpperCaseScheme(t *testing.T) {
	db, d, err := sqldb.Open("POSTGRES://u:secret@127.0.0.1:1/db?connect_timeout=2")
	if err != nil || d != sqldb.Postgres {
		t.Fatalf("Open(POSTGRES://…) = %v, %v; want Postgres, nil", d, err)
	}
	defer db.Close()
	err = db.PingContext(context.Background())
	if !sqldb.IsUnavailable(err) || strings.Contains(err.Error(), "configuration parameter") {
		t.Errorf("ping = %v; want a refused connection to 127.0.0.1:1 (the URL's host)", err)
	}
}

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://u:secret@h:5432/db", "postgres://u:xxxxx@h:5432/db"},
		{"postgres://u@h/db?password=secret", "postgres://u@h/db?password=xxxxx"},
		{"host=h password=secret", "<dsn redacted>"},
		{"sqlite:/tmp/a.db", "sqlite:/tmp/a.db"},
	} {
		if got := sqldb.Redact(c.in); got != c.want {
			t.Errorf("Redact(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}

func TestCheckTableName(t *testing.T) {
	for _, ok := range []string{"queuekit_inbox", "app.outbox", "_t1"} {
		if err := sqldb.CheckTableName(ok); err != nil {
			t.Errorf("CheckTableName(%q) = %v; want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "1t", "t;drop table x", `t"`, "a.b.c", "t-x", strings.Repeat("a", 64), "order", "app.user", "Select"} {
		if err := sqldb.CheckTableName(bad); err == nil {
			t.Errorf("CheckTableName(%q) = nil; want an error", bad)
		}
	}
}

// TestDialects checks, on both databases: the detected dialect, $n binding
// in order (SQLite binds $n by position), and CheckColumns' errors naming
// the column.
func TestDialects(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ctx := context.Background()
		got, err := sqldb.DetectDialect(db)
		if err != nil || got != d {
			t.Fatalf("DetectDialect = %v, %v; want %v", got, err, d)
		}
		if _, err := db.ExecContext(ctx, `CREATE TABLE t (id bigint, name text, body `+map[sqldb.Dialect]string{sqldb.Postgres: "bytea", sqldb.SQLite: "blob"}[d]+`)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO t (id, name, body) VALUES ($1, $2, $3)`, 7, "seven", []byte{1}); err != nil {
			t.Fatal(err)
		}
		var id int64
		var name string
		if err := db.QueryRowContext(ctx, `SELECT id, name FROM t WHERE id = $1 AND name = $2`, 7, "seven").Scan(&id, &name); err != nil || id != 7 || name != "seven" {
			t.Fatalf("select = %d %q %v; want 7 seven", id, name, err)
		}
		err = sqldb.CheckColumns(ctx, db, d, "t", []sqldb.Column{{Name: "id", Types: []string{"bigint"}}, {Name: "missing"}})
		if !errors.Is(err, sqldb.ErrSchema) || !strings.Contains(err.Error(), `"missing"`) {
			t.Errorf("CheckColumns(missing column) = %v; want ErrSchema naming it", err)
		}
		err = sqldb.CheckColumns(ctx, db, d, "t", []sqldb.Column{{Name: "name", Types: []string{"integer"}}})
		if !errors.Is(err, sqldb.ErrSchema) || !strings.Contains(err.Error(), `"name" has type "text"`) {
			t.Errorf("CheckColumns(wrong type) = %v; want ErrSchema naming the column and type", err)
		}
		// Names as the library writes them, unquoted: PostgreSQL folds
		// them to lower case; SQLite takes a schema prefix (issue 12
		// review R1 #4: both were "does not exist" after Migrate made them).
		for _, name := range []string{"Mixed_Case", map[sqldb.Dialect]string{sqldb.Postgres: "public.prefixed", sqldb.SQLite: "main.prefixed"}[d]} {
			if _, err := db.ExecContext(ctx, `CREATE TABLE `+name+` (id bigint)`); err != nil {
				t.Fatal(err)
			}
			if err := sqldb.CheckColumns(ctx, db, d, name, []sqldb.Column{{Name: "id"}}); err != nil {
				t.Errorf("CheckColumns(%q) = %v; want nil", name, err)
			}
		}
		if err := sqldb.CheckColumns(ctx, db, d, "nope", nil); !errors.Is(err, sqldb.ErrSchema) {
			t.Errorf("CheckColumns(no table) = %v; want ErrSchema", err)
		}
		if err := sqldb.CheckColumns(ctx, db, d, "t", []sqldb.Column{{Name: "id", Types: []string{"bigint"}}, {Name: "body"}}); err != nil {
			t.Errorf("CheckColumns(matching) = %v; want nil", err)
		}
	})
}

func TestUnavailable(t *testing.T) {
	db, _, err := sqldb.Open("postgres://u:secret@127.0.0.1:1/db?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.PingContext(context.Background())
	if !sqldb.IsUnavailable(err) {
		t.Errorf("IsUnavailable(%v) = false for a refused connection", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("ping error %q shows the password", err)
	}
	if sqldb.IsUnavailable(errors.New("syntax error")) {
		t.Errorf("IsUnavailable(a plain error) = true")
	}
}

func TestRedactError(t *testing.T) {
	for _, dsn := range []string{"postgres://u:s3cret@h/db", "postgres://u@h/db?password=s3cret"} {
		got := sqldb.RedactError(errors.New(`failed to connect to "`+dsn+`": s3cret refused`), dsn)
		if strings.Contains(got, "s3cret") {
			t.Errorf("RedactError(…, %q) = %q; shows the password", dsn, got)
		}
	}
	if got := sqldb.RedactError(nil, "postgres://u:p@h/db"); got != "" {
		t.Errorf("RedactError(nil) = %q; want \"\"", got)
	}
}
