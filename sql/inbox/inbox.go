package inbox

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// Mode says how the inbox records a message as handled.
type Mode int

const (
	// Transactional runs the handler inside a database transaction that also
	// records the message's key: the handler's effect and the "done" mark
	// commit together, or neither does. The handler must write through Tx(ctx).
	Transactional Mode = iota
	// Lease reserves the key with a lease before the handler runs, outside any
	// transaction, and marks it done after the handler returned nil. It is for
	// handlers whose effects are outside the database; see the package doc.
	Lease
)

// String returns "transactional" or "lease".
func (m Mode) String() string {
	switch m {
	case Transactional:
		return "transactional"
	case Lease:
		return "lease"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Busy says what a Lease-mode inbox does with a message whose key another
// worker holds under a live lease.
type Busy int

const (
	// Wait polls until the other worker is done (the message is then acked
	// without running the handler) or its lease ends (the handler then runs
	// here), for as long as the handler's context allows.
	Wait Busy = iota
	// Requeue returns ErrBusy marked with retry.After for the rest of the
	// other worker's lease, so that the message is redelivered later. The
	// requeue counts against the consumer's delivery budget.
	Requeue
)

// String returns "wait" or "requeue".
func (b Busy) String() string {
	switch b {
	case Wait:
		return "wait"
	case Requeue:
		return "requeue"
	}
	return fmt.Sprintf("Busy(%d)", int(b))
}

// Defaults of Config.
const (
	DefaultTable     = "queuekit_inbox"   // Config.Table
	DefaultScope     = "default"          // Config.Scope
	DefaultLeaseTime = 30 * time.Second   // Config.LeaseTime
	DefaultRetention = 7 * 24 * time.Hour // Config.Retention
)

// MaxKeyBytes is the longest key stored as it is. A longer key is stored
// as "sha256:" followed by the hex SHA-256 of the key, so that it fits a
// PostgreSQL index entry; so is a key that is not valid UTF-8 or holds a NUL
// byte (which PostgreSQL text cannot store), and a key that itself starts
// with "sha256:" (so that it never stands for a hashed one).
const MaxKeyBytes = 512

// MinLeaseTime is the shortest Config.LeaseTime: a lease must outlast the
// round trips of its renewals, even on a loaded machine.
const MinLeaseTime = time.Second

// hashPrefix starts every hashed key.
const hashPrefix = "sha256:"

// CleanBatch is how many rows the Cleaner deletes per statement.
const CleanBatch = 1000

// Config configures an Inbox. The zero value of every field means its
// documented default.
type Config struct {
	// Table is the inbox table (default "queuekit_inbox"): letters, digits
	// and underscores, optionally "schema.table".
	Table string
	// Scope names the consumer the keys belong to (default "default"): keys
	// are unique per (Scope, key). Two consumers that must each handle the
	// same message once use two scopes. A scope is used in one Mode only.
	// It must be valid UTF-8 without NUL bytes.
	Scope string
	// Header is the message header that holds the idempotency key (default
	// broker.HeaderIdempotencyKey).
	Header string
	// Key returns the key of a message whose Header is absent or empty. Nil
	// means such a message has no key (ErrNoKey), and so does a Key that
	// returns "", an error or panics. Derive the key from what
	// the producer sent (a business id in the body), never from Message.ID,
	// which adapters may make up per delivery.
	Key func(*broker.Message) (string, error)
	// Mode is Transactional (the default) or Lease.
	Mode Mode
	// LeaseTime is how long a Lease-mode reservation lasts without renewal
	// (default 30s, at least MinLeaseTime). It is renewed every LeaseTime/3 while the handler runs;
	// a crashed worker's key is free again at most LeaseTime after its last
	// renewal.
	LeaseTime time.Duration
	// Busy is what a Lease-mode inbox does with a key held by a live lease:
	// Wait (default) or Requeue.
	Busy Busy
	// Retention is how long done keys are kept: a duplicate arriving later
	// than this is handled again. The Cleaner deletes older ones. Default 7 days.
	Retention time.Duration
	// TxOptions are used to begin the Transactional-mode transaction. Nil
	// means the database's defaults (READ COMMITTED on PostgreSQL). ReadOnly
	// is refused: the transaction records the key.
	TxOptions *sql.TxOptions
}

// Errors of the inbox middleware.
var (
	// ErrNoKey is the error of a message with no idempotency key: no Header
	// and no Key function, or a Key function that returned "" or an error.
	// It is returned marked with retry.Permanent, so the runtime
	// dead-letters the message at once with this reason: handling it could
	// not be made idempotent, and retrying cannot give it a key.
	ErrNoKey = errors.New("inbox: message has no idempotency key")
	// ErrBusy is the error (marked with retry.After) of a Lease-mode message
	// whose key another worker holds, when Config.Busy is Requeue.
	ErrBusy = errors.New("inbox: message is being handled by another worker")
	// ErrLeaseLost is the cause of a Lease-mode handler's cancelled context
	// when its lease could not be renewed in time or was taken over, and the
	// error the middleware returns then: the message is redelivered, and the
	// inbox acks the redelivery if another worker has finished it.
	ErrLeaseLost = errors.New("inbox: lease lost")
)

// An Inbox records the idempotency keys of handled messages in a table, so
// that a duplicate delivery is acknowledged without running its handler
// again. It is safe for concurrent use; Middleware may wrap any number of
// handlers. It holds no resources of its own: closing db is the caller's
// business, after every consumer and the Cleaner have stopped.
type Inbox struct {
	db      *sql.DB
	d       sqldb.Dialect
	cfg     Config
	q       queries
	pollMin time.Duration // how often a Wait-ing duplicate looks again
	table   string        // cfg.Table in lower case, without SQLite's "main.": the table's identity for nesting

	// Set by tests only, before use.
	batch  int    // rows per Clean statement; CleanBatch
	onBusy func() // called when a Lease-mode key is found busy
}

// New returns an Inbox on db with cfg. It validates cfg and detects the
// dialect of db from its driver (pgx or modernc.org/sqlite) but does no I/O:
// call Migrate, or create the table with Schema's DDL, before use. Errors
// wrap broker.ErrInvalidConfig.
func New(db *sql.DB, cfg Config) (*Inbox, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: inbox: nil *sql.DB", broker.ErrInvalidConfig)
	}
	d, err := sqldb.DetectDialect(db)
	if err != nil {
		return nil, fmt.Errorf("%w: inbox: %w", broker.ErrInvalidConfig, err)
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if err := sqldb.CheckTableName(cfg.Table); err != nil {
		return nil, fmt.Errorf("%w: inbox: %w", broker.ErrInvalidConfig, err)
	}
	if cfg.Scope == "" {
		cfg.Scope = DefaultScope
	}
	if !utf8.ValidString(cfg.Scope) || strings.ContainsRune(cfg.Scope, 0) {
		return nil, fmt.Errorf("%w: inbox: Scope %q is not UTF-8 text without NUL bytes", broker.ErrInvalidConfig, cfg.Scope)
	}
	if cfg.TxOptions != nil && cfg.TxOptions.ReadOnly {
		return nil, fmt.Errorf("%w: inbox: read-only TxOptions: the transaction records the key", broker.ErrInvalidConfig)
	}
	if cfg.Header == "" {
		cfg.Header = broker.HeaderIdempotencyKey
	}
	switch cfg.Mode {
	case Transactional, Lease:
	default:
		return nil, fmt.Errorf("%w: inbox: unknown Mode %d", broker.ErrInvalidConfig, int(cfg.Mode))
	}
	switch cfg.Busy {
	case Wait, Requeue:
	default:
		return nil, fmt.Errorf("%w: inbox: unknown Busy %d", broker.ErrInvalidConfig, int(cfg.Busy))
	}
	switch {
	case cfg.LeaseTime == 0:
		cfg.LeaseTime = DefaultLeaseTime
	case cfg.LeaseTime < MinLeaseTime:
		return nil, fmt.Errorf("%w: inbox: LeaseTime %v, want at least %v", broker.ErrInvalidConfig, cfg.LeaseTime, MinLeaseTime)
	}
	switch {
	case cfg.Retention == 0:
		cfg.Retention = DefaultRetention
	case cfg.Retention < 0:
		return nil, fmt.Errorf("%w: inbox: negative Retention %v", broker.ErrInvalidConfig, cfg.Retention)
	}
	table := strings.ToLower(cfg.Table)
	if d == sqldb.SQLite {
		// "main.t" is "t" of the database the connection opened.
		table = strings.TrimPrefix(table, "main.")
	}
	i := &Inbox{db: db, d: d, cfg: cfg, q: newQueries(d, cfg.Table), batch: CleanBatch, table: table}
	i.pollMin = min(max(cfg.LeaseTime/20, 10*time.Millisecond), 500*time.Millisecond)
	return i, nil
}

// Dialect returns the dialect of the inbox's database.
func (i *Inbox) Dialect() sqldb.Dialect { return i.d }

// Table returns the inbox table's name.
func (i *Inbox) Table() string { return i.cfg.Table }

type txKey struct{}

// heldKey is the context key of the keys that the inboxes enclosing a handler
// hold (recorded in their transaction, or reserved): an inner inbox of the
// same database, table and scope finds its key there and just runs the
// handler, instead of taking its enclosing inbox's row for a duplicate.
type heldKey struct{}

// held is one key an enclosing inbox holds; next is the one around it.
type held struct {
	db                *sql.DB
	table, scope, key string
	next              *held
}

// holds reports whether an inbox enclosing ctx holds key of i's table and scope.
func (i *Inbox) holds(ctx context.Context, key string) bool {
	h, _ := ctx.Value(heldKey{}).(*held)
	for ; h != nil; h = h.next {
		if h.db == i.db && h.table == i.table && h.scope == i.cfg.Scope && h.key == key {
			return true
		}
	}
	return false
}

// hold returns ctx recording that i holds key.
func (i *Inbox) hold(ctx context.Context, key string) context.Context {
	next, _ := ctx.Value(heldKey{}).(*held)
	return context.WithValue(ctx, heldKey{}, &held{db: i.db, table: i.table, scope: i.cfg.Scope, key: key, next: next})
}

// txValue is what a Transactional-mode handler's context carries.
type txValue struct {
	db *sql.DB
	d  sqldb.Dialect
	tx *sql.Tx
	// out is the transaction of the Transactional inbox around this one,
	// nil for the outermost: enclosing searches them all.
	out *txValue
}

// Tx returns the transaction of a Transactional-mode inbox handler: the one
// that records the message's key. Everything the handler writes to the
// database must go through it, so that it commits with the key or not at all.
// On SQLite, whose pool has one connection, using the *sql.DB instead inside
// the handler would wait for the transaction forever. Tx returns nil for a
// context that does not come from a Transactional-mode inbox.
//
// The handler must not Commit or Rollback the transaction: the inbox does.
func Tx(ctx context.Context) *sql.Tx {
	if v, ok := ctx.Value(txKey{}).(txValue); ok {
		return v.tx
	}
	return nil
}

// Middleware returns the idempotent-consumer middleware: it looks up the
// message's key, runs the handler only for a key not yet done, and records
// the key as done when the handler returned nil (see the package doc). Put it
// inside Recover and Retry and outside Timeout, so that a retry sees the key
// of the attempt before it.
func (i *Inbox) Middleware() consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		if i.cfg.Mode == Lease {
			return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				return i.handleLease(ctx, m, next)
			})
		}
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			return i.handleTx(ctx, m, next)
		})
	}
}

