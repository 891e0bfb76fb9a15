package outbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// DefaultTable is the table of the package-level Write and of an Outbox whose
// Config.Table is empty.
const DefaultTable = "queuekit_outbox"

// Config configures an Outbox. The zero value is valid.
type Config struct {
	// Table is the outbox table. Empty means DefaultTable. It must be a plain
	// identifier, optionally schema-qualified (see sqldb.CheckTableName), of
	// at most 52 characters without the schema, so that the names of its
	// indexes fit in 63. On SQLite the relay's lease lives in the table
	// named Table+"_relay".
	Table string
}

// An Outbox is a table of messages waiting to be published: Write adds to it
// inside the application's transaction, a Relay publishes from it.
//
// An Outbox is safe for concurrent use and holds no resources of its own: it
// does not close db.
type Outbox struct {
	db      *sql.DB
	dialect sqldb.Dialect
	table   string
}

// New returns an Outbox over table cfg.Table of db, which must be opened with
// pgx's database/sql driver (PostgreSQL) or modernc.org/sqlite (see
// sqldb.Open). New does no I/O; call Migrate to create the table. It returns
// an error wrapping broker.ErrInvalidConfig for a nil db, an invalid or too
// long table name or an unknown driver.
func New(db *sql.DB, cfg Config) (*Outbox, error) {
	if db == nil {
		return nil, fmt.Errorf("outbox: %w: nil *sql.DB", broker.ErrInvalidConfig)
	}
	table := cfg.Table
	if table == "" {
		table = DefaultTable
	}
	if err := sqldb.CheckTableName(table); err != nil {
		return nil, fmt.Errorf("outbox: %w: %w", broker.ErrInvalidConfig, err)
	}
	if b := baseName(table); len(b) > maxBaseName {
		// PostgreSQL cuts longer names of the indexes (<table>_unsent_key)
		// to 63 characters, so that two tables' could collide; SQLite's
		// lease table <table>_relay would not be a valid name.
		return nil, fmt.Errorf("outbox: %w: table name %q is %d characters long; want at most %d (the names of its indexes must fit in 63)", broker.ErrInvalidConfig, b, len(b), maxBaseName)
	}
	d, err := sqldb.DetectDialect(db)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w: %w", broker.ErrInvalidConfig, err)
	}
	return &Outbox{db: db, dialect: d, table: table}, nil
}

// maxBaseName is the longest table name (without schema) whose derived
// names, up to <table>_unsent_key, fit in 63 characters.
const maxBaseName = 63 - len("_unsent_key")

// Table returns the name of the outbox table.
func (o *Outbox) Table() string { return o.table }

// Dialect returns the dialect of the outbox's database.
func (o *Outbox) Dialect() sqldb.Dialect { return o.dialect }

// Write adds msgs, addressed to dest, to the outbox table DefaultTable inside
// tx. It is Outbox.Write for an outbox on the default table, for code that has
// a transaction but no Outbox at hand.
func Write(ctx context.Context, tx *sql.Tx, dest string, msgs ...*broker.Message) error {
	return write(ctx, tx, DefaultTable, dest, msgs)
}

// Write adds msgs, addressed to dest, to the outbox inside tx, the
// application's own transaction: they are published by a Relay if and only
// if tx commits. Write stores each message's Key, ID, Header and Body (not
// Topic, Time or Attempt) and sets the header broker.HeaderIdempotencyKey to
// a fresh random key (32 hex digits) in the stored copy of every message that
// has none, so that a consumer can recognise the same message published twice
// by a relay that crashed between publishing and marking it sent. Write does
// not modify msgs.
//
// Rows are published in the order they were written, per key (see the
// package doc). Write returns an error wrapping broker.ErrInvalidConfig for a
// nil tx, an empty dest or a nil message, and the database's error otherwise;
// the caller then rolls tx back. Writing no messages does nothing.
//
// Destinations, message IDs and header names and values must be valid UTF-8
// without NUL bytes in dest and IDs (they are stored as text): Write refuses
// others with an error wrapping broker.ErrInvalidConfig that names them,
// rather than store them changed. Keys and bodies may hold any bytes.
func (o *Outbox) Write(ctx context.Context, tx *sql.Tx, dest string, msgs ...*broker.Message) error {
	return write(ctx, tx, o.table, dest, msgs)
}

