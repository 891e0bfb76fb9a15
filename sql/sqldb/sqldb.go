package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
)

// Dialect is the SQL dialect of a database: what the library's statements
// are written for.
type Dialect int

// The dialects queuekit supports.
const (
	// Postgres is PostgreSQL (12 or later), through pgx.
	Postgres Dialect = 1
	// SQLite is SQLite (3.35 or later), through modernc.org/sqlite.
	SQLite Dialect = 2
)

// String returns "postgres" or "sqlite".
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case SQLite:
		return "sqlite"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// Valid reports whether d is one of the dialects above.
func (d Dialect) Valid() bool { return d == Postgres || d == SQLite }

// Placeholder returns the n-th (1-based) bind parameter: $n in both
// dialects (SQLite binds $n by position when each appears once, in order).
func (d Dialect) Placeholder(n int) string { return fmt.Sprintf("$%d", n) }

// ErrSchema is wrapped by the errors of CheckColumns.
var ErrSchema = errors.New("sqldb: table does not have the expected schema")

// ErrUnknownDriver is wrapped by the error of DetectDialect for a *sql.DB
// whose driver is neither pgx nor modernc.org/sqlite.
var ErrUnknownDriver = errors.New("sqldb: unknown database driver")

// DefaultPostgresIdleConns is how many idle connections Open keeps for a
// PostgreSQL database (database/sql's default is 2). Change it with
// (*sql.DB).SetMaxIdleConns.
const DefaultPostgresIdleConns = 32

// Open opens the database named by dsn:
//
//   - postgres://… or postgresql://… : PostgreSQL through pgx's database/sql
//     driver, dsn as pgx takes it, keeping DefaultPostgresIdleConns idle
//     connections;
//   - sqlite:PATH, sqlite://PATH, file:PATH, or a path ending in .db, .sqlite
//     or .sqlite3: SQLite through modernc.org/sqlite, configured as the
//     package doc says (WAL, busy timeout, BEGIN IMMEDIATE, one connection).
//     PATH may carry ?query parameters of the driver; ":memory:" is refused,
//     because every connection would see a database of its own.
//
// Open does not connect. Its errors never contain a password.
func Open(dsn string) (*sql.DB, Dialect, error) {
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		// pgx takes only a lower-case scheme as a URL (it reads anything
		// else as key=value settings): normalise it.
		scheme, rest, _ := strings.Cut(dsn, "://")
		dsn = strings.ToLower(scheme) + "://" + rest
		u, err := url.Parse(dsn)
		if err != nil {
			return nil, 0, fmt.Errorf("sqldb: open %s: invalid URL", Redact(dsn))
		}
		// An empty URL would reach the local socket's default database
		// as the OS user: almost never what was meant.
		if u.Host == "" && !u.Query().Has("host") {
			return nil, 0, fmt.Errorf("sqldb: open %s: the URL names no host (for a Unix socket: ?host=/var/run/postgresql)", Redact(dsn))
		}
		// Settings that cannot work (a bad port, sslmode or timeout) are
		// errors now, not retried as if the server were down.
		if _, err := pgconn.ParseConfig(dsn); err != nil {
			return nil, 0, fmt.Errorf("sqldb: open %s: %s", Redact(dsn), RedactError(err, dsn))
		}
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, 0, fmt.Errorf("sqldb: open %s: %s", Redact(dsn), RedactError(err, dsn))
		}
		// database/sql keeps 2 idle connections by default: a queue's workers,
		// acking at once, would each dial a new one (measured: 6x fewer
		// messages per second). Keep as many as a busy consumer uses.
		db.SetMaxIdleConns(DefaultPostgresIdleConns)
		return db, Postgres, nil
	case strings.HasPrefix(lower, "sqlite:"), strings.HasPrefix(lower, "file:"),
		strings.HasSuffix(lower, ".db"), strings.HasSuffix(lower, ".sqlite"), strings.HasSuffix(lower, ".sqlite3"):
		path := dsn
		for _, p := range []string{"sqlite://", "sqlite:", "file:"} {
			if strings.HasPrefix(lower, p) {
				path = dsn[len(p):]
				break
			}
		}
		name, query, _ := strings.Cut(path, "?")
		if name == "" || name == ":memory:" || strings.Contains(query, "mode=memory") {
			return nil, 0, fmt.Errorf("sqldb: open %q: want a SQLite file, not an in-memory database", dsn)
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			return nil, 0, fmt.Errorf("sqldb: open %q: invalid query: %w", dsn, err)
		}
		for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "foreign_keys(on)", "synchronous(NORMAL)"} {
			q.Add("_pragma", p)
		}
		if q.Get("_txlock") == "" {
			q.Set("_txlock", "immediate")
		}
		db, err := sql.Open("sqlite", "file:"+name+"?"+q.Encode())
		if err != nil {
			return nil, 0, fmt.Errorf("sqldb: open %q: %w", dsn, err)
		}
		db.SetMaxOpenConns(1)
		// Keep the one connection: reopening it re-runs the pragmas.
		db.SetMaxIdleConns(1)
		db.SetConnMaxIdleTime(0)
		db.SetConnMaxLifetime(0)
		return db, SQLite, nil
	}
	return nil, 0, fmt.Errorf("sqldb: open %s: want postgres://… or sqlite:PATH", Redact(dsn))
}

