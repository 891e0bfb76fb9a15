package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// The orders' database: the service's tables (orders, stock) and the
// library's (the outbox, the inbox and, on the default broker, the queue),
// all in one database, so that an order, its outbox row, and later its
// effect and its inbox key, each commit together.
//
// Every statement is written once for both dialects: $n placeholders (SQLite
// binds them by position), ON CONFLICT (PostgreSQL 9.5, SQLite 3.24), and
// times as Unix microseconds in a BIGINT, which both store and scan alike.

// Tables of the service.
const (
	ordersTable   = "orders"
	stockTable    = "stock"
	settingsTable = "settings"
)

// schemaStatements create the service's tables unless they exist.
var schemaStatements = []string{
	`CREATE TABLE IF NOT EXISTS orders (
	id              TEXT PRIMARY KEY,      -- ord_…; derived from the Idempotency-Key when there is one: the key's claim
	digest          TEXT NOT NULL,         -- SHA-256 of the request (hex): the same key with another order is refused
	item            TEXT NOT NULL,
	quantity        INTEGER NOT NULL,
	status          TEXT NOT NULL,         -- accepted, processed or failed
	attempts        INTEGER NOT NULL DEFAULT 0,
	error           TEXT NOT NULL DEFAULT '',
	processed_count INTEGER NOT NULL DEFAULT 0, -- the effect: incremented once per processing that committed
	accepted_at     BIGINT NOT NULL,       -- Unix microseconds
	updated_at      BIGINT NOT NULL
)`,
	`CREATE TABLE IF NOT EXISTS settings (
	name  TEXT PRIMARY KEY,
	value TEXT NOT NULL                    -- order_id_secret: the default secret of order ids (see orderIDSecret)
)`,
	`CREATE TABLE IF NOT EXISTS stock (
	item     TEXT PRIMARY KEY,
	quantity BIGINT NOT NULL               -- seeded with -initial-stock on the item's first order
)`,
}

// schemaColumns are what the service needs of its tables: checked after the
// CREATE TABLE IF NOT EXISTS, which leaves an existing table as it is (in a
// PostgreSQL database shared with other programs, a table "orders" of
// theirs), so that a wrong table is a clear error naming the column rather
// than a failing statement later.
var schemaColumns = map[string][]sqldb.Column{
	ordersTable: {
		{Name: "id", Types: []string{"text"}},
		{Name: "digest", Types: []string{"text"}},
		{Name: "item", Types: []string{"text"}},
		{Name: "quantity", Types: []string{"integer", "bigint"}},
		{Name: "status", Types: []string{"text"}},
		{Name: "attempts", Types: []string{"integer", "bigint"}},
		{Name: "error", Types: []string{"text"}},
		{Name: "processed_count", Types: []string{"integer", "bigint"}},
		{Name: "accepted_at", Types: []string{"bigint"}},
		{Name: "updated_at", Types: []string{"bigint"}},
	},
	settingsTable: {
		{Name: "name", Types: []string{"text"}},
		{Name: "value", Types: []string{"text"}},
	},
	stockTable: {
		{Name: "item", Types: []string{"text"}},
		{Name: "quantity", Types: []string{"bigint", "integer"}},
	},
}

// database is the service's handle on the orders' database.
type database struct {
	db      *sql.DB
	dialect sqldb.Dialect
	outbox  *outbox.Outbox
	inbox   *inbox.Inbox
	// orderIDSecret is the secret kept in the settings table (see
	// orderIDSecret), used when ORDER_ID_SECRET is not set.
	orderIDSecret []byte
	// file is the SQLite database file as it was at open (nil on
	// PostgreSQL), and path its path: see fileGone.
	file os.FileInfo
	path string
}

// connectBackoff bounds the waits between attempts to reach the database at
// start.
const (
	connectBackoffMin = 200 * time.Millisecond
	connectBackoffMax = 5 * time.Second
)

