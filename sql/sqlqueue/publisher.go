package sqlqueue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/pgnotify"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// PublisherConfig configures a Publisher. The zero value is valid.
type PublisherConfig struct {
	// Table is the queue table: DefaultTable when empty.
	Table string
}

// insertBatch is the most rows one INSERT statement writes: five parameters
// a row stays far below both databases' parameter limits.
const insertBatch = 100

// A Publisher writes messages into a queue table: the SQL queue's
// broker.Publisher. The destination of Publish is the queue name (a
// Source's Config.Queue); every name is valid, so no destination is
// unknown.
//
// A Publisher is safe for concurrent use. Make one with NewPublisher; the
// zero value is not usable. Close ends this publisher only; the *sql.DB is
// the caller's and stays open.
type Publisher struct {
	db    *sql.DB
	d     sqldb.Dialect
	q     *queries
	table string
	full  string // the INSERT of insertBatch rows

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup
}

var _ broker.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher into cfg.Table of db, which must have
// been opened with the pgx or the modernc.org/sqlite driver (see
// sqldb.Open). It checks cfg, returning an error wrapping
// broker.ErrInvalidConfig, and does no I/O.
func NewPublisher(db *sql.DB, cfg PublisherConfig) (*Publisher, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: sqlqueue: nil *sql.DB", broker.ErrInvalidConfig)
	}
	d, err := sqldb.DetectDialect(db)
	if err != nil {
		return nil, fmt.Errorf("%w: sqlqueue: %w", broker.ErrInvalidConfig, err)
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if err := checkTable(cfg.Table); err != nil {
		return nil, fmt.Errorf("sqlqueue: publisher: %w", err)
	}
	q := newQueries(d, cfg.Table)
	return &Publisher{db: db, d: d, q: q, table: cfg.Table, full: q.insertRows(insertBatch)}, nil
}

// Publish writes msgs into the queue dest, in order, in one transaction, and
// returns after it committed: all of them or none. On PostgreSQL the same
// transaction sends a NOTIFY that wakes the queue's sources; sources of this
// process are woken directly. Message.ID, Key, Header and Body are stored
// (ID may be empty: the delivery's ID is then "<queue>-<row id>"); Topic,
// Time and Attempt are not (Time is the time of the insert). msgs are not
// modified or kept.
//
// It returns an error wrapping broker.ErrInvalidConfig for an invalid queue
// name, a nil message, an ID that is not valid UTF-8 or holds a NUL byte, or
// a header key or value that is not valid UTF-8 (naming it; the headers are
// stored as JSON, which would change those bytes), broker.ErrPublisherClosed after Close, and ctx's
// error when ctx ends first, in which case nothing was written unless the
// commit was already under way (see broker.Publisher: it may or may not
// have arrived).
func (p *Publisher) Publish(ctx context.Context, dest string, msgs ...*broker.Message) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.inflight.Done()
	if err := check(dest, msgs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sqlqueue: publish to %q: %w", dest, err)
	}
	if len(msgs) == 0 {
		return nil
	}
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlqueue: publish to %q: %w", dest, ctxErr(ctx, err))
	}
	defer tx.Rollback()
	if err := p.insert(ctx, tx, dest, msgs); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlqueue: publish to %q: commit (the messages may or may not have been written): %w", dest, ctxErr(ctx, err))
	}
	wakeLocal(p.db, p.table, dest)
	return nil
}

// PublishTx writes msgs into the queue dest inside tx, the application's own
// transaction, so that they are enqueued if and only if tx commits (the
// transactional outbox without a relay, when the queue and the application's
// data share the database). It does not commit; on PostgreSQL the NOTIFY it
// sends is delivered at commit. tx must be of the publisher's database.
// Sources of this process are woken when PublishTx returns, and look again
// after their poll interval if tx had not committed by then.
func (p *Publisher) PublishTx(ctx context.Context, tx *sql.Tx, dest string, msgs ...*broker.Message) error {
	if tx == nil {
		return fmt.Errorf("%w: sqlqueue: PublishTx with a nil *sql.Tx", broker.ErrInvalidConfig)
	}
	if err := p.enter(); err != nil {
		return err
	}
	defer p.inflight.Done()
	if err := check(dest, msgs); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := p.insert(ctx, tx, dest, msgs); err != nil {
		return err
	}
	wakeLocal(p.db, p.table, dest)
	return nil
}

func (p *Publisher) enter() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("sqlqueue: publish: %w", broker.ErrPublisherClosed)
	}
	p.inflight.Add(1)
	return nil
}

func check(dest string, msgs []*broker.Message) error {
	if err := checkQueue(dest); err != nil {
		return fmt.Errorf("sqlqueue: publish: %w: %w", broker.ErrInvalidConfig, err)
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("sqlqueue: publish to %q: %w: message %d is nil", dest, broker.ErrInvalidConfig, i)
		}
		if err := checkMessage(m); err != nil {
			return fmt.Errorf("sqlqueue: publish to %q: %w: message %d: %w", dest, broker.ErrInvalidConfig, i, err)
		}
	}
	return nil
}

// checkMessage refuses what the table cannot store as given: an ID that is
// not valid UTF-8 or holds a NUL byte (a text column), a header key or value
// that is not valid UTF-8 (the headers are JSON text, whose encoding would
// replace the bytes).
func checkMessage(m *broker.Message) error {
	if !utf8.ValidString(m.ID) || strings.IndexByte(m.ID, 0) >= 0 {
		return fmt.Errorf("ID %q is not valid UTF-8 without NUL bytes", m.ID)
	}
	for k, v := range m.Header {
		if !utf8.ValidString(k) {
			return fmt.Errorf("header key %q is not valid UTF-8", k)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("header %q: value %q is not valid UTF-8", k, v)
		}
	}
	return nil
}

// insert writes msgs in batches of insertBatch rows, then (PostgreSQL)
// notifies the queue's channel, all through tx.
func (p *Publisher) insert(ctx context.Context, tx *sql.Tx, dest string, msgs []*broker.Message) error {
	args := make([]any, 0, 5*min(len(msgs), insertBatch))
	for start := 0; start < len(msgs); start += insertBatch {
		batch := msgs[start:min(start+insertBatch, len(msgs))]
		args = args[:0]
		for _, m := range batch {
			h, err := json.Marshal(m.Header)
			if err != nil {
				return fmt.Errorf("sqlqueue: publish to %q: encode headers: %w", dest, err)
			}
			body := m.Body
			if body == nil {
				body = []byte{}
			}
			var key any         // NULL for no key; pgx writes a nil []byte as NULL anyway
			if len(m.Key) > 0 { // an empty key is no key, on both databases
				key = m.Key
			}
			args = append(args, dest, m.ID, key, string(h), body)
		}
		q := p.full
		if len(batch) != insertBatch {
			q = p.q.insertRows(len(batch))
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("sqlqueue: publish to %q: insert into %s: %w", dest, p.table, ctxErr(ctx, err))
		}
	}
	if p.d == sqldb.Postgres {
		if err := pgnotify.Notify(ctx, tx, channel(p.table, dest)); err != nil {
			return fmt.Errorf("sqlqueue: publish to %q: notify: %w", dest, ctxErr(ctx, err))
		}
	}
	return nil
}

// Close makes every later Publish return an error wrapping
// broker.ErrPublisherClosed, and waits, bounded by ctx, for the publishes in
// progress. It is idempotent, and does not close the *sql.DB.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sqlqueue: close publisher: %w", ctx.Err())
	}
}

// ctxErr returns err, made to wrap ctx's error too when ctx ended: a driver
// may report a statement cancelled by ctx with an error of its own.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}
