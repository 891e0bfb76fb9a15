package sqlqueue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/pgnotify"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// scanChunk is how many dead-letter rows one statement of List, Count,
// Redrive and Purge reads.
const scanChunk = 500

// DeadLetters returns the dead letters of the source's queue: the rows of
// the dead-letter table whose queue is the source's (see NewDeadLetters). It
// implements broker.DeadLetterSource, and works after Close too.
func (s *Source) DeadLetters() broker.DeadLetters {
	return &deadLetters{db: s.db, d: s.d, q: s.q, table: s.table, queue: s.queue}
}

var _ broker.DeadLetterSource = (*Source)(nil)

// NewDeadLetters returns the dead letters of queue in the queue table table
// ("" means DefaultTable) of db, to browse, redrive and purge them without a
// Source (an operator's tool). It checks its arguments, returning an error
// wrapping broker.ErrInvalidConfig, and does no I/O.
//
// A dead letter's ID is its row id in the dead-letter table, in decimal;
// List pages through them oldest first, and its cursor is the last id of a
// page. Partition and Offset are -1; Reason.Time is the time of the
// broker.HeaderFailedAt header, or of the row's dead_at when the header has
// none. List and Count read the dead letters of the queue a chunk at a time,
// without their bodies, filtering in the process (reason texts are in the
// JSON headers); List then reads at most BodyLimit bytes of the body of each
// dead letter it returns, so its memory is bounded by Limit × BodyLimit.
//
// Redrive moves each selected dead letter back into a queue in one
// transaction (delete from the dead-letter table, insert into the queue
// table, and on PostgreSQL NOTIFY): a crash leaves it in one table or the
// other. The copy has the headers of broker.RedriveHeader and a fresh
// delivery count (its next delivery has Attempt 1), keeps the message's ID,
// Key and Body, and is ready at once. Without RedriveOptions.Destination it
// goes to queue, and a dead letter whose reason names another queue, or
// none, is skipped with an error wrapping broker.ErrNoSource: headers do not
// choose where a redrive writes. A Destination must be a queue registered in
// QueuesTable (a queue some Source has claimed from, or declared): another is
// refused with an error wrapping broker.ErrNoSource before anything is
// written. A dead letter whose broker.HeaderRedriven count reached the limit
// is skipped with an error wrapping broker.ErrRedriveLimit. Purge deletes the
// selected dead letters. Two calls at once never handle one dead letter
// twice: the one that finds it gone reports it in Missing if it was asked for
// by id, and leaves it out if a filter selected it.
func NewDeadLetters(db *sql.DB, table, queue string) (broker.DeadLetters, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: sqlqueue: nil *sql.DB", broker.ErrInvalidConfig)
	}
	d, err := sqldb.DetectDialect(db)
	if err != nil {
		return nil, fmt.Errorf("%w: sqlqueue: %w", broker.ErrInvalidConfig, err)
	}
	if table == "" {
		table = DefaultTable
	}
	if err := checkTable(table); err != nil {
		return nil, fmt.Errorf("sqlqueue: dead letters: %w", err)
	}
	if err := checkQueue(queue); err != nil {
		return nil, fmt.Errorf("sqlqueue: dead letters: %w: %w", broker.ErrInvalidConfig, err)
	}
	return &deadLetters{db: db, d: d, q: newQueries(d, table), table: table, queue: queue}, nil
}

type deadLetters struct {
	db    *sql.DB
	d     sqldb.Dialect
	q     *queries
	table string
	queue string
}

// scan reads the dead letters of the queue after the id after, at most n,
// without their bodies: List reads the bodies of the dead letters it
// returns, and only as much of them as asked (body).
func (l *deadLetters) scan(ctx context.Context, after int64, n int) ([]broker.DeadLetter, error) {
	q := l.q.deadScanMeta
	rows, err := l.db.QueryContext(ctx, q, l.queue, after, n)
	if err != nil {
		return nil, fmt.Errorf("sqlqueue: read the dead letters of %q: %w", l.queue, err)
	}
	defer rows.Close()
	var out []broker.DeadLetter
	for rows.Next() {
		var (
			id                      int64
			msgID, headers          string
			key, body               []byte
			created, dead, attempts int64
		)
		if err := rows.Scan(&id, &msgID, &key, &headers, &body, &created, &dead, &attempts); err != nil {
			return nil, fmt.Errorf("sqlqueue: read the dead letters of %q: %w", l.queue, err)
		}
		dl := broker.DeadLetter{
			ID: strconv.FormatInt(id, 10),
			Message: broker.Message{
				ID:      msgID,
				Topic:   l.queue,
				Key:     key,
				Body:    body,
				Time:    time.UnixMicro(created),
				Attempt: int(attempts),
			},
			Partition: -1,
			Offset:    -1,
		}
		if dl.Message.Body == nil {
			dl.Message.Body = []byte{}
		}
		_ = json.Unmarshal([]byte(headers), &dl.Message.Header)
		dl.Reason, dl.HasReason = broker.ParseReason(dl.Message.Header)
		if dl.HasReason && dl.Reason.Time.IsZero() {
			dl.Reason.Time = time.UnixMicro(dead)
		}
		dl.Redriven = broker.Redriven(dl.Message.Header)
		out = append(out, dl)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlqueue: read the dead letters of %q: %w", l.queue, err)
	}
	return out, nil
}

