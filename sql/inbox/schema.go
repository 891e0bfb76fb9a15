package inbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/queuekit/queuekit/sql/sqldb"
)

// Schema returns the DDL that creates the inbox table of dialect d named
// table, with its two indexes, as Migrate runs it: statements separated by
// ";\n", each idempotent (IF NOT EXISTS). Teams that manage their own
// migrations copy it; Migrate then only checks the columns.
//
// The columns:
//
//	scope        text, part of the primary key (Config.Scope)
//	key          text, part of the primary key: the idempotency key
//	done_at      when the key was marked done; NULL while a Lease-mode
//	             reservation holds it
//	lease_token  the random token of the Lease-mode worker holding the key
//	lease_until  when that reservation expires
//
// Times are timestamptz on PostgreSQL and INTEGER Unix milliseconds on
// SQLite, both taken from the database's clock.
func Schema(d sqldb.Dialect, table string) (string, error) {
	stmts, err := schema(d, table)
	if err != nil {
		return "", err
	}
	return strings.Join(stmts, ";\n") + ";\n", nil
}

func schema(d sqldb.Dialect, table string) ([]string, error) {
	if err := sqldb.CheckTableName(table); err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	// Index names: PostgreSQL puts an index in its table's schema and takes
	// an unqualified name; SQLite qualifies the index name instead of the table.
	prefix, base := "", table
	if s, t, ok := strings.Cut(table, "."); ok {
		prefix, base = s+".", t
	}
	idxDone := indexName(base, "_done_at")
	idxLease := indexName(base, "_lease_until")
	switch d {
	case sqldb.Postgres:
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + table + ` (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    done_at     timestamptz,
    lease_token text,
    lease_until timestamptz,
    PRIMARY KEY (scope, key)
)`,
			`CREATE INDEX IF NOT EXISTS ` + idxDone + ` ON ` + table + ` (done_at) WHERE done_at IS NOT NULL`,
			`CREATE INDEX IF NOT EXISTS ` + idxLease + ` ON ` + table + ` (lease_until) WHERE done_at IS NULL`,
		}, nil
	case sqldb.SQLite:
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + table + ` (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    done_at     INTEGER,
    lease_token TEXT,
    lease_until INTEGER,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID`,
			`CREATE INDEX IF NOT EXISTS ` + prefix + idxDone + ` ON ` + base + ` (done_at) WHERE done_at IS NOT NULL`,
			`CREATE INDEX IF NOT EXISTS ` + prefix + idxLease + ` ON ` + base + ` (lease_until) WHERE done_at IS NULL`,
		}, nil
	}
	return nil, fmt.Errorf("inbox: unknown dialect %v", d)
}

// indexName keeps index names within PostgreSQL's 63 bytes (it would
// truncate them, and two long ones could then collide).
func indexName(base, suffix string) string {
	if len(base)+len(suffix) > 63 {
		base = base[:63-len(suffix)]
	}
	return base + suffix
}

// columns returns what Migrate checks, per dialect.
func columns(d sqldb.Dialect) []sqldb.Column {
	text := []string{"text"}
	ts := []string{"timestamp with time zone"}
	if d == sqldb.SQLite {
		ts = []string{"integer", "int", "bigint"}
	}
	return []sqldb.Column{
		{Name: "scope", Types: text},
		{Name: "key", Types: text},
		{Name: "done_at", Types: ts},
		{Name: "lease_token", Types: text},
		{Name: "lease_until", Types: ts},
	}
}

// Migrate creates the inbox table and its indexes if they do not exist (the
// DDL of Schema), and checks that the table has the columns the inbox uses,
// with their types, and that the inbox can write it: it records a key and
// reserves one in a transaction it rolls back, which fails on a table without
// PRIMARY KEY (scope, key) (or a unique constraint on those two columns) or
// with another NOT NULL column that has no default. A table that exists with
// another schema gives an error wrapping sqldb.ErrSchema that names the
// column or the missing primary key. Several processes may run Migrate at
// once.
func (i *Inbox) Migrate(ctx context.Context) error {
	stmts, err := schema(i.d, i.cfg.Table)
	if err != nil {
		return err
	}
	// The table, then the check (before the indexes, whose columns a wrong
	// table may lack), then the indexes.
	if err := i.execLocked(ctx, stmts[:1]); err != nil {
		return err
	}
	if err := sqldb.CheckColumns(ctx, i.db, i.d, i.cfg.Table, columns(i.d)); err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	if err := i.probe(ctx); err != nil {
		return err
	}
	return i.execLocked(ctx, stmts[1:])
}

// probeScope is the scope of the keys probe writes and rolls back.
const probeScope = "queuekit-inbox-migrate-probe"