// DetectDialect returns the dialect of db from its driver: pgx's
// database/sql driver is Postgres, modernc.org/sqlite is SQLite.
func DetectDialect(db *sql.DB) (Dialect, error) {
	if db == nil {
		return 0, errors.New("sqldb: nil *sql.DB")
	}
	switch db.Driver().(type) {
	case *stdlib.Driver:
		return Postgres, nil
	case *sqlite.Driver:
		return SQLite, nil
	}
	return 0, fmt.Errorf("%w: %s (want github.com/jackc/pgx/v5/stdlib or modernc.org/sqlite)", ErrUnknownDriver, reflect.TypeOf(db.Driver()))
}

var tableName = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// CheckTableName returns an error unless name is a plain SQL identifier
// (letters, digits and underscores, not starting with a digit, at most 63
// bytes, not an SQL keyword such as "order"), optionally qualified by a
// schema of the same form. Table names are written into statements
// unquoted, so nothing else is accepted; PostgreSQL folds them to lower case.
func CheckTableName(name string) error {
	if !tableName.MatchString(name) {
		return fmt.Errorf("sqldb: invalid table name %q: want letters, digits and underscores (optionally schema.table), at most 63 each", name)
	}
	schema, table := splitTable(name)
	for _, part := range []string{schema, table} {
		if reserved[strings.ToLower(part)] {
			return fmt.Errorf("sqldb: invalid table name %q: %q is an SQL keyword", name, part)
		}
	}
	return nil
}

// splitTable splits "schema.table" into its parts; schema is "" without one.
func splitTable(name string) (schema, table string) {
	if s, t, ok := strings.Cut(name, "."); ok {
		return s, t
	}
	return "", name
}

// reserved holds the keywords that PostgreSQL reserves, and the SQLite
// keywords that cannot name a table unquoted: names are written unquoted.
var reserved = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`all analyse analyze and any array as asc asymmetric both case cast
		check collate column constraint create current_catalog current_date current_role current_time
		current_timestamp current_user default deferrable desc distinct do else end except false fetch
		for foreign from grant group having in initially intersect into lateral leading limit localtime
		localtimestamp not null offset on only or order placing primary references returning select
		session_user some symmetric table then to trailing true union unique user using variadic when
		where window with authorization binary collation concurrently cross current_schema freeze full
		ilike inner is isnull join left like natural notnull outer overlaps right similar tablesample
		verbose add alter autoincrement between by commit delete drop escape exists if index insert
		rollback set transaction update values abort attach detach exclusive glob indexed instead
		nothing raise regexp reindex release rename replace savepoint temp temporary trigger vacuum view
		virtual`) {
		m[w] = true
	}
	return m
}()