// openDatabase opens the database of cfg and creates the tables, retrying
// with backoff while the database cannot be reached, until ctx is done. Each
// failed attempt is logged with the database's URL and the error, neither
// with the password. A table with the wrong schema, or a URL that names no
// database sqldb knows, is an error at once: retrying cannot fix it.
func openDatabase(ctx context.Context, cfg config, logger *slog.Logger, attempted func(error)) (*database, error) {
	db, d, err := sqldb.Open(cfg.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("database: %s", sqldb.RedactError(err, cfg.databaseURL))
	}
	where := sqldb.Redact(cfg.databaseURL)
	delay := connectBackoffMin
	for {
		dbase, err := migrate(ctx, db, d, cfg)
		attempted(err)
		if err == nil {
			return dbase, nil
		}
		if errors.Is(err, sqldb.ErrSchema) || ctx.Err() != nil {
			_ = db.Close()
			return nil, fmt.Errorf("database %s: %s", where, sqldb.RedactError(err, cfg.databaseURL))
		}
		logger.Error("database unreachable: not ready; retrying", "database", where, "error", sqldb.RedactError(err, cfg.databaseURL), "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = db.Close()
			return nil, fmt.Errorf("database %s: gave up at shutdown: %s", where, sqldb.RedactError(err, cfg.databaseURL))
		case <-t.C:
		}
		delay = min(2*delay, connectBackoffMax)
	}
}

// migrate reaches the database and creates what the service needs in it.
func migrate(ctx context.Context, db *sql.DB, d sqldb.Dialect, cfg config) (*database, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return nil, err
	}
	for _, st := range schemaStatements {
		if _, err := db.ExecContext(ctx, st); err != nil {
			return nil, fmt.Errorf("create the service's tables: %w", err)
		}
	}
	for _, table := range []string{ordersTable, stockTable, settingsTable} {
		if err := sqldb.CheckColumns(ctx, db, d, table, schemaColumns[table]); err != nil {
			return nil, err
		}
	}
	ob, err := outbox.New(db, outbox.Config{})
	if err != nil {
		return nil, err
	}
	if err := ob.Migrate(ctx); err != nil {
		return nil, err
	}
	// The inbox's keys are the order ids (the header the API sets). A
	// message published by other means with only the order-id header is
	// keyed by it; one with neither is dead-lettered (inbox.ErrNoKey).
	ib, err := inbox.New(db, inbox.Config{
		Scope: "orders",
		Key: func(m *broker.Message) (string, error) {
			return m.Header[headerOrderID], nil
		},
	})
	if err != nil {
		return nil, err
	}
	if err := ib.Migrate(ctx); err != nil {
		return nil, err
	}
	if cfg.amqpURL == "" && cfg.kafkaBrokers == "" && cfg.brokerKind == "sql" {
		if err := sqlqueue.Migrate(ctx, db, sqlqueue.DefaultTable); err != nil {
			return nil, err
		}
	}
	dbase := &database{db: db, dialect: d, outbox: ob, inbox: ib}
	if len(cfg.orderIDSecret) == 0 {
		if dbase.orderIDSecret, err = orderIDSecret(ctx, db); err != nil {
			return nil, err
		}
	}
	if d == sqldb.SQLite {
		dbase.path = sqlitePath(cfg.databaseURL)
		if dbase.file, err = os.Stat(dbase.path); err != nil {
			return nil, fmt.Errorf("database file: %w", err)
		}
	}
	return dbase, nil
}

// orderIDSecret returns the secret of order ids kept in the settings
// table, made the first time: without ORDER_ID_SECRET, every process on
// this database derives the same id from an Idempotency-Key, so that a
// retry after a restart, or on another replica, names the same order
// (issue 12 chaos run: with a secret per process it made a second order).
// Of two processes starting at once, one inserts its secret, and both read
// that one. The secret is never logged.
func orderIDSecret(ctx context.Context, db *sql.DB) ([]byte, error) {
	fresh, err := newOrderIDSecret()
	if err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ('order_id_secret', $1) ON CONFLICT (name) DO NOTHING`, hex.EncodeToString(fresh)); err != nil {
		return nil, fmt.Errorf("store the order id secret: %w", err)
	}
	var secret string
	if err := db.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = 'order_id_secret'`).Scan(&secret); err != nil {
		return nil, fmt.Errorf("read the order id secret: %w", err)
	}
	if len(secret) < minOrderIDSecretLen {
		return nil, fmt.Errorf("the order id secret in the settings table is %d bytes; want at least %d", len(secret), minOrderIDSecretLen)
	}
	return []byte(secret), nil
}