// each calls f with the dead letters of the queue after the id after,
// oldest first, without their bodies, a chunk at a time, until f returns
// false or an error, or there are none left.
func (l *deadLetters) each(ctx context.Context, after int64, f func(d *broker.DeadLetter) (bool, error)) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk, err := l.scan(ctx, after, scanChunk)
		if err != nil {
			return err
		}
		for i := range chunk {
			more, err := f(&chunk[i])
			if err != nil || !more {
				return err
			}
		}
		if len(chunk) < scanChunk {
			return nil
		}
		after, _ = strconv.ParseInt(chunk[len(chunk)-1].ID, 10, 64)
	}
}

func (l *deadLetters) List(ctx context.Context, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	if err := q.Resolve(); err != nil {
		return broker.DeadLetterPage{}, err
	}
	var after int64
	if q.Cursor != "" {
		c, err := strconv.ParseInt(q.Cursor, 10, 64)
		if err != nil || c < 0 {
			return broker.DeadLetterPage{}, fmt.Errorf("%w: sqlqueue: dead-letter cursor %q", broker.ErrInvalidConfig, q.Cursor)
		}
		after = c
	}
	match := q.Matcher()
	var page broker.DeadLetterPage
	// The dead letters are selected by their metadata, then the bodies of
	// those of the page read, cut in SQL: memory is bounded by
	// Limit × BodyLimit, not by the bodies of the table.
	err := l.each(ctx, after, func(d *broker.DeadLetter) (bool, error) {
		if !match(d) {
			return true, nil
		}
		if len(page.Items) == q.Limit {
			// One more matches: the page is full and not the last.
			page.Next = page.Items[len(page.Items)-1].ID
			return false, nil
		}
		page.Items = append(page.Items, *d)
		return true, nil
	})
	if err != nil {
		return broker.DeadLetterPage{}, err
	}
	items := page.Items[:0]
	for _, d := range page.Items {
		ok, err := l.body(ctx, &d, q.BodyLimit)
		if err != nil {
			return broker.DeadLetterPage{}, err
		}
		if ok { // else purged or redriven meanwhile
			items = append(items, d)
		}
	}
	page.Items = items
	return page, nil
}

// body reads up to limit bytes of the body of d (all of it when limit < 0),
// cut as broker.CutBody cuts, and its whole length. It reports false when
// the dead letter is gone.
func (l *deadLetters) body(ctx context.Context, d *broker.DeadLetter, limit int) (bool, error) {
	n := int64(math.MaxInt32)
	if limit >= 0 {
		// utf8.UTFMax-1 bytes more, for CutBody to see whether the cut
		// splits a rune.
		n = min(int64(limit)+utf8.UTFMax-1, n)
	}
	id, _ := strconv.ParseInt(d.ID, 10, 64)
	var (
		body []byte
		size sql.NullInt64
	)
	err := l.db.QueryRowContext(ctx, l.q.deadBody, id, l.queue, n).Scan(&body, &size)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("sqlqueue: read the body of dead letter %s of %q: %w", d.ID, l.queue, err)
	}
	if body == nil {
		body = []byte{}
	}
	d.Message.Body = body
	broker.CutBody(d, limit)
	d.BodySize = int(size.Int64)
	return true, nil
}

func (l *deadLetters) Count(ctx context.Context, f broker.DeadLetterFilter) (int, error) {
	match := f.Matcher()
	n := 0
	err := l.each(ctx, 0, func(d *broker.DeadLetter) (bool, error) {
		if match(d) {
			n++
		}
		return true, nil
	})
	return n, err
}

