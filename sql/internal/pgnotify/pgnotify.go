package pgnotify

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// ErrNotPgx is returned by Listen when db's driver is not pgx's.
var ErrNotPgx = errors.New("pgnotify: LISTEN needs the pgx driver")

var channelName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]{0,62}$`)

// A Listener holds one connection of a *sql.DB that LISTENs on a channel.
// It is not safe for concurrent use: one goroutine calls Wait, and Close
// only once Wait has returned (cancel Wait's ctx first). Close is idempotent.
type Listener struct {
	conn    *sql.Conn
	pc      *pgx.Conn
	channel string

	mu     sync.Mutex
	closed bool
}

// Listen takes a connection from db and runs LISTEN channel on it. The
// connection stays out of db's pool until Close.
func Listen(ctx context.Context, db *sql.DB, channel string) (*Listener, error) {
	if !channelName.MatchString(channel) {
		return nil, fmt.Errorf("pgnotify: invalid channel name %q", channel)
	}
	if _, ok := db.Driver().(*stdlib.Driver); !ok {
		return nil, ErrNotPgx
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgnotify: take a connection: %w", err)
	}
	var pc *pgx.Conn
	if err := conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return ErrNotPgx
		}
		pc = c.Conn()
		return nil
	}); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := pc.Exec(ctx, `LISTEN "`+channel+`"`); err != nil {
		conn.Raw(func(any) error { return err }) // a failed LISTEN may have broken the connection: do not pool it
		conn.Close()
		return nil, fmt.Errorf("pgnotify: LISTEN %s: %w", channel, err)
	}
	return &Listener{conn: conn, pc: pc, channel: channel}, nil
}

// Wait blocks until a notification arrives on the channel (nil), ctx is done
// (ctx's error), or the connection fails (another error: Close the listener,
// poll, and Listen again later). Notifications that arrived since the last
// Wait return at once.
func (l *Listener) Wait(ctx context.Context) error {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return errors.New("pgnotify: listener closed")
	}
	_, err := l.pc.WaitForNotification(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pgnotify: wait on %s: %w", l.channel, err)
	}
	return nil
}

// Close releases the connection. It does not return it to the pool: a
// connection that listened, or whose wait was interrupted, is closed.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	// Returning driver.ErrBadConn from Raw makes database/sql discard the
	// connection instead of pooling it with a LISTEN still active.
	_ = l.conn.Raw(func(any) error { return errBadConn })
	return l.conn.Close()
}

// Execer runs a statement: a *sql.DB, *sql.Conn or *sql.Tx.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Notify sends a notification on channel through e (inside a transaction,
// it is delivered when the transaction commits).
func Notify(ctx context.Context, e Execer, channel string) error {
	_, err := e.ExecContext(ctx, `SELECT pg_notify($1, '')`, channel)
	return err
}
