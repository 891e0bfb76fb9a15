package sqlqueue

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// DefaultTable is the queue table when Config.Table and
// PublisherConfig.Table are empty. Its dead letters are in DefaultTable+"_dead".
const DefaultTable = "queuekit_queue"

// Suffixes of the names of a queue table's dead-letter and queue tables.
const (
	deadSuffix   = "_dead"
	queuesSuffix = "_queues"
)

// DeadLetterTable returns the name of the dead-letter table of the queue
// table table: table+"_dead".
func DeadLetterTable(table string) string { return table + deadSuffix }

// QueuesTable returns the name of the table where the queues of the queue
// table table are registered: table+"_queues". A queue is registered by the
// first claim of a Source of it, or by Source.DeclareTopology; a dead-letter
// redrive writes only to a registered queue, so that a typo in a
// destination does not strand messages where no source reads.
func QueuesTable(table string) string { return table + queuesSuffix }

// checkTable checks table, and the name of its dead-letter table, with
// sqldb.CheckTableName.
func checkTable(table string) error {
	if err := sqldb.CheckTableName(table); err != nil {
		return fmt.Errorf("%w: %w", broker.ErrInvalidConfig, err)
	}
	if err := sqldb.CheckTableName(QueuesTable(table)); err != nil {
		return fmt.Errorf("%w: queues table of %q (the name is too long for its suffixes): %w", broker.ErrInvalidConfig, table, err)
	}
	return nil
}

// Schema returns the DDL that Migrate runs for table in dialect d: the queue
// table, its dead-letter table DeadLetterTable(table), and their indexes,
// each statement idempotent (IF NOT EXISTS) and ending with a semicolon. It is
// for teams that manage their own migrations.
//
// Times (created_at, available_at, leased_until, dead_at) are integers:
// microseconds since the Unix epoch, by the database's clock.
func Schema(d sqldb.Dialect, table string) (string, error) {
	if err := checkTable(table); err != nil {
		return "", err
	}
	var idType, bytesType, textType, intType, bigType string
	switch d {
	case sqldb.Postgres:
		idType, bytesType, textType, intType, bigType = "BIGSERIAL PRIMARY KEY", "BYTEA", "TEXT", "INTEGER", "BIGINT"
	case sqldb.SQLite:
		idType, bytesType, textType, intType, bigType = "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "TEXT", "INTEGER", "INTEGER"
	default:
		return "", fmt.Errorf("%w: sqlqueue: unknown dialect %v", broker.ErrInvalidConfig, d)
	}
	dead := DeadLetterTable(table)
	var b strings.Builder
	fmt.Fprintf(&b, `CREATE TABLE IF NOT EXISTS %s (
	id %s,
	queue %s NOT NULL,
	msg_id %s NOT NULL,
	msg_key %s,
	headers %s NOT NULL,
	body %s NOT NULL,
	created_at %s NOT NULL,
	available_at %s NOT NULL,
	attempts %s NOT NULL DEFAULT 0,
	lease_token %s,
	leased_until %s
);
`, table, idType, textType, textType, bytesType, textType, bytesType, bigType, bigType, intType, textType, bigType)
	fmt.Fprintf(&b, "CREATE INDEX IF NOT EXISTS %s ON %s (queue, available_at, id);\n", indexName(d, table, "ready"), bare(d, table))
	fmt.Fprintf(&b, `CREATE TABLE IF NOT EXISTS %s (
	id %s,
	queue %s NOT NULL,
	msg_id %s NOT NULL,
	msg_key %s,
	headers %s NOT NULL,
	body %s NOT NULL,
	created_at %s NOT NULL,
	dead_at %s NOT NULL,
	attempts %s NOT NULL
);
`, dead, idType, textType, textType, bytesType, textType, bytesType, bigType, bigType, intType)
	fmt.Fprintf(&b, "CREATE INDEX IF NOT EXISTS %s ON %s (queue, id);\n", indexName(d, dead, "queue"), bare(d, dead))
	fmt.Fprintf(&b, `CREATE TABLE IF NOT EXISTS %s (
	name %s PRIMARY KEY,
	created_at %s NOT NULL
);
`, QueuesTable(table), textType, bigType)
	return b.String(), nil
}