// A Column is a column CheckColumns looks for.
type Column struct {
	// Name is the column's name.
	Name string
	// Types are the acceptable types, lower case, as the database reports
	// them (PostgreSQL's information_schema data_type, such as "bigint",
	// "text", "bytea", "timestamp with time zone"; SQLite's declared type,
	// such as "integer", "text", "blob"). Empty accepts any type.
	Types []string
}

// CheckColumns returns an error wrapping ErrSchema when table, in db of
// dialect d, does not exist or lacks one of cols or has it with a type not
// listed. Columns the table has beyond cols are fine.
func CheckColumns(ctx context.Context, db *sql.DB, d Dialect, table string, cols []Column) error {
	if err := CheckTableName(table); err != nil {
		return err
	}
	have := map[string]string{}
	var rows *sql.Rows
	var err error
	switch d {
	case Postgres:
		// The library writes names unquoted, and PostgreSQL folds unquoted
		// names to lower case: look up what it created.
		schema, name := splitTable(strings.ToLower(table))
		q := `SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1 AND table_schema = COALESCE(NULLIF($2, ''), current_schema())`
		rows, err = db.QueryContext(ctx, q, name, schema)
	case SQLite:
		schema, name := splitTable(table)
		if schema == "" {
			rows, err = db.QueryContext(ctx, `SELECT name, type FROM pragma_table_info($1)`, name)
		} else {
			rows, err = db.QueryContext(ctx, `SELECT name, type FROM pragma_table_info($1, $2)`, name, schema)
		}
	default:
		return fmt.Errorf("sqldb: unknown dialect %v", d)
	}
	if err != nil {
		return fmt.Errorf("sqldb: read the columns of %q: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var n, t string
		if err := rows.Scan(&n, &t); err != nil {
			return fmt.Errorf("sqldb: read the columns of %q: %w", table, err)
		}
		have[strings.ToLower(n)] = strings.ToLower(t)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqldb: read the columns of %q: %w", table, err)
	}
	if len(have) == 0 {
		return fmt.Errorf("%w: table %q does not exist", ErrSchema, table)
	}
	for _, c := range cols {
		t, ok := have[strings.ToLower(c.Name)]
		if !ok {
			return fmt.Errorf("%w: table %q: column %q is missing", ErrSchema, table, c.Name)
		}
		if len(c.Types) == 0 {
			continue
		}
		match := false
		for _, want := range c.Types {
			if t == want {
				match = true
				break
			}
		}
		if !match {
			return fmt.Errorf("%w: table %q: column %q has type %q, want %s", ErrSchema, table, c.Name, t, strings.Join(c.Types, " or "))
		}
	}
	return nil
}

// Redact returns dsn with the password of a URL replaced by "xxxxx". A dsn
// that is not a URL is returned as "<dsn redacted>" when it could hold a
// password (key=value with password=), else unchanged.
func Redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		if strings.Contains(strings.ToLower(dsn), "password") || strings.Contains(dsn, "@") {
			return "<dsn redacted>"
		}
		return dsn
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// RedactError returns err's text with the password of dsn (in its user
// information or its password= parameter) replaced by "xxxxx": drivers may
// quote the connection string they were given. It returns "" for a nil err.
func RedactError(err error, dsn string) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if u, perr := url.Parse(dsn); perr == nil {
		if u.User != nil {
			if p, ok := u.User.Password(); ok && p != "" {
				s = strings.ReplaceAll(s, p, "xxxxx")
			}
		}
		if p := u.Query().Get("password"); p != "" {
			s = strings.ReplaceAll(s, p, "xxxxx")
		}
	}
	return s
}

// IsUnavailable reports whether err says the database could not be reached
// or the connection was lost (refused, reset, closed, a dead connection, a
// server shutting down): a failure worth retrying later, as opposed to an
// error in a statement.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01..57P03: admin shutdown,
		// crash shutdown, cannot connect now.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	return pgconn.SafeToRetry(err)
}
