package outbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/queuekit/queuekit/sql/sqldb"
)

// Schema returns the DDL that Migrate runs for an outbox on table in
// dialect d: statements separated by ";\n", each idempotent, for teams that
// manage their own migrations. On PostgreSQL it includes the trigger that
// notifies the relays on every insert; on SQLite the relay's lease table
// table+"_relay".
func Schema(d sqldb.Dialect, table string) (string, error) {
	stmts, err := schema(d, table)
	if err != nil {
		return "", err
	}
	return strings.Join(stmts, ";\n") + ";\n", nil
}

// channel is the LISTEN/NOTIFY channel of table: its name in lower case, as
// PostgreSQL folds the unquoted identifier.
func channel(table string) string { return strings.ToLower(table) }

func schema(d sqldb.Dialect, table string) ([]string, error) {
	if err := sqldb.CheckTableName(table); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	base := baseName(table)
	switch d {
	case sqldb.Postgres:
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + table + ` (
	id         bigserial PRIMARY KEY,
	dest       text NOT NULL,
	msg_key    bytea,
	msg_id     text NOT NULL DEFAULT '',
	headers    text NOT NULL DEFAULT '{}',
	body       bytea NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	sent_at    timestamptz,
	attempts   integer NOT NULL DEFAULT 0,
	last_error text,
	retry_at   timestamptz
)`,
			// The relays' scan in id order, and the check for a key's
			// earlier unsent rows, read only unsent rows.
			`CREATE INDEX IF NOT EXISTS ` + base + `_unsent ON ` + table + ` (id) WHERE sent_at IS NULL`,
			`CREATE INDEX IF NOT EXISTS ` + base + `_unsent_key ON ` + table + ` (msg_key, id) WHERE sent_at IS NULL`,
			// The rows waiting out a failed publish's backoff, which hold up
			// their keys' later rows: few, so that load's check of a row's
			// key reads no entries of other rows (the partial index of
			// unsent rows keeps those of sent ones until vacuum).
			`CREATE INDEX IF NOT EXISTS ` + base + `_retry ON ` + table + ` (msg_key, id) WHERE sent_at IS NULL AND retry_at IS NOT NULL`,
			// Cleanup reads sent rows by age.
			`CREATE INDEX IF NOT EXISTS ` + base + `_sent ON ` + table + ` (sent_at) WHERE sent_at IS NOT NULL`,
			`CREATE OR REPLACE FUNCTION ` + table + `_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('` + channel(table) + `', '');
	RETURN NULL;
END
$$`,
			// Once per statement, not per row: a Write of 100 messages
			// wakes the relays once, when the transaction commits.
			`DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '` + strings.ToLower(base) + `_notify' AND tgrelid = '` + table + `'::regclass) THEN
		CREATE TRIGGER ` + base + `_notify AFTER INSERT ON ` + table + ` FOR EACH STATEMENT EXECUTE FUNCTION ` + table + `_notify();
	END IF;
END
$$`,
		}, nil
	case sqldb.SQLite:
		// SQLite qualifies the index name, not the table, with the schema.
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + table + ` (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	dest       TEXT NOT NULL,
	msg_key    BLOB,
	msg_id     TEXT NOT NULL DEFAULT '',
	headers    TEXT NOT NULL DEFAULT '{}',
	body       BLOB NOT NULL,
	created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
	sent_at    INTEGER,
	attempts   INTEGER NOT NULL DEFAULT 0,
	last_error TEXT,
	retry_at   INTEGER
)`,
			`CREATE INDEX IF NOT EXISTS ` + table + `_unsent ON ` + base + ` (id) WHERE sent_at IS NULL`,
			`CREATE INDEX IF NOT EXISTS ` + table + `_retry ON ` + base + ` (msg_key, id) WHERE sent_at IS NULL AND retry_at IS NOT NULL`,
			`CREATE INDEX IF NOT EXISTS ` + table + `_sent ON ` + base + ` (sent_at) WHERE sent_at IS NOT NULL`,
			// One row: the relay that may work, until when.
			`CREATE TABLE IF NOT EXISTS ` + table + `_relay (
	name        TEXT PRIMARY KEY,
	owner       TEXT NOT NULL,
	lease_until INTEGER NOT NULL
)`,
		}, nil
	}
	return nil, fmt.Errorf("outbox: unknown dialect %v", d)
}