// indexName names an index of table. PostgreSQL creates an index in its
// table's schema and refuses a schema in the index's name; SQLite wants the
// schema (an attached database) on the index's name and not on the table's.
func indexName(d sqldb.Dialect, table, suffix string) string {
	schema, name, ok := strings.Cut(table, ".")
	if !ok {
		return table + "_" + suffix
	}
	if d == sqldb.SQLite {
		return schema + "." + name + "_" + suffix
	}
	return name + "_" + suffix
}

// bare is the table name as CREATE INDEX's ON clause wants it.
func bare(d sqldb.Dialect, table string) string {
	if _, name, ok := strings.Cut(table, "."); ok && d == sqldb.SQLite {
		return name
	}
	return table
}

func columns(d sqldb.Dialect) (queue, dead, queues []sqldb.Column) {
	integer := []string{"bigint", "integer"}
	text := []string{"text"}
	bytes := []string{"bytea"}
	if d == sqldb.SQLite {
		bytes = []string{"blob"}
	}
	queue = []sqldb.Column{
		{Name: "id", Types: integer},
		{Name: "queue", Types: text},
		{Name: "msg_id", Types: text},
		{Name: "msg_key", Types: bytes},
		{Name: "headers", Types: text},
		{Name: "body", Types: bytes},
		{Name: "created_at", Types: integer},
		{Name: "available_at", Types: integer},
		{Name: "attempts", Types: integer},
		{Name: "lease_token", Types: text},
		{Name: "leased_until", Types: integer},
	}
	dead = []sqldb.Column{
		{Name: "id", Types: integer},
		{Name: "queue", Types: text},
		{Name: "msg_id", Types: text},
		{Name: "msg_key", Types: bytes},
		{Name: "headers", Types: text},
		{Name: "body", Types: bytes},
		{Name: "created_at", Types: integer},
		{Name: "dead_at", Types: integer},
		{Name: "attempts", Types: integer},
	}
	queues = []sqldb.Column{
		{Name: "name", Types: text},
		{Name: "created_at", Types: integer},
	}
	return queue, dead, queues
}

// Migrate creates the queue table table ("" means DefaultTable), its
// dead-letter and queues tables and their indexes in db, if they do not
// exist (see Schema), then checks that the tables have the columns the queue needs:
// a table made by someone else with a column missing or of another type is
// an error wrapping sqldb.ErrSchema that names the column. It is safe to run
// at every start, from several processes at once.
func Migrate(ctx context.Context, db *sql.DB, table string) error {
	if db == nil {
		return fmt.Errorf("%w: sqlqueue: nil *sql.DB", broker.ErrInvalidConfig)
	}
	if table == "" {
		table = DefaultTable
	}
	d, err := sqldb.DetectDialect(db)
	if err != nil {
		return fmt.Errorf("%w: sqlqueue: %w", broker.ErrInvalidConfig, err)
	}
	ddl, err := Schema(d, table)
	if err != nil {
		return err
	}
	for _, stmt := range strings.SplitAfter(ddl, ";\n") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			// Two processes creating the same table at once on
			// PostgreSQL can race past IF NOT EXISTS (a unique
			// violation on pg_type); the check below decides.
			if ctx.Err() != nil {
				return fmt.Errorf("sqlqueue: migrate %s: %w", table, err)
			}
			if cerr := checkSchema(ctx, db, d, table); cerr != nil {
				return fmt.Errorf("sqlqueue: migrate %s: %w", table, err)
			}
		}
	}
	return checkSchema(ctx, db, d, table)
}

func checkSchema(ctx context.Context, db *sql.DB, d sqldb.Dialect, table string) error {
	qc, dc, nc := columns(d)
	for _, c := range []struct {
		table string
		cols  []sqldb.Column
	}{{table, qc}, {DeadLetterTable(table), dc}, {QueuesTable(table), nc}} {
		if err := sqldb.CheckColumns(ctx, db, d, c.table, c.cols); err != nil {
			return fmt.Errorf("sqlqueue: %w", err)
		}
	}
	return nil
}