// probe runs the statements that write keys, in a transaction it rolls back,
// so that a table they fail on fails Migrate rather than every message.
func (i *Inbox) probe(ctx context.Context) error {
	tx, err := i.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // the probe's rows must go
	token := newToken()
	_, err = tx.ExecContext(ctx, i.q.insertDone, probeScope, "done-"+token)
	if err == nil {
		var got string
		err = tx.QueryRowContext(ctx, i.q.reserve, probeScope, "lease-"+token, token, int64(1000)).Scan(&got)
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil || sqldb.IsUnavailable(err):
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	return fmt.Errorf("inbox: migrate: %w: table %q: the inbox cannot record keys in it "+
		"(it needs PRIMARY KEY (scope, key), and no other NOT NULL column without a default): %w",
		sqldb.ErrSchema, i.cfg.Table, err)
}

// execLocked runs stmts in one transaction, on PostgreSQL under an advisory
// lock: concurrent CREATE … IF NOT EXISTS can fail there with a unique
// violation in the catalog. (SQLite has one writer anyway.)
func (i *Inbox) execLocked(ctx context.Context, stmts []string) error {
	tx, err := i.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if i.d == sqldb.Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "queuekit-inbox-migrate:"+i.cfg.Table); err != nil {
			return fmt.Errorf("inbox: migrate: %w", err)
		}
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("inbox: migrate %s: %w", i.cfg.Table, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	return nil
}

// queries are the statements of one inbox, written once by newQueries.
// Parameters are $1, $2… in order, each used once, as SQLite binds them.
type queries struct {
	insertDone string // $1 scope, $2 key → rows affected 1 (new) or 0 (duplicate)
	reserve    string // $1 scope, $2 key, $3 token, $4 lease ms → a row when reserved
	state      string // $1 scope, $2 key → done, ms left on the lease
	renew      string // $1 lease ms, $2 scope, $3 key, $4 token
	confirm    string // $1 scope, $2 key, $3 token
	release    string // $1 scope, $2 key, $3 token
	cleanDone  string // $1 retention ms, $2 limit
	cleanStale string // $1 retention ms, $2 limit
	// ownRow ($1 scope, $2 key → true when this transaction wrote the row)
	// is PostgreSQL's only; on SQLite the held keys of ctx tell.
	ownRow string
}

func newQueries(d sqldb.Dialect, t string) queries {
	// now is the database's clock; plus(n) is now plus $n milliseconds and
	// left(col) the milliseconds from now to col.
	now := `clock_timestamp()`
	plus := func(n int) string {
		return fmt.Sprintf(`(clock_timestamp() + $%d::bigint * interval '1 millisecond')`, n)
	}
	minus := func(n int) string {
		return fmt.Sprintf(`(clock_timestamp() - $%d::bigint * interval '1 millisecond')`, n)
	}
	left := `COALESCE(CAST(EXTRACT(EPOCH FROM (lease_until - clock_timestamp())) * 1000 AS bigint), 0)`
	// The insert met the row without waiting for it: another transaction
	// committed it, or this one wrote it, maybe in a subtransaction (a
	// savepoint). xmin is the 32-bit id of the writer; widened to x, the
	// full id within 2^31 of this transaction's id c (as PostgreSQL compares
	// ids), txid_status says 'in progress' only of this transaction's own
	// ids; 'committed', or NULL for an id whose commit log is gone, is a
	// committed duplicate, and so are the special ids below 3 (frozen) and
	// an x before the first epoch. A subtransaction's id is after c; another
	// transaction's committed row is before the snapshot's xmax s, and an x
	// past both is this transaction's (txid_status would fail on an id not
	// yet assigned).
	ownRow := `SELECT CASE
	WHEN r < 3 OR x < 0 THEN false
	WHEN x > c AND x >= s THEN true
	ELSE COALESCE(txid_status(x) = 'in progress', false)
END FROM (
	SELECT r, c, s, c + (r - c % 4294967296 + 6442450944) % 4294967296 - 2147483648 AS x FROM (
		SELECT xmin::text::bigint AS r, txid_current() AS c, txid_snapshot_xmax(txid_current_snapshot()) AS s
		FROM ` + t + ` WHERE scope = $1 AND key = $2
	) v
) w`
	if d == sqldb.SQLite {
		now = `CAST(unixepoch('subsec') * 1000 AS INTEGER)`
		plus = func(n int) string { return fmt.Sprintf(`(%s + $%d)`, now, n) }
		minus = func(n int) string { return fmt.Sprintf(`(%s - $%d)`, now, n) }
		left = `COALESCE(lease_until - ` + now + `, 0)`
		ownRow = ""
	}
	return queries{
		insertDone: `INSERT INTO ` + t + ` (scope, key, done_at) VALUES ($1, $2, ` + now + `) ON CONFLICT (scope, key) DO NOTHING`,
		reserve: `INSERT INTO ` + t + ` AS i (scope, key, lease_token, lease_until) VALUES ($1, $2, $3, ` + plus(4) + `)
ON CONFLICT (scope, key) DO UPDATE SET lease_token = excluded.lease_token, lease_until = excluded.lease_until
WHERE i.done_at IS NULL AND (i.lease_until IS NULL OR i.lease_until <= ` + now + `)
RETURNING lease_token`,
		state:      `SELECT done_at IS NOT NULL, ` + left + ` FROM ` + t + ` WHERE scope = $1 AND key = $2`,
		renew:      `UPDATE ` + t + ` SET lease_until = ` + plus(1) + ` WHERE scope = $2 AND key = $3 AND lease_token = $4 AND done_at IS NULL`,
		confirm:    `UPDATE ` + t + ` SET done_at = ` + now + `, lease_token = NULL, lease_until = NULL WHERE scope = $1 AND key = $2 AND lease_token = $3 AND done_at IS NULL`,
		release:    `DELETE FROM ` + t + ` WHERE scope = $1 AND key = $2 AND lease_token = $3 AND done_at IS NULL`,
		cleanDone:  `DELETE FROM ` + t + ` WHERE (scope, key) IN (SELECT scope, key FROM ` + t + ` WHERE done_at IS NOT NULL AND done_at < ` + minus(1) + ` LIMIT $2)`,
		ownRow:     ownRow,
		cleanStale: `DELETE FROM ` + t + ` WHERE (scope, key) IN (SELECT scope, key FROM ` + t + ` WHERE done_at IS NULL AND lease_until < ` + minus(1) + ` LIMIT $2)`,
	}
}