// selected calls f with each dead letter sel selects, oldest first, up to
// sel.Max, and returns the ids of sel.IDs that are not dead letters of the
// queue.
func (l *deadLetters) selected(ctx context.Context, sel broker.DeadLetterSelection, f func(d *broker.DeadLetter) error) (missing []string, err error) {
	if err := sel.Check(); err != nil {
		return nil, err
	}
	match := sel.Matcher()
	wanted := map[string]bool{}
	for _, id := range sel.IDs {
		wanted[id] = true
	}
	n := 0
	stopped := false
	err = l.each(ctx, 0, func(d *broker.DeadLetter) (bool, error) {
		delete(wanted, d.ID)
		if !match(d) {
			return true, nil
		}
		if err := f(d); err != nil {
			return false, err
		}
		n++
		if sel.Max > 0 && n >= sel.Max {
			stopped = true
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	for _, id := range sel.IDs {
		if !wanted[id] {
			continue
		}
		delete(wanted, id) // an id listed twice is reported once
		if stopped {
			// Not reached by the scan: look it up.
			ok, err := l.exists(ctx, id)
			if err != nil {
				return nil, err
			}
			if ok {
				continue
			}
		}
		missing = append(missing, id)
	}
	return missing, nil
}

// asked reports whether sel names id: a dead letter selected by a filter
// that another call took meanwhile is not missing, only one asked for by id.
func asked(sel broker.DeadLetterSelection, id string) bool {
	return slices.Contains(sel.IDs, id)
}

func (l *deadLetters) exists(ctx context.Context, id string) (bool, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n <= 0 {
		return false, nil
	}
	chunk, err := l.scan(ctx, n-1, 1)
	if err != nil {
		return false, err
	}
	return len(chunk) == 1 && chunk[0].ID == id, nil
}

func (l *deadLetters) Redrive(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	res := broker.DeadLetterResult{DryRun: opts.DryRun}
	if err := sel.Check(); err != nil {
		return res, err
	}
	dest := l.queue
	if opts.Destination != "" {
		if err := checkQueue(opts.Destination); err != nil {
			return res, fmt.Errorf("sqlqueue: redrive: %w: destination: %w", broker.ErrInvalidConfig, err)
		}
		var n int
		if err := l.db.QueryRowContext(ctx, l.q.registered, opts.Destination).Scan(&n); err != nil {
			return res, fmt.Errorf("sqlqueue: redrive: look up queue %q: %w", opts.Destination, err)
		}
		if n == 0 {
			return res, fmt.Errorf("sqlqueue: redrive: %w: queue %q is not registered in %s (no source of it has claimed or declared it)", broker.ErrNoSource, opts.Destination, QueuesTable(l.table))
		}
		dest = opts.Destination
	}
	limit := opts.Limit()
	now := time.Now()
	missing, err := l.selected(ctx, sel, func(d *broker.DeadLetter) error {
		switch {
		case limit >= 0 && d.Redriven >= limit:
			res.Skipped = append(res.Skipped, broker.NewSkipped(d.ID, fmt.Errorf("%w (redriven %d times, limit %d)", broker.ErrRedriveLimit, d.Redriven, limit)))
			return nil
		case opts.Destination == "" && (!d.HasReason || d.Reason.Source != l.queue):
			res.Skipped = append(res.Skipped, broker.NewSkipped(d.ID, fmt.Errorf("%w: its reason names source %q, not %q; give a Destination", broker.ErrNoSource, d.Reason.Source, l.queue)))
			return nil
		case opts.DryRun:
			res.Done = append(res.Done, d.ID)
			return nil
		}
		ok, err := l.redrive(ctx, d.ID, dest, now)
		if err != nil {
			return err
		}
		if ok {
			res.Done = append(res.Done, d.ID)
		} else if asked(sel, d.ID) {
			res.Missing = append(res.Missing, d.ID) // another call took it
		}
		return nil
	})
	res.Missing = append(res.Missing, missing...)
	if err != nil {
		return res, fmt.Errorf("sqlqueue: redrive the dead letters of %q: %w", l.queue, err)
	}
	if len(res.Done) > 0 && !opts.DryRun {
		wakeLocal(l.db, l.table, dest)
	}
	return res, res.Err()
}

// redrive moves the dead letter id into the queue dest, in one transaction.
// It reports false when the dead letter was not there any more.
func (l *deadLetters) redrive(ctx context.Context, id, dest string, now time.Time) (bool, error) {
	n, _ := strconv.ParseInt(id, 10, 64)
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var (
		msgID, headers string
		key, body      []byte
	)
	err = tx.QueryRowContext(ctx, l.q.deadTake, n, l.queue).Scan(&msgID, &key, &headers, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var h map[string]string
	_ = json.Unmarshal([]byte(headers), &h)
	hj, err := json.Marshal(broker.RedriveHeader(h, id, now))
	if err != nil {
		return false, err
	}
	if body == nil {
		body = []byte{}
	}
	var k any
	if key != nil {
		k = key
	}
	if _, err := tx.ExecContext(ctx, l.q.insertRows(1), dest, msgID, k, string(hj), body); err != nil {
		return false, err
	}
	if l.d == sqldb.Postgres {
		if err := pgnotify.Notify(ctx, tx, channel(l.table, dest)); err != nil {
			return false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return false, err
	}
	return true, nil
}

func (l *deadLetters) Purge(ctx context.Context, sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	res := broker.DeadLetterResult{DryRun: dryRun}
	missing, err := l.selected(ctx, sel, func(d *broker.DeadLetter) error {
		if dryRun {
			res.Done = append(res.Done, d.ID)
			return nil
		}
		n, _ := strconv.ParseInt(d.ID, 10, 64)
		r, err := l.db.ExecContext(ctx, l.q.deadDelete, n, l.queue)
		if err != nil {
			return err
		}
		if k, err := r.RowsAffected(); err != nil {
			return err
		} else if k == 0 {
			if asked(sel, d.ID) {
				res.Missing = append(res.Missing, d.ID) // another call took it
			}
			return nil
		}
		res.Done = append(res.Done, d.ID)
		return nil
	})
	res.Missing = append(res.Missing, missing...)
	if err != nil {
		if errors.Is(err, broker.ErrEmptySelection) || errors.Is(err, broker.ErrInvalidConfig) {
			return res, err
		}
		return res, fmt.Errorf("sqlqueue: purge the dead letters of %q: %w", l.queue, err)
	}
	return res, res.Err()
}