// sqlitePath is the file of a SQLite URL as sqldb.Open reads it: the
// sqlite://, sqlite: or file: prefix and the query removed.
func sqlitePath(dsn string) string {
	lower := strings.ToLower(dsn)
	for _, p := range []string{"sqlite://", "sqlite:", "file:"} {
		if strings.HasPrefix(lower, p) {
			dsn = dsn[len(p):]
			break
		}
	}
	name, _, _ := strings.Cut(dsn, "?")
	return name
}

// fileGone reports, on SQLite, why the database's path no longer names the
// file opened at start: deleted (rm, a cleanup job) or replaced. The
// process would go on writing to the unlinked file, and every order would
// be gone at the next start (issue 12 review R4 #2). "" while it is the
// same file, and on PostgreSQL.
func (db *database) fileGone() string {
	if db.file == nil {
		return ""
	}
	fi, err := os.Stat(db.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Sprintf("database file %s was deleted while the service runs: what it writes now is lost at exit; restart it", db.path)
	case err != nil:
		return fmt.Sprintf("database file %s: %v", db.path, err)
	case !os.SameFile(fi, db.file):
		return fmt.Sprintf("database file %s was replaced by another file while the service runs: it writes to the old one; restart it", db.path)
	}
	return ""
}

// micros is t as the tables store it.
func micros(t time.Time) int64 { return t.UnixMicro() }

// digestHex is the digest of a request as the orders table stores it.
func digestHex(d [sha256.Size]byte) string { return hex.EncodeToString(d[:]) }

// claim is what insertOrder found.
type claim int

const (
	claimed      claim = iota // the order is new: it and its outbox row are committed
	claimedSame               // the same order exists: answer with it
	claimedOther              // another order has this id (its key): refuse
	claimedBusy               // a transaction with the same id has not ended within lockWait (PostgreSQL)
)

// lockWait bounds, on PostgreSQL, how long an insert waits for another
// transaction that inserts the same order id (a concurrent request with
// the same Idempotency-Key) before it answers 409. SQLite has one writer at
// a time, so the second request simply sees the first one's order.
const lockWait = "2s"

// insertOrder writes the order o, made from a request with digest, and msg,
// its message to the queue, in one transaction: either both are committed
// or neither. The primary key on the order id is the Idempotency-Key's
// claim: of two requests with one key, one inserts, and the other finds its
// order (claimedSame, or claimedOther when it asked for another order).
func (db *database) insertOrder(ctx context.Context, o Order, digest string, queue string, msg *broker.Message) (OrderStatus, claim, error) {
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return OrderStatus{}, 0, err
	}
	defer tx.Rollback() // after Commit: a no-op
	if db.dialect == sqldb.Postgres {
		if _, err := tx.ExecContext(ctx, "SET LOCAL lock_timeout = '"+lockWait+"'"); err != nil {
			return OrderStatus{}, 0, err
		}
	}
	now := micros(o.AcceptedAt)
	res, err := tx.ExecContext(ctx, `INSERT INTO orders (id, digest, item, quantity, status, accepted_at, updated_at)
VALUES ($1, $2, $3, $4, 'accepted', $5, $6) ON CONFLICT (id) DO NOTHING`, o.ID, digest, o.Item, o.Quantity, now, now)
	if err != nil {
		if isLockTimeout(err) {
			return OrderStatus{}, claimedBusy, nil
		}
		return OrderStatus{}, 0, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return OrderStatus{}, 0, err
	} else if n == 0 {
		var have string
		st, err := scanOrder(tx.QueryRowContext(ctx, selectOrder+` WHERE id = $1`, o.ID), &have)
		if err != nil {
			return OrderStatus{}, 0, err
		}
		if have != digest {
			return st, claimedOther, nil
		}
		return st, claimedSame, nil
	}
	if err := db.outbox.Write(ctx, tx, queue, msg); err != nil {
		return OrderStatus{}, 0, err
	}
	if err := tx.Commit(); err != nil {
		return OrderStatus{}, 0, err
	}
	return OrderStatus{ID: o.ID, Status: statusAccepted, Item: o.Item, Quantity: o.Quantity, UpdatedAt: o.AcceptedAt}, claimed, nil
}