// key returns the idempotency key of m, or an error marked permanent.
func (i *Inbox) key(m *broker.Message) (string, error) {
	k := m.Header[i.cfg.Header]
	if k == "" && i.cfg.Key != nil {
		var err error
		k, err = callKey(i.cfg.Key, m)
		if err != nil {
			return "", retry.Permanent(fmt.Errorf("%w: Key: %w", ErrNoKey, err))
		}
	}
	if k == "" {
		return "", retry.Permanent(fmt.Errorf("%w (header %q)", ErrNoKey, i.cfg.Header))
	}
	if len(k) > MaxKeyBytes || !utf8.ValidString(k) || strings.ContainsRune(k, 0) || strings.HasPrefix(k, hashPrefix) {
		sum := sha256.Sum256([]byte(k))
		k = hashPrefix + hex.EncodeToString(sum[:])
	}
	return k, nil
}

// callKey calls the user's key function; a panic in it is an error of this
// message only, like a panic in a handler.
func callKey(f func(*broker.Message) (string, error), m *broker.Message) (k string, err error) {
	defer func() {
		if p := recover(); p != nil {
			k, err = "", fmt.Errorf("panic: %v", p)
		}
	}()
	return f(m)
}

// handleTx is the Transactional mode.
func (i *Inbox) handleTx(ctx context.Context, m *broker.Message, next consumer.Handler) error {
	key, err := i.key(m)
	if err != nil {
		return err
	}
	if i.holds(ctx, key) {
		// An enclosing inbox of this table and scope holds the key: its
		// row is not a duplicate. It commits or releases the key.
		return next.Handle(ctx, m)
	}
	if outer, ok, err := i.enclosing(ctx); err != nil {
		return err
	} else if ok {
		// Inside another inbox's transaction on the same database (two
		// scopes in one chain, or another *sql.DB to the same PostgreSQL
		// database): record the key in that transaction, which commits or
		// rolls back both keys and the effect together. A second
		// transaction would wait for the first's uncommitted key, or for
		// the first itself on SQLite.
		return i.handleInTx(ctx, outer.tx, key, m, next)
	}
	tx, err := i.db.BeginTx(ctx, i.cfg.TxOptions)
	if err != nil {
		return fmt.Errorf("inbox: begin: %w", err)
	}
	// Whatever happens below — an error, a duplicate, a panic in the handler
	// unwinding through here — the transaction is rolled back unless it was
	// committed; the panic then goes on to Recover or the runtime.
	finished := false
	defer func() {
		if !finished {
			_ = tx.Rollback()
		}
	}()
	// On PostgreSQL a concurrent insert of the same key blocks here until the
	// first transaction ends, then inserts (it rolled back) or sees the
	// conflict (it committed): never both handlers past this point.
	res, err := tx.ExecContext(ctx, i.q.insertDone, i.cfg.Scope, key)
	if err != nil {
		return fmt.Errorf("inbox: record key: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("inbox: record key: %w", err)
	}
	if n == 0 {
		return nil // a duplicate of a committed message: ack it, run nothing
	}
	if err := next.Handle(i.hold(context.WithValue(ctx, txKey{}, i.txValue(ctx, tx)), key), m); err != nil {
		return err
	}
	finished = true
	if err := tx.Commit(); err != nil {
		// The message is redelivered. The commit either happened (the
		// redelivery sees the key and is acked) or did not (it runs again).
		return fmt.Errorf("inbox: commit: %w", err)
	}
	return nil
}

// handleInTx records key in the enclosing inbox's transaction tx and runs the
// handler in it; the enclosing inbox commits or rolls back.
func (i *Inbox) handleInTx(ctx context.Context, tx *sql.Tx, key string, m *broker.Message, next consumer.Handler) error {
	res, err := tx.ExecContext(ctx, i.q.insertDone, i.cfg.Scope, key)
	if err != nil {
		return fmt.Errorf("inbox: record key: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("inbox: record key: %w", err)
	}
	if n == 0 {
		own, err := i.ownRow(ctx, tx, key)
		if err != nil {
			return err
		}
		if !own {
			return nil // done in this scope already; the enclosing inbox commits its own key
		}
		// The row is this transaction's own: an enclosing inbox recorded
		// the key in the same table under another name ("public.t" and
		// "t"). It is no duplicate; the enclosing inbox commits it.
	}
	return next.Handle(i.hold(ctx, key), m)
}

// ownRow reports whether the row of key that the insert met in tx was
// written by tx itself, rather than committed by another delivery. On
// SQLite, whose one connection sees no other uncommitted rows, the keys held
// by the enclosing inboxes tell (New makes "main.t" and "t" one table).
func (i *Inbox) ownRow(ctx context.Context, tx *sql.Tx, key string) (bool, error) {
	if i.q.ownRow == "" {
		return i.holds(ctx, key), nil
	}
	var own bool
	switch err := tx.QueryRowContext(ctx, i.q.ownRow, i.cfg.Scope, key).Scan(&own); {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("inbox: read key: %w", err)
	}
	return own, nil
}

// txValue returns what the handler's context of i's transaction tx
// carries: tx, and the transactions of the inboxes enclosing ctx.
func (i *Inbox) txValue(ctx context.Context, tx *sql.Tx) txValue {
	v := txValue{db: i.db, d: i.d, tx: tx}
	if out, ok := ctx.Value(txKey{}).(txValue); ok {
		v.out = &out
	}
	return v
}

// identity names what a PostgreSQL session writes to: the database (its
// name, the server's port and start time), the role, the search_path, and
// the relation that $1, the inbox table, resolves to (NULL when none).
const identity = `SELECT current_database() || ' ' || COALESCE(inet_server_port(), 0)::text || ' ' || pg_postmaster_start_time()::text || ' ' || current_user || ' ' || current_setting('search_path'), to_regclass($1)::oid::text`

// enclosing returns the transaction of a Transactional inbox enclosing ctx
// (the innermost first, then the ones around it) that is on i's database:
// the same *sql.DB, or on PostgreSQL another pool to the same database of
// the same server, whose key the inbox's own transaction would wait for
// until the handler's context ended. Another pool counts only with the same
// role and search_path and with i's table resolving to the same relation:
// with per-tenant schemas it is another tenant's, and i uses a transaction
// of its own.
func (i *Inbox) enclosing(ctx context.Context) (txValue, bool, error) {
	outer, ok := ctx.Value(txKey{}).(txValue)
	if !ok {
		return txValue{}, false, nil
	}
	var ours *[2]sql.NullString
	for o := &outer; o != nil; o = o.out {
		switch {
		case o.db == i.db:
			return *o, true, nil
		case o.d != sqldb.Postgres || i.d != sqldb.Postgres:
			continue
		}
		if ours == nil {
			ours = new([2]sql.NullString)
			if err := i.db.QueryRowContext(ctx, identity, i.cfg.Table).Scan(&ours[0], &ours[1]); err != nil {
				return txValue{}, false, fmt.Errorf("inbox: identify the database: %w", err)
			}
		}
		var theirs [2]sql.NullString
		if err := o.tx.QueryRowContext(ctx, identity, i.cfg.Table).Scan(&theirs[0], &theirs[1]); err != nil {
			return txValue{}, false, fmt.Errorf("inbox: identify the enclosing inbox's database: %w", err)
		}
		if ours[1].Valid && theirs == *ours {
			return *o, true, nil
		}
	}
	return txValue{}, false, nil
}