// rowsPerInsert bounds the rows of one INSERT: 5 parameters each stays far
// below both databases' limits on bind parameters.
const rowsPerInsert = 500

func write(ctx context.Context, tx *sql.Tx, table, dest string, msgs []*broker.Message) error {
	switch {
	case tx == nil:
		return fmt.Errorf("outbox: write: %w: nil *sql.Tx", broker.ErrInvalidConfig)
	case dest == "":
		return fmt.Errorf("outbox: write: %w: empty destination", broker.ErrInvalidConfig)
	case !utf8.ValidString(dest) || strings.IndexByte(dest, 0) >= 0:
		return fmt.Errorf("outbox: write: %w: destination %q is not valid UTF-8 without NUL", broker.ErrInvalidConfig, dest)
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("outbox: write: %w: message %d is nil", broker.ErrInvalidConfig, i)
		}
		if !utf8.ValidString(m.ID) || strings.IndexByte(m.ID, 0) >= 0 {
			return fmt.Errorf("outbox: write: %w: message %d: ID %q is not valid UTF-8 without NUL", broker.ErrInvalidConfig, i, m.ID)
		}
		for k, v := range m.Header {
			// JSON would replace invalid UTF-8 with U+FFFD: a changed
			// header, published as if it were the one written.
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return fmt.Errorf("outbox: write: %w: message %d: header %q is not valid UTF-8 (name or value %q)", broker.ErrInvalidConfig, i, k, v)
			}
		}
	}
	for start := 0; start < len(msgs); start += rowsPerInsert {
		chunk := msgs[start:min(start+rowsPerInsert, len(msgs))]
		var q strings.Builder
		q.WriteString("INSERT INTO ")
		q.WriteString(table)
		q.WriteString(" (dest, msg_key, msg_id, headers, body) VALUES ")
		args := make([]any, 0, 5*len(chunk))
		for i, m := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5)
			headers, err := encodeHeaders(m.Header)
			if err != nil {
				return err
			}
			var key any // NULL: no key
			if len(m.Key) > 0 {
				key = m.Key
			}
			body := m.Body
			if body == nil {
				body = []byte{}
			}
			args = append(args, dest, key, m.ID, headers, body)
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			return fmt.Errorf("outbox: write %d messages to table %s: %w", len(chunk), table, err)
		}
	}
	return nil
}

// encodeHeaders returns h as a JSON object, with an idempotency key added
// when h has none.
func encodeHeaders(h map[string]string) (string, error) {
	c := make(map[string]string, len(h)+1)
	for k, v := range h {
		c[k] = v
	}
	if c[broker.HeaderIdempotencyKey] == "" {
		k, err := newKey()
		if err != nil {
			return "", err
		}
		c[broker.HeaderIdempotencyKey] = k
	}
	b, err := json.Marshal(c)
	if err != nil { // cannot happen for a map[string]string
		return "", fmt.Errorf("outbox: encode headers: %w", err)
	}
	return string(b), nil
}

func decodeHeaders(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	var h map[string]string
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, fmt.Errorf("outbox: decode headers: %w", err)
	}
	return h, nil
}

// newKey returns a random 128-bit key in hex.
func newKey() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("outbox: make idempotency key: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// baseName returns table without its schema.
func baseName(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		return table[i+1:]
	}
	return table
}

// placeholders returns "$from, $from+1, …" for n parameters.
func placeholders(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(from + i))
	}
	return b.String()
}

// errText is err's text cut to a size fit for the last_error column.
func errText(err error) string {
	s := err.Error()
	if len(s) > 1000 {
		s = s[:1000]
	}
	return strings.ToValidUTF8(s, "?")
}