// isLockTimeout reports whether err is PostgreSQL's lock_not_available
// (SQLSTATE 55P03), which lock_timeout raises.
func isLockTimeout(err error) bool {
	var st interface{ SQLState() string }
	return errors.As(err, &st) && st.SQLState() == "55P03"
}

const selectOrder = `SELECT id, status, item, quantity, attempts, error, processed_count, updated_at, digest FROM orders`

// scanOrder scans a row of selectOrder; digest, if not nil, gets the
// order's digest.
func scanOrder(row *sql.Row, digest *string) (OrderStatus, error) {
	var o OrderStatus
	var updated int64
	var d string
	if err := row.Scan(&o.ID, &o.Status, &o.Item, &o.Quantity, &o.Attempts, &o.Error, &o.ProcessedCount, &updated, &d); err != nil {
		return o, err
	}
	o.UpdatedAt = time.UnixMicro(updated).UTC()
	if digest != nil {
		*digest = d
	}
	return o, nil
}

// getOrder reads an order; ok is false when there is no such order.
func (db *database) getOrder(ctx context.Context, id string) (OrderStatus, bool, error) {
	o, err := scanOrder(db.db.QueryRowContext(ctx, selectOrder+` WHERE id = $1`, id), nil)
	if errors.Is(err, sql.ErrNoRows) {
		return o, false, nil
	}
	return o, err == nil, err
}

// errOutOfStock is the error of an order for more than the stock holds.
var errOutOfStock = errors.New("out of stock")

// applyOrder is the order's effect, in tx, the inbox's transaction: the
// order is marked processed, its processed_count incremented, and the stock
// of its item decremented (seeded with initialStock on the item's first
// order). The inbox commits all of it with the message's key, or none of it:
// each accepted order's effect happens once, however often it is delivered.
// An order the table does not hold (published by other means) is inserted
// as processed.
func applyOrder(ctx context.Context, tx *sql.Tx, o Order, attempt int, initialStock int) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO stock (item, quantity) VALUES ($1, $2) ON CONFLICT (item) DO NOTHING`, o.Item, initialStock); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `UPDATE stock SET quantity = quantity - $1 WHERE item = $2 AND quantity >= $3`, o.Quantity, o.Item, o.Quantity)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("order %s: item %q: %w", o.ID, o.Item, errOutOfStock)
	}
	now := micros(time.Now())
	res, err = tx.ExecContext(ctx, `UPDATE orders SET status = 'processed', processed_count = processed_count + 1, attempts = $1, error = '', updated_at = $2 WHERE id = $3`,
		attempt, now, o.ID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		acc := now
		if !o.AcceptedAt.IsZero() {
			acc = micros(o.AcceptedAt)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO orders (id, digest, item, quantity, status, attempts, processed_count, accepted_at, updated_at)
VALUES ($1, $2, $3, $4, 'processed', $5, 1, $6, $7)`, o.ID, digestHex(OrderRequest{Item: o.Item, Quantity: o.Quantity}.digest()), o.Item, o.Quantity, attempt, acc, now)
		return err
	}
	return nil
}

// markFailed records an order as failed (dead-lettered), unless it was
// processed. o is the order when the message held a valid one (nil: an id
// only, with an empty item). It reports whether it changed the order.
func (db *database) markFailed(ctx context.Context, id string, o *Order, attempts int, errText string) (bool, error) {
	now := micros(time.Now())
	var item, digest string
	var quantity int
	if o != nil {
		item, quantity, digest = o.Item, o.Quantity, digestHex(OrderRequest{Item: o.Item, Quantity: o.Quantity}.digest())
	}
	res, err := db.db.ExecContext(ctx, `INSERT INTO orders (id, digest, item, quantity, status, attempts, error, accepted_at, updated_at)
VALUES ($1, $2, $3, $4, 'failed', $5, $6, $7, $8)
ON CONFLICT (id) DO UPDATE SET status = 'failed', attempts = excluded.attempts, error = excluded.error, updated_at = excluded.updated_at
WHERE orders.status = 'accepted'`, id, digest, item, quantity, attempts, errText, now, now)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// unsent counts the outbox rows not yet published: orders accepted whose
// message the relay has still to hand to the broker.
func (db *database) unsent(ctx context.Context) (int, error) {
	var n int
	err := db.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+db.outbox.Table()+` WHERE sent_at IS NULL`).Scan(&n)
	return n, err
}
