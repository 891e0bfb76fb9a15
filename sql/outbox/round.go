package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// A pending row: a message the relay took from the outbox.
type pending struct {
	id   int64
	dest string
	msg  *broker.Message
	bad  error // the row cannot be made a message (headers that do not decode)
}

// roundResult says what a round did.
type roundResult struct {
	claimed   int  // rows taken from the table
	blocked   int  // rows left because another relay holds an earlier row of their key
	published int  // messages published and marked sent
	failed    int  // messages whose publish failed
	standby   bool // SQLite: another relay holds the lease
	more      bool // the batch was full: more rows may be due
}

// failure is a group of rows whose publish failed with one error.
type failure struct {
	ids []int64
	err error
}

// outcome is what publishing a batch did.
type outcome struct {
	sent   []int64
	failed []failure
}

func (o *outcome) nFailed() int {
	n := 0
	for _, f := range o.failed {
		n += len(f.ids)
	}
	return n
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// round takes a batch of unsent rows, publishes them and marks them.
func (r *Relay) round(ctx context.Context, l *lease) (roundResult, error) {
	if r.o.dialect == sqldb.SQLite {
		return r.roundSQLite(ctx, l)
	}
	return r.roundPostgres(ctx)
}

// roundPostgres works in one transaction that holds the batch's row locks
// while it publishes: other relays skip the locked rows (SKIP LOCKED), and
// a relay that dies releases them with its connection, unmarked, for the
// others to publish.
func (r *Relay) roundPostgres(ctx context.Context) (res roundResult, err error) {
	// The transaction outlives a cancelled ctx: what was published when
	// the relay is stopped must still be marked sent. Each statement bounds
	// itself.
	tx, err := r.o.db.BeginTx(context.WithoutCancel(ctx), nil)
	if err != nil {
		return res, fmt.Errorf("outbox: relay of %s: begin: %w", r.o.table, err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, a no-op

	// The round's commit need not wait for the WAL flush: a mark lost in a
	// server crash leaves its rows unsent, to be published again (a
	// duplicate, never a loss), and the flush is most of a round's time.
	if _, err := tx.ExecContext(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
		return res, fmt.Errorf("outbox: relay of %s: %w", r.o.table, err)
	}
	rows, more, err := r.load(ctx, tx, " FOR UPDATE SKIP LOCKED")
	if err != nil || len(rows) == 0 {
		return res, err
	}
	res.more = more
	res.claimed = len(rows)
	rows, err = r.dropBlocked(ctx, tx, rows)
	if err != nil {
		return res, err
	}
	res.blocked = res.claimed - len(rows)
	if len(rows) == 0 {
		return res, nil
	}
	out := r.publish(ctx, rows, nil)
	if err := r.settle(ctx, tx, out); err != nil {
		return res, err
	}
	if err := tx.Commit(); err != nil {
		return res, fmt.Errorf("outbox: relay of %s: commit: %w", r.o.table, err)
	}
	return r.done(res, out), nil
}

// roundSQLite works only while the relay holds the lease, so that one
// relay at a time publishes: SQLite has a single writer and no row locks.
// It reads the batch, publishes it outside any transaction (a transaction
// would hold the database's one connection, and its write lock, against the
// application during the publish), then marks it in a short transaction.
func (r *Relay) roundSQLite(ctx context.Context, l *lease) (res roundResult, err error) {
	if !l.held() {
		if err := l.lastErr(); err != nil {
			return res, err // the lease table cannot be read: the database fails
		}
		res.standby = true
		return res, nil
	}
	// No rows of a key can be left out of order here (one relay works at a
	// time; load leaves out the keys whose earlier row waits), so there is
	// no dropBlocked.
	rows, more, err := r.load(ctx, r.o.db, "")
	if err != nil || len(rows) == 0 {
		return res, err
	}
	res.more = more
	res.claimed = len(rows)
	out := r.publish(ctx, rows, l)
	if len(out.sent) == 0 && len(out.failed) == 0 {
		return res, nil // stopped or lost the lease before publishing
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dbTimeout)
	defer cancel()
	tx, err := r.o.db.BeginTx(sctx, nil)
	if err != nil {
		return res, fmt.Errorf("outbox: relay of %s: begin: %w", r.o.table, err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, a no-op
	if err := r.settle(ctx, tx, out); err != nil {
		return res, err
	}
	if err := tx.Commit(); err != nil {
		return res, fmt.Errorf("outbox: relay of %s: commit: %w", r.o.table, err)
	}
	return r.done(res, out), nil
}

// done counts a settled outcome.
func (r *Relay) done(res roundResult, out outcome) roundResult {
	res.published = len(out.sent)
	res.failed = out.nFailed()
	r.update(func(s *RelayStats) {
		s.Published += uint64(res.published)
		s.Failed += uint64(res.failed)
	})
	return res
}

// load reads up to Batch unsent rows in id order that are due: not waiting
// out the backoff of a failed publish (retry_at), and not of a key whose
// earlier row waits so (which they must not overtake). It stops before the
// row that would take the batch past MaxBatchBytes, but reads at least one.
// more reports whether more rows may be due: the batch is full (Batch rows,
// or cut by MaxBatchBytes).
func (r *Relay) load(ctx context.Context, q queryer, suffix string) (out []pending, more bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	t := r.o.table
	var query string
	var args []any
	// The sizes are summed before the rows are read, so that rows past the
	// limit are never fetched: a batch of large bodies is bounded by bytes.
	// On PostgreSQL, the CTE locks the Batch rows it picks (SKIP LOCKED
	// leaves other relays' rows to them); the rows cut by size stay locked,
	// unpublished, until the round ends.
	if r.o.dialect == sqldb.Postgres {
		query = `WITH c AS MATERIALIZED (SELECT id, octet_length(body) + octet_length(headers) + COALESCE(octet_length(msg_key), 0) AS n FROM ` + t + ` o
	WHERE sent_at IS NULL AND (retry_at IS NULL OR retry_at <= now())
	AND (msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM ` + t + ` e WHERE e.msg_key = o.msg_key AND e.sent_at IS NULL AND e.id < o.id AND e.retry_at IS NOT NULL AND e.retry_at > now()))
	ORDER BY id LIMIT $1` + suffix + `),
s AS (SELECT id, sum(n) OVER (ORDER BY id) AS cum, row_number() OVER (ORDER BY id) AS rn, count(*) OVER () AS total FROM c)
SELECT x.id, x.dest, x.msg_key, x.msg_id, x.headers, x.body, s.total FROM ` + t + ` x JOIN s ON x.id = s.id
WHERE s.rn = 1 OR s.cum <= $2 ORDER BY x.id`
		args = []any{r.cfg.Batch, r.cfg.MaxBatchBytes}
	} else {
		now := time.Now().UnixMilli()
		query = `WITH c AS (SELECT id, length(CAST(body AS BLOB)) + length(CAST(headers AS BLOB)) + COALESCE(length(CAST(msg_key AS BLOB)), 0) AS n FROM ` + t + ` o
	WHERE sent_at IS NULL AND (retry_at IS NULL OR retry_at <= $1)
	AND (msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM ` + t + ` e WHERE e.msg_key = o.msg_key AND e.sent_at IS NULL AND e.id < o.id AND e.retry_at IS NOT NULL AND e.retry_at > $2))
	ORDER BY id LIMIT $3),
s AS (SELECT id, sum(n) OVER (ORDER BY id) AS cum, row_number() OVER (ORDER BY id) AS rn, count(*) OVER () AS total FROM c)
SELECT x.id, x.dest, x.msg_key, x.msg_id, x.headers, x.body, s.total FROM ` + t + ` x JOIN s ON x.id = s.id
WHERE s.rn = 1 OR s.cum <= $4 ORDER BY x.id`
		args = []any{now, now, r.cfg.Batch, r.cfg.MaxBatchBytes}
	}
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, false, fmt.Errorf("outbox: relay of %s: read: %w", t, err)
	}
	defer rows.Close()
	var total int
	for rows.Next() {
		var p pending
		var headers string
		m := &broker.Message{}
		if err := rows.Scan(&p.id, &p.dest, &m.Key, &m.ID, &headers, &m.Body, &total); err != nil {
			return nil, false, fmt.Errorf("outbox: relay of %s: read: %w", t, err)
		}
		if len(m.Key) == 0 {
			m.Key = nil
		}
		m.Header, p.bad = decodeHeaders(headers)
		p.msg = m
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("outbox: relay of %s: read: %w", t, err)
	}
	return out, total >= r.cfg.Batch || len(out) < total, nil
}

// dropBlocked removes from rows (in id order) every row of a key that has an
// earlier unsent row outside the batch: another relay holds that row (or it
// was committed after the batch was read), so publishing this one now could
// overtake it. The rows stay locked and unmarked until the round ends; a
// later round publishes them in order.
func (r *Relay) dropBlocked(ctx context.Context, tx *sql.Tx, rows []pending) ([]pending, error) {
	ids := make([]int64, len(rows))
	var keys [][]byte
	seen := map[string]bool{}
	for i, p := range rows {
		ids[i] = p.id
		if k := p.msg.Key; len(k) > 0 && !seen[string(k)] {
			seen[string(k)] = true
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return rows, nil
	}
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	// The lower bound changes no result (below the first unsent row, all
	// are sent) but keeps the scan of the (msg_key, id) index off the
	// entries of sent rows that vacuum has not removed yet: without it a
	// round costs more with every row sent since the last vacuum.
	q, err := tx.QueryContext(ctx, `SELECT msg_key, min(id) FROM `+r.o.table+
		` WHERE sent_at IS NULL AND msg_key = ANY($1) AND id < $2 AND NOT (id = ANY($3))`+
		` AND id >= (SELECT min(id) FROM `+r.o.table+` WHERE sent_at IS NULL) GROUP BY msg_key`,
		keys, ids[len(ids)-1], ids)
	if err != nil {
		return nil, fmt.Errorf("outbox: relay of %s: check order: %w", r.o.table, err)
	}
	defer q.Close()
	earliest := map[string]int64{} // key → its first unsent row outside the batch
	for q.Next() {
		var k []byte
		var id int64
		if err := q.Scan(&k, &id); err != nil {
			return nil, fmt.Errorf("outbox: relay of %s: check order: %w", r.o.table, err)
		}
		earliest[string(k)] = id
	}
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("outbox: relay of %s: check order: %w", r.o.table, err)
	}
	if len(earliest) == 0 {
		return rows, nil
	}
	kept := rows[:0:0]
	for _, p := range rows {
		if e, ok := earliest[string(p.msg.Key)]; ok && len(p.msg.Key) > 0 && e < p.id {
			continue
		}
		kept = append(kept, p)
	}
	return kept, nil
}

// publish publishes rows (in id order) with one Publish call per
// destination, in the order of each destination's first row. After a
// failure, the later rows of the failed rows' keys are left for the next
// round, so that no message overtakes an earlier one of its key. When ctx
// is done, publish stops: a Publish cut short by it counts as neither sent
// nor failed. l, when not nil, is the SQLite lease, checked before each
// Publish.
func (r *Relay) publish(ctx context.Context, rows []pending, l *lease) outcome {
	type group struct {
		dest string
		rows []pending
	}
	var groups []*group
	byDest := map[string]*group{}
	for _, p := range rows {
		g := byDest[p.dest]
		if g == nil {
			g = &group{dest: p.dest}
			byDest[p.dest] = g
			groups = append(groups, g)
		}
		g.rows = append(g.rows, p)
	}
	var out outcome
	stopped := map[string]int64{} // key → its first row that failed
	stop := func(p pending) {
		if k := string(p.msg.Key); k != "" {
			if f, ok := stopped[k]; !ok || p.id < f {
				stopped[k] = p.id
			}
		}
	}
	for _, g := range groups {
		if ctx.Err() != nil || (l != nil && !l.held()) {
			break
		}
		msgs := make([]*broker.Message, 0, len(g.rows))
		ids := make([]int64, 0, len(g.rows))
		var sent []pending
		for _, p := range g.rows {
			if f, ok := stopped[string(p.msg.Key)]; ok && len(p.msg.Key) > 0 && f < p.id {
				continue
			}
			if p.bad != nil {
				out.failed = append(out.failed, failure{ids: []int64{p.id}, err: p.bad})
				stop(p)
				continue
			}
			msgs = append(msgs, p.msg)
			ids = append(ids, p.id)
			sent = append(sent, p)
		}
		if len(msgs) == 0 {
			continue
		}
		err := r.safePublish(ctx, g.dest, msgs, time.Time{})
		switch {
		case err == nil:
			out.sent = append(out.sent, ids...)
		case ctx.Err() != nil:
			return out // stopped, not failed: the rows stay as they were
		case len(sent) == 1:
			out.failed = append(out.failed, failure{ids: ids, err: err})
			stop(sent[0])
			r.recordError(err)
			r.log.Warn("outbox relay: publish failed; will retry", "dest", g.dest, "messages", 1, "err", err)
		default:
			r.recordError(err)
			r.log.Warn("outbox relay: publish failed; publishing its messages one by one", "dest", g.dest, "messages", len(msgs), "err", err)
			if !r.publishEach(ctx, g.dest, sent, &out, stop, stopped) {
				return out
			}
		}
	}
	return out
}

// publishEach publishes rows (of one destination, in id order) one at a
// time after their Publish together failed, so that a message the broker
// rejects (too large, say) fails alone and blocks only its key: a failure
// stops its key's later rows, other keys go on. The broker may have taken a
// prefix of the failed call: those messages are published again
// (duplicates, as after any failed Publish). All the calls share one
// PublishTimeout, so that a broker that hangs costs two timeouts per round,
// not one per message: the rows left when it is spent count as failed. It
// reports false when ctx is done (the rows not yet published stay as they
// were).
func (r *Relay) publishEach(ctx context.Context, dest string, rows []pending, out *outcome, stop func(pending), stopped map[string]int64) bool {
	deadline := time.Now().Add(r.cfg.PublishTimeout)
	for i, p := range rows {
		if f, ok := stopped[string(p.msg.Key)]; ok && len(p.msg.Key) > 0 && f < p.id {
			continue
		}
		if !time.Now().Before(deadline) {
			var ids []int64
			for _, q := range rows[i:] {
				if f, ok := stopped[string(q.msg.Key)]; ok && len(q.msg.Key) > 0 && f < q.id {
					continue
				}
				ids = append(ids, q.id)
				stop(q)
			}
			out.failed = append(out.failed, failure{ids: ids, err: fmt.Errorf("outbox: publish to %q: not tried: PublishTimeout spent on the messages before it", dest)})
			return true
		}
		err := r.safePublish(ctx, dest, []*broker.Message{p.msg}, deadline)
		switch {
		case err == nil:
			out.sent = append(out.sent, p.id)
		case ctx.Err() != nil:
			return false
		default:
			out.failed = append(out.failed, failure{ids: []int64{p.id}, err: err})
			stop(p)
		}
	}
	return true
}

// safePublish calls Publish bounded by PublishTimeout (and by deadline,
// when not zero), turning a panic into an error.
func (r *Relay) safePublish(ctx context.Context, dest string, msgs []*broker.Message, deadline time.Time) (err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	if !deadline.IsZero() {
		var c context.CancelFunc
		ctx, c = context.WithDeadline(ctx, deadline)
		defer c()
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("outbox: publish to %q panicked: %v", dest, p)
		}
	}()
	return r.pub.Publish(ctx, dest, msgs...)
}

// settle marks the sent rows (or deletes them, with a negative Retention)
// and records the failures, in tx.
func (r *Relay) settle(ctx context.Context, tx execer, out outcome) error {
	// What was published must be marked even when the relay is stopping.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dbTimeout)
	defer cancel()
	t := r.o.table
	if len(out.sent) > 0 {
		var q string
		var args []any
		switch {
		case r.cfg.Retention < 0:
			in, a := r.in(1, out.sent)
			q, args = `DELETE FROM `+t+` WHERE id `+in, a
		case r.o.dialect == sqldb.Postgres:
			in, a := r.in(1, out.sent)
			q, args = `UPDATE `+t+` SET sent_at = clock_timestamp() WHERE id `+in, a
		default:
			in, a := r.in(2, out.sent)
			q, args = `UPDATE `+t+` SET sent_at = $1 WHERE id `+in, append([]any{time.Now().UnixMilli()}, a...)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("outbox: relay of %s: mark %d rows sent: %w", t, len(out.sent), err)
		}
	}
	// A failed row waits before its next attempt, growing with its
	// attempts: 100ms, 200ms, … up to retryMax. Rounds read past it
	// meanwhile (load), so that it holds up only its key.
	for _, f := range out.failed {
		var q string
		var args []any
		if r.o.dialect == sqldb.Postgres {
			in, a := r.in(2, f.ids)
			q, args = `UPDATE `+t+` SET attempts = attempts + 1, last_error = $1, retry_at = clock_timestamp() + least(`+
				fmt.Sprint(backoffMin.Seconds())+` * power(2, least(attempts, 30)), `+fmt.Sprint(retryMax.Seconds())+`) * interval '1 second' WHERE id `+in,
				append([]any{errText(f.err)}, a...)
		} else {
			in, a := r.in(3, f.ids)
			q, args = `UPDATE `+t+` SET attempts = attempts + 1, last_error = $1, retry_at = $2 + min(`+
				fmt.Sprint(backoffMin.Milliseconds())+` << min(attempts, 30), `+fmt.Sprint(retryMax.Milliseconds())+`) WHERE id `+in,
				append([]any{errText(f.err), time.Now().UnixMilli()}, a...)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("outbox: relay of %s: record a failed publish: %w", t, err)
		}
	}
	return nil
}

// in returns "= ANY($first)" with ids as an array (PostgreSQL) or
// "IN ($first, …)" with one parameter per id (SQLite).
func (r *Relay) in(first int, ids []int64) (string, []any) {
	if r.o.dialect == sqldb.Postgres {
		return fmt.Sprintf("= ANY($%d)", first), []any{ids}
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return "IN (" + placeholders(first, len(ids)) + ")", args
}

// A lease is a SQLite relay's claim on the outbox: the row "relay" of the
// table <table>_relay names the owner and until when it holds it (unix
// milliseconds). The lease goroutine keeps it; the rounds read it.
type lease struct {
	owner string
	until atomic.Int64          // unix ms until which this relay holds the lease; 0: not held
	err   atomic.Pointer[error] // the last attempt's error; nil after a success
}

func (l *lease) lastErr() error {
	if p := l.err.Load(); p != nil {
		return *p
	}
	return nil
}

// leaseMargin is how long before its end a lease stops counting as held, so
// that a round never starts on a lease about to pass to another relay.
const leaseMargin = time.Second

func (l *lease) held() bool {
	return time.Now().Add(leaseMargin).UnixMilli() < l.until.Load()
}

// leaseTime is how long a SQLite lease lasts without renewal: how long a
// standby waits after its holder died, unless it sees that the holder's
// process is gone (a process of this machine: see ownerIsDead).
const leaseTime = 15 * time.Second

// keepLease takes and renews the lease until ctx is done: every leaseTime/3
// while it holds it, every poll interval while another relay does.
func (r *Relay) keepLease(ctx context.Context, l *lease, wake chan<- struct{}) {
	fails := 0
	for {
		was := l.held()
		err := r.acquire(ctx, l)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			l.err.Store(&err)
		} else {
			l.err.Store(nil)
		}
		d := leaseTime / 3
		switch {
		case err != nil:
			fails++
			d = min(backoff(fails, backoffMin), d)
			if fails == 1 {
				r.log.Warn("outbox relay: cannot take or renew the lease", "err", err)
			}
		case l.held():
			fails = 0
			if !was {
				r.update(func(s *RelayStats) { s.Standby = false })
				poke(wake)
			}
		default:
			fails = 0
			r.update(func(s *RelayStats) { s.Standby = true })
			d = min(r.poll(), d)
		}
		if !sleep(ctx, d, nil) {
			return
		}
	}
}

// acquire takes the lease if it is free or expired, or renews it if it is
// ours.
func (r *Relay) acquire(ctx context.Context, l *lease) error {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	t := r.o.table + "_relay"
	now := time.Now()
	var owner string
	var until int64
	err := r.o.db.QueryRowContext(ctx, `SELECT owner, lease_until FROM `+t+` WHERE name = 'relay'`).Scan(&owner, &until)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("outbox: relay of %s: read the lease: %w", r.o.table, err)
	case owner != l.owner && until > now.UnixMilli() && !ownerIsDead(owner):
		l.until.Store(0)
		return nil // another relay's, and live
	}
	newUntil := now.Add(leaseTime).UnixMilli()
	res, err := r.o.db.ExecContext(ctx, `INSERT INTO `+t+` (name, owner, lease_until) VALUES ('relay', $1, $2)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
WHERE `+t+`.owner = excluded.owner OR `+t+`.lease_until < $3 OR `+t+`.owner = $4`, l.owner, newUntil, now.UnixMilli(), deadOwner(owner))
	if err != nil {
		return fmt.Errorf("outbox: relay of %s: take the lease: %w", r.o.table, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 1 {
		l.until.Store(newUntil)
	} else {
		l.until.Store(0)
	}
	return nil
}

// deadOwner returns owner when its process is known to be dead (see
// ownerIsDead), so that acquire may take its lease over before it expires,
// and "" (no owner) otherwise.
func deadOwner(owner string) string {
	if owner != "" && ownerIsDead(owner) {
		return owner
	}
	return ""
}

// releaseLease gives the lease up, so that a standby takes over at once.
func (r *Relay) releaseLease(l *lease) {
	if l.until.Load() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = r.o.db.ExecContext(ctx, `UPDATE `+r.o.table+`_relay SET lease_until = 0 WHERE name = 'relay' AND owner = $1`, l.owner)
	l.until.Store(0)
}