// columns are the columns the relay and Write use, with the types they work
// with.
func columns(d sqldb.Dialect) []sqldb.Column {
	if d == sqldb.SQLite {
		return []sqldb.Column{
			{Name: "id", Types: []string{"integer"}},
			{Name: "dest", Types: []string{"text"}},
			{Name: "msg_key", Types: []string{"blob"}},
			{Name: "msg_id", Types: []string{"text"}},
			{Name: "headers", Types: []string{"text"}},
			{Name: "body", Types: []string{"blob"}},
			{Name: "created_at", Types: []string{"integer"}},
			{Name: "sent_at", Types: []string{"integer"}},
			{Name: "attempts", Types: []string{"integer"}},
			{Name: "last_error", Types: []string{"text"}},
			{Name: "retry_at", Types: []string{"integer"}},
		}
	}
	text := []string{"text", "character varying"}
	ts := []string{"timestamp with time zone"}
	return []sqldb.Column{
		{Name: "id", Types: []string{"bigint"}},
		{Name: "dest", Types: text},
		{Name: "msg_key", Types: []string{"bytea"}},
		{Name: "msg_id", Types: text},
		{Name: "headers", Types: text},
		{Name: "body", Types: []string{"bytea"}},
		{Name: "created_at", Types: ts},
		{Name: "sent_at", Types: ts},
		{Name: "attempts", Types: []string{"integer", "bigint", "smallint"}},
		{Name: "last_error", Types: text},
		{Name: "retry_at", Types: ts},
	}
}

var leaseColumns = []sqldb.Column{
	{Name: "name", Types: []string{"text"}},
	{Name: "owner", Types: []string{"text"}},
	{Name: "lease_until", Types: []string{"integer"}},
}

// Migrate creates the outbox table, its indexes and (PostgreSQL) its notify
// trigger, or (SQLite) the relay's lease table, where they do not exist, then
// checks that the table has the columns the outbox needs. It is idempotent
// and safe to run from several processes at once (on PostgreSQL they take
// turns on an advisory lock). A table that exists with other columns is left
// alone and reported by an error wrapping sqldb.ErrSchema that names the
// column.
func (o *Outbox) Migrate(ctx context.Context) error {
	stmts, err := schema(o.dialect, o.table)
	if err != nil {
		return err
	}
	// The table first, then its columns are checked, so that an existing
	// table of another shape is reported by the column it lacks rather than
	// by an index that cannot be built on it.
	if err := o.exec(ctx, stmts[:1]); err != nil {
		return err
	}
	if err := sqldb.CheckColumns(ctx, o.db, o.dialect, o.table, columns(o.dialect)); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := o.exec(ctx, stmts[1:]); err != nil {
		return err
	}
	if o.dialect == sqldb.SQLite {
		if err := sqldb.CheckColumns(ctx, o.db, o.dialect, o.table+"_relay", leaseColumns); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// exec runs stmts in one transaction.
func (o *Outbox) exec(ctx context.Context, stmts []string) error {
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: migrate table %s: %w", o.table, err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, a no-op
	if o.dialect == sqldb.Postgres {
		// Concurrent CREATE … IF NOT EXISTS can fail on PostgreSQL's
		// catalog; an advisory lock makes Migrates take turns.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "queuekit-migrate:"+o.table); err != nil {
			return fmt.Errorf("outbox: migrate table %s: %w", o.table, err)
		}
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("outbox: migrate table %s: %w", o.table, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: migrate table %s: %w", o.table, err)
	}
	return nil
}
