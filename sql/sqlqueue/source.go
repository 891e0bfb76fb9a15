package sqlqueue

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/pgnotify"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// Defaults of Config.
const (
	DefaultPrefetch   = 16
	DefaultVisibility = 30 * time.Second
	// DefaultPollInterval is the poll interval on PostgreSQL, where
	// LISTEN/NOTIFY wakes a source as soon as a message is published;
	// DefaultPollIntervalNoListen is SQLite's, where only publishers in the
	// same process can wake a source.
	DefaultPollInterval         = time.Second
	DefaultPollIntervalNoListen = 50 * time.Millisecond
)

// minVisibility is the shortest lease Config accepts: the lease is renewed
// every third of it, and a shorter one would be lost to a slow statement
// (a renewal that opens a connection under load).
const minVisibility = time.Second

// maxQueueName bounds a queue name, in bytes.
const maxQueueName = 255

// Config configures a Source. Its zero fields mean the documented defaults;
// Queue is required.
type Config struct {
	// Table is the queue table: DefaultTable when empty. Its dead letters
	// go to DeadLetterTable(Table). Create both with Migrate.
	Table string
	// Queue is the name of the queue the source reads: the rows of Table
	// whose queue column is Queue, which a Publisher writes with Queue as
	// its destination. Required: valid UTF-8, at most 255 bytes, no NUL.
	Queue string
	// Prefetch is how many rows a claim leases at most, and how many
	// deliveries the source holds at once (claimed and handed out, not yet
	// settled): Receive blocks while that many are held. DefaultPrefetch
	// when zero. Set it to at least the consumer's concurrency.
	Prefetch int
	// Visibility is the lease of a claimed row: while the source holds a
	// delivery it renews the lease every Visibility/3; a row whose lease
	// ran out (its source crashed or lost the database) is delivered
	// again, to any source, with Attempt+1. DefaultVisibility when zero;
	// at least 1s.
	Visibility time.Duration
	// PollInterval is how long an idle source waits before it looks for
	// rows again when nothing woke it: DefaultPollInterval on PostgreSQL
	// (a NOTIFY wakes it at once), DefaultPollIntervalNoListen on SQLite
	// (a Publisher of the same process wakes it at once). It also bounds
	// how late a row whose lease expired, or whose RequeueAfter delay
	// passed in another process, is seen.
	PollInterval time.Duration
	// Logger receives the source's warnings (a lease lost, the database
	// unreachable). slog.Default() when nil.
	Logger *slog.Logger
}

// checkQueue checks a queue name, as Config.Queue or a publish destination.
func checkQueue(queue string) error {
	switch {
	case queue == "":
		return errors.New("empty queue name")
	case len(queue) > maxQueueName:
		return fmt.Errorf("queue name of %d bytes, over %d", len(queue), maxQueueName)
	case !utf8.ValidString(queue):
		return fmt.Errorf("queue name %q is not valid UTF-8", queue)
	}
	for i := 0; i < len(queue); i++ {
		if queue[i] == 0 {
			return fmt.Errorf("queue name %q holds a NUL byte", queue)
		}
	}
	return nil
}

// A Source reads one queue of a queue table. It implements broker.Source,
// broker.Pauser, broker.StatusReporter, broker.EventSource,
// broker.BacklogReporter, broker.TopologyDeclarer and
// broker.DeadLetterSource; its
// deliveries implement broker.Delivery, broker.Releaser,
// broker.DelayedRequeuer and broker.Leased. Several sources of one queue, in
// one process or many, share its messages: each row is leased by one source
// at a time.
//
// A Source is safe for concurrent use; Receive may be called from many
// goroutines at once. Its zero value is not usable: make one with NewSource.
// It starts its goroutines (lease renewal; on PostgreSQL, LISTEN) on the
// first Receive, and Close stops them: a Source that received must be
// closed. After Close, Receive returns broker.ErrSourceClosed.
type Source struct {
	db       *sql.DB
	d        sqldb.Dialect
	q        *queries
	table    string
	queue    string
	prefetch int
	vis      time.Duration
	poll     time.Duration
	log      *slog.Logger
	channel  string

	// registered is set once the queue is in the queues table (see
	// QueuesTable): by the first claim, or DeclareTopology.
	registered atomic.Bool

	// ctx ends when Close starts: it stops the background goroutines and
	// ends the leases (broker.Leased) of the deliveries.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// base is the origin of mono, the monotonic clock of the fences.
	base time.Time

	// mu guards the fields below. It is never held across a statement.
	mu sync.Mutex
	// buf are deliveries claimed and not handed out, oldest first; out
	// those handed out and not settled. Together at most prefetch.
	buf []*delivery
	out map[*delivery]struct{}
	// fetching is set while one Receive claims rows, so that the others
	// wait for its result instead of claiming too.
	fetching bool
	// dirty is set when something may have become ready since the last
	// claim found nothing (a NOTIFY, a local publish or requeue); idle is
	// when that claim found nothing, and due when a RequeueAfter of this
	// source makes a row ready (zero: none).
	dirty   bool
	idle    time.Time
	due     time.Time
	backoff time.Duration // after a failed claim
	err     error         // of the last claim, when it is not worth retrying; for the next Receive
	paused  bool
	closed  bool
	started bool
	// signal is closed (and set to nil) when a blocked Receive may go on.
	signal    chan struct{}
	status    broker.Status
	closeDone chan struct{}

	// hookMu guards hook and connected, and is held while the hook runs,
	// so that Close, which clears the hook under it, returns only after
	// any call of it returned. It is never held together with mu.
	hookMu    sync.Mutex
	hook      func(broker.Event)
	connected bool // as last reported to the hook
}

var (
	_ broker.Source           = (*Source)(nil)
	_ broker.Pauser           = (*Source)(nil)
	_ broker.StatusReporter   = (*Source)(nil)
	_ broker.BacklogReporter  = (*Source)(nil)
	_ broker.TopologyDeclarer = (*Source)(nil)
	_ broker.EventSource      = (*Source)(nil)
)

// SetEventHook sets the function the source calls with its events:
// broker.EventConnected when a claim or a lease renewal succeeds after none
// had, or after a failure, and broker.EventReconnecting (Err says why) when
// one fails for want of the database. The hook is called on one of the
// source's goroutines, never with its lock held, and never after Close
// returned.
func (s *Source) SetEventHook(f func(broker.Event)) {
	s.hookMu.Lock()
	s.hook = f
	s.hookMu.Unlock()
}

// report tells the hook of a change of connection state: err is nil after a
// statement that succeeded, else the error of one that failed for want of
// the database. The caller does not hold s.mu.
func (s *Source) report(err error) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	var ev broker.Event
	switch {
	case err == nil && !s.connected:
		ev = broker.Event{Kind: broker.EventConnected}
	case err != nil && s.connected:
		ev = broker.Event{Kind: broker.EventReconnecting, Err: err}
	default:
		return
	}
	s.connected = err == nil
	if s.hook != nil {
		ev.Time = time.Now()
		s.hook(ev)
	}
}

// DeclareTopology registers the source's queue in the queues table (see
// QueuesTable), as its first claim does: a dead-letter redrive writes only to
// a registered queue. It creates no table: run Migrate for that. It is
// idempotent.
func (s *Source) DeclareTopology(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, s.q.register, s.queue); err != nil {
		return fmt.Errorf("sqlqueue: register queue %q in %s: %w", s.queue, QueuesTable(s.table), err)
	}
	s.registered.Store(true)
	return nil
}

// NewSource returns a source of cfg.Queue in db, which must have been opened
// with the pgx or the modernc.org/sqlite driver (see sqldb.Open). It checks
// cfg, returning an error wrapping broker.ErrInvalidConfig, and does no I/O:
// run Migrate first.
func NewSource(db *sql.DB, cfg Config) (*Source, error) {
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
		return nil, fmt.Errorf("sqlqueue: source: %w", err)
	}
	if err := checkQueue(cfg.Queue); err != nil {
		return nil, fmt.Errorf("sqlqueue: source: %w: %w", broker.ErrInvalidConfig, err)
	}
	switch {
	case cfg.Prefetch < 0:
		return nil, fmt.Errorf("sqlqueue: source: %w: prefetch %d, want >= 0", broker.ErrInvalidConfig, cfg.Prefetch)
	case cfg.Visibility < 0 || cfg.Visibility > 0 && cfg.Visibility < minVisibility:
		return nil, fmt.Errorf("sqlqueue: source: %w: visibility %v, want 0 (default) or at least %v", broker.ErrInvalidConfig, cfg.Visibility, minVisibility)
	case cfg.PollInterval < 0:
		return nil, fmt.Errorf("sqlqueue: source: %w: poll interval %v, want >= 0", broker.ErrInvalidConfig, cfg.PollInterval)
	}
	if cfg.Prefetch == 0 {
		cfg.Prefetch = DefaultPrefetch
	}
	if cfg.Visibility == 0 {
		cfg.Visibility = DefaultVisibility
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollIntervalNoListen
		if d == sqldb.Postgres {
			cfg.PollInterval = DefaultPollInterval
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Source{
		db:       db,
		d:        d,
		q:        newQueries(d, cfg.Table),
		table:    cfg.Table,
		queue:    cfg.Queue,
		prefetch: cfg.Prefetch,
		vis:      cfg.Visibility,
		poll:     cfg.PollInterval,
		log:      cfg.Logger,
		channel:  channel(cfg.Table, cfg.Queue),
		out:      make(map[*delivery]struct{}),
		dirty:    true,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.base = time.Now()
	return s, nil
}

// Queue returns the name of the queue the source reads.
func (s *Source) Queue() string { return s.queue }

// start starts the background goroutines, once, unless the source is
// closed. The caller holds s.mu.
func (s *Source) start() {
	if s.started || s.closed {
		return
	}
	s.started = true
	register(s)
	s.wg.Add(1)
	go s.renewLoop()
	if s.d == sqldb.Postgres {
		s.wg.Add(1)
		go s.listen()
	}
}

// broadcast wakes every blocked Receive. The caller holds s.mu.
func (s *Source) broadcast() {
	if s.signal != nil {
		close(s.signal)
		s.signal = nil
	}
}

// wake tells the source that rows may be ready: a NOTIFY, a local publish.
func (s *Source) wake() {
	s.mu.Lock()
	s.dirty = true
	s.broadcast()
	s.mu.Unlock()
}

// Receive returns the next message of the queue. It hands out a row the
// source claimed before, or claims up to Prefetch ready rows (oldest first:
// by the time they became available, then by publication), leasing them and
// counting a delivery of each. It blocks while the queue has no ready row,
// the source is paused, or Prefetch deliveries are held, and returns ctx's
// error when ctx ends first, broker.ErrSourceClosed after Close. While the
// database cannot be reached it keeps trying, blocked (Status says why);
// another database error (a missing table) is returned.
func (s *Source) Receive(ctx context.Context) (broker.Delivery, error) {
	// Checked first so that a caller that is stopping does not claim a
	// row only to give it back.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.start()
	for {
		if s.closed {
			s.mu.Unlock()
			return nil, broker.ErrSourceClosed
		}
		if err := s.err; err != nil {
			s.err = nil
			s.mu.Unlock()
			return nil, err
		}
		if !s.paused && len(s.buf) > 0 {
			d := s.buf[0]
			s.buf[0] = nil
			s.buf = s.buf[1:]
			if !d.live() {
				// Stale, or its fence passed while it waited in the
				// buffer: never handed out. A pending one goes back
				// (its lease may still hold in the database).
				if d.state.CompareAndSwap(statePending, stateStale) {
					d.cancel()
					s.wg.Add(1)
					go func() {
						defer s.wg.Done()
						s.giveBackStale([]*delivery{d})
					}()
				}
				continue
			}
			s.out[d] = struct{}{}
			s.mu.Unlock()
			return d, nil
		}
		wait := time.Duration(-1)
		if !s.paused && !s.fetching && len(s.out) < s.prefetch {
			now := time.Now()
			next := s.idle.Add(s.poll + s.backoff)
			if !s.due.IsZero() && s.due.Before(next) {
				next = s.due
			}
			if !s.dirty && now.Before(next) {
				wait = next.Sub(now)
			} else {
				if !s.due.IsZero() && !now.Before(s.due) {
					s.due = time.Time{}
				}
				s.dirty = false
				s.fetching = true
				s.wg.Add(1)
				go s.fetch(s.prefetch - len(s.out) - len(s.buf))
			}
		}
		if s.signal == nil {
			s.signal = make(chan struct{})
		}
		ch := s.signal
		s.mu.Unlock()
		var (
			t     *time.Timer
			timer <-chan time.Time
		)
		if wait >= 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-ch:
		case <-timer:
		case <-ctx.Done():
		}
		if t != nil {
			t.Stop()
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.mu.Lock()
	}
}

// fetch claims up to n rows into the buffer, on a goroutine of its own
// (counted in s.wg), so that a Receive whose ctx ends does not cut a claim
// short: a claim cancelled after its commit would leave its rows leased,
// with a delivery counted, until their leases ended. One fetch runs at a
// time (s.fetching); the Receive calls wait for its result.
func (s *Source) fetch(n int) {
	defer s.wg.Done()
	ds, err := s.claim(n)
	transient := err != nil && (sqldb.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded))
	if err == nil || transient {
		s.report(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetching = false
	s.broadcast()
	if err != nil {
		if s.closed {
			return
		}
		s.status = broker.Status{Err: err}
		s.idle = time.Now()
		if transient {
			// Receive keeps waiting; the next claim is after the
			// poll interval and a backoff.
			s.backoff = min(max(2*s.backoff, 100*time.Millisecond), 5*time.Second)
			return
		}
		if schemaError(err) {
			// A missing table or column: retrying cannot help.
			err = broker.Fatal(err)
		}
		s.err = err // for the next Receive
		return
	}
	s.status = broker.Status{Connected: true}
	s.backoff = 0
	if s.closed || s.paused {
		// Close or Pause came during the claim: the rows go back at
		// once, not counted.
		s.mu.Unlock()
		s.giveBack(ds, true)
		s.mu.Lock()
		return
	}
	if len(ds) == 0 {
		s.idle = time.Now()
	}
	// A delivery that went stale since its claim (its fence timer fired
	// before it was in the buffer, where forget could not find it) is
	// not kept: it would hold a prefetch slot for good.
	for _, d := range ds {
		if d.state.Load() == statePending {
			s.buf = append(s.buf, d)
		}
	}
}

// mono is the time since the source was made, by the monotonic clock: the
// fences of the deliveries are on it.
func (s *Source) mono() time.Duration { return time.Since(s.base) }

// fenceMargin is how long before the lease may end in the database a
// delivery's Lease context ends (see delivery.fence): a tenth of the
// visibility, for the handler to stop and for clocks that run at slightly
// different rates.
func (s *Source) fenceMargin() time.Duration { return s.vis / 10 }

// schemaError reports whether err says that a table or column is missing
// or not accessible (PostgreSQL SQLSTATE class 42, or SQLite's "no such
// table"/"no such column"), or that the *sql.DB was closed: what no retry
// fixes.
func schemaError(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "42")
	}
	msg := err.Error()
	return strings.Contains(msg, "no such table") || strings.Contains(msg, "no such column") ||
		strings.Contains(msg, "sql: database is closed")
}

// claimTimeout bounds a claim statement, connection included.
const claimTimeout = 30 * time.Second

// claim leases up to n ready rows and returns their deliveries, oldest
// first. It ends with Close, or after claimTimeout.
func (s *Source) claim(n int) ([]*delivery, error) {
	ctx, cancel := context.WithTimeout(s.ctx, claimTimeout)
	defer cancel()
	if !s.registered.Load() {
		if err := s.DeclareTopology(ctx); err != nil {
			return nil, err
		}
	}
	token := newToken()
	// The connection first, so that a wait for the pool (SQLite has one
	// connection) does not count against the leases.
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlqueue: claim from %s, queue %q: %w", s.table, s.queue, err)
	}
	defer conn.Close()
	sent := s.mono() // the leases end after sent+vis in the database
	rows, err := conn.QueryContext(ctx, s.q.claim, token, s.vis.Microseconds(), s.queue, n)
	if err != nil {
		return nil, fmt.Errorf("sqlqueue: claim from %s, queue %q: %w", s.table, s.queue, err)
	}
	defer rows.Close()
	var (
		ds    []*delivery
		avail = map[*delivery]int64{}
	)
	for rows.Next() {
		var (
			r       stored
			created int64
			at      int64
		)
		if err := rows.Scan(&r.id, &r.msgID, &r.key, &r.headers, &r.body, &created, &r.attempts, &at); err != nil {
			return nil, fmt.Errorf("sqlqueue: claim from %s: read a row: %w", s.table, err)
		}
		r.created = created
		d := s.newDelivery(&r, token, sent)
		avail[d] = at
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlqueue: claim from %s, queue %q: %w", s.table, s.queue, err)
	}
	if s.mono() >= sent+s.vis-s.fenceMargin() {
		// The claim returned after its fence (it waited on a lock, a
		// stalled network, a loaded server): the leases may have ended
		// and another source may hold the rows. None is handed out;
		// those still ours go back uncounted.
		rows.Close()
		conn.Close()
		for _, d := range ds {
			d.state.Store(stateStale)
			d.cancel()
		}
		s.log.Warn("sqlqueue: a claim returned after its rows' leases could have ended (the database was slow): they go back to the queue",
			"table", s.table, "queue", s.queue, "rows", len(ds))
		s.giveBackStale(ds)
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return nil, nil
	}
	slices.SortFunc(ds, func(a, b *delivery) int {
		return cmp.Or(cmp.Compare(avail[a], avail[b]), cmp.Compare(a.id, b.id))
	})
	return ds, nil
}

// stored is a row as read from a queue table.
type stored struct {
	id       int64
	queue    string
	msgID    string
	key      []byte
	headers  string
	body     []byte
	created  int64
	attempts int
}

// message decodes r into a broker.Message of queue.
func (r *stored) message(queue string) broker.Message {
	m := broker.Message{
		ID:      r.msgID,
		Topic:   queue,
		Key:     r.key,
		Body:    r.body,
		Time:    time.UnixMicro(r.created),
		Attempt: r.attempts,
	}
	if m.ID == "" {
		m.ID = queue + "-" + strconv.FormatInt(r.id, 10)
	}
	if m.Body == nil {
		m.Body = []byte{}
	}
	if len(m.Key) == 0 {
		m.Key = nil // no key: NULL, or an empty key written by hand
	}
	if r.headers != "" && r.headers != "null" {
		// A header column that is not a JSON object of strings (written
		// by hand) leaves Header nil rather than failing the delivery.
		_ = json.Unmarshal([]byte(r.headers), &m.Header)
	}
	return m
}

func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// giveBack returns rows the source held: claimed and never handed out
// (release: the delivery is not counted) or handed out and not settled. It
// runs on a context of its own, bounded, since it runs when the caller's
// may be done.
func (s *Source) giveBack(ds []*delivery, release bool) {
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	for _, d := range ds {
		if !d.state.CompareAndSwap(statePending, stateStale) {
			continue
		}
		d.cancel()
		q := s.q.requeue
		if release {
			q = s.q.release
		}
		if _, err := s.db.ExecContext(ctx, q, d.id, d.token); err != nil {
			s.log.Warn("sqlqueue: could not give a row back; it is delivered again when its lease ends",
				"table", s.table, "queue", s.queue, "id", d.id, "error", err)
		}
	}
	s.wakeAll()
}

// giveBackStale gives back, uncounted, the rows of deliveries that went
// stale without being handed out, if their claim still holds them (by
// token), so that they are delivered again at once rather than after their
// leases.
func (s *Source) giveBackStale(ds []*delivery) {
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	for _, d := range ds {
		if _, err := s.db.ExecContext(ctx, s.q.release, d.id, d.token); err != nil {
			s.log.Warn("sqlqueue: could not give a row back; it is delivered again when its lease ends",
				"table", s.table, "queue", s.queue, "id", d.id, "error", err)
		}
	}
	s.wakeAll()
}

// giveBackTimeout bounds a give-back that runs on no caller's context.
const giveBackTimeout = 5 * time.Second

// wakeAll wakes the sources of the queue in this process: rows came back.
func (s *Source) wakeAll() { wakeLocal(s.db, s.table, s.queue) }

// forget removes d, settled or stale, from what the source holds. It frees a
// prefetch slot, so it wakes a blocked Receive.
func (s *Source) forget(d *delivery) {
	d.cancel()
	s.mu.Lock()
	delete(s.out, d)
	if i := slices.Index(s.buf, d); i >= 0 {
		s.buf = slices.Delete(s.buf, i, i+1)
	}
	s.broadcast()
	s.mu.Unlock()
}

// renewLoop renews the leases of the rows the source holds every third of
// the visibility, until Close.
func (s *Source) renewLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.vis / 3)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.renew()
		}
	}
}

// renew extends the lease of every row the source holds, by claim token. A
// held delivery whose row was not renewed lost its lease (it ran out and
// another source claimed the row, or the row was deleted by hand): it is
// stale, and its Lease context ends.
func (s *Source) renew() {
	s.mu.Lock()
	byToken := map[string][]*delivery{}
	for _, d := range s.buf {
		if d.live() {
			byToken[d.token] = append(byToken[d.token], d)
		}
	}
	for d := range s.out {
		if d.live() {
			byToken[d.token] = append(byToken[d.token], d)
		}
	}
	s.mu.Unlock()
	for token, ds := range byToken {
		sent := s.mono() // the renewed leases end after sent+vis in the database
		kept, err := s.renewToken(token, ds)
		if err != nil {
			if s.ctx.Err() == nil {
				s.setStatus(broker.Status{Err: err})
				if sqldb.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
					s.report(err)
				}
				s.log.Warn("sqlqueue: could not renew leases; rows are delivered again if their leases end",
					"table", s.table, "queue", s.queue, "error", err)
			}
			continue
		}
		s.setStatus(broker.Status{Connected: true})
		s.report(nil)
		for _, d := range ds {
			if kept[d.id] {
				d.extend(sent)
				continue
			}
			if d.state.CompareAndSwap(statePending, stateStale) {
				s.log.Warn("sqlqueue: a delivery lost its lease: it is stale and its message is delivered again",
					"table", s.table, "queue", s.queue, "id", d.id, "message_id", d.msg.ID)
				s.forget(d)
			}
		}
	}
}

// renewToken renews the leases of the rows of ds, of the claim token, and
// returns the ids of those still leased by it.
func (s *Source) renewToken(token string, ds []*delivery) (map[int64]bool, error) {
	ids := make([]int64, len(ds))
	for i, d := range ds {
		ids[i] = d.id
	}
	idsJSON, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	// Up to two thirds of the lease: the lease is still valid until then
	// (it was renewed a third of it ago), and a renewal that has to open a
	// connection first takes a while.
	ctx, cancel := context.WithTimeout(s.ctx, 2*s.vis/3)
	defer cancel()
	rows, err := s.db.QueryContext(ctx, s.q.renew, s.vis.Microseconds(), token, string(idsJSON))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	kept := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		kept[id] = true
	}
	return kept, rows.Err()
}

func (s *Source) setStatus(st broker.Status) {
	s.mu.Lock()
	if !s.closed {
		s.status = st
	}
	s.mu.Unlock()
}

// listen LISTENs for the NOTIFY of publishers of the queue (PostgreSQL)
// until Close, and wakes the source on each. When it cannot listen, the
// source polls; it tries again with backoff.
func (s *Source) listen() {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for s.ctx.Err() == nil {
		l, err := pgnotify.Listen(s.ctx, s.db, s.channel)
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Debug("sqlqueue: cannot LISTEN; polling", "table", s.table, "queue", s.queue, "error", err)
			}
			select {
			case <-s.ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		s.wake() // what was published while we were not listening
		for l.Wait(s.ctx) == nil {
			s.wake()
		}
		l.Close()
	}
}

// Close stops the source: Receive returns broker.ErrSourceClosed, the
// background goroutines stop, and the rows the source holds go back to the
// queue: those claimed and never handed out without counting a delivery,
// those handed out and not settled as by Requeue (their deliveries become
// stale: settling one returns an error wrapping broker.ErrStaleDelivery, and
// their Lease contexts end). When ctx ends first, Close stops giving rows
// back and returns an error wrapping ctx's (also when a claim was still under
// way): the rest are delivered again when their leases end, after Visibility
// at most. When a row cannot be given back (the database is unreachable, or
// the *sql.DB was closed), Close returns that error, likewise. Close is idempotent; a second
// call returns once the first is done, or its own ctx ends.
func (s *Source) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		done := s.closeDone
		s.mu.Unlock()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.closed = true
	s.closeDone = make(chan struct{})
	defer close(s.closeDone)
	s.status = broker.Status{Err: broker.ErrSourceClosed}
	// A claim under way gives its rows back itself when it sees closed;
	// wait for it, rather than cut it short, while ctx allows.
	for s.fetching && ctx.Err() == nil {
		if s.signal == nil {
			s.signal = make(chan struct{})
		}
		ch := s.signal
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		s.mu.Lock()
	}
	// A claim still under way when ctx ended gives its rows back itself
	// if it ever returns; Close does not wait for it, and says so.
	var err error
	if s.fetching {
		err = ctx.Err()
	}
	buf := s.buf
	s.buf = nil
	out := make([]*delivery, 0, len(s.out))
	for d := range s.out {
		out = append(out, d)
	}
	clear(s.out)
	s.broadcast()
	s.mu.Unlock()
	unregister(s)
	s.cancel()
	slices.SortFunc(out, func(a, b *delivery) int { return cmp.Compare(a.id, b.id) })
	for i, ds := range [][]*delivery{buf, out} {
		for _, d := range ds {
			if !d.state.CompareAndSwap(statePending, stateStale) {
				continue
			}
			if err == nil {
				err = ctx.Err()
			}
			if err != nil {
				continue // left to its lease
			}
			q := s.q.requeue
			if i == 0 {
				q = s.q.release
			}
			if _, e := s.db.ExecContext(ctx, q, d.id, d.token); e != nil {
				if ctx.Err() != nil {
					err = ctx.Err()
				} else {
					err = e // the others are tried still
				}
			}
		}
	}
	s.wg.Wait()
	s.hookMu.Lock()
	s.hook = nil
	s.hookMu.Unlock()
	if len(buf)+len(out) > 0 {
		wakeLocal(s.db, s.table, s.queue)
	}
	if err != nil {
		return fmt.Errorf("sqlqueue: close source of %q: rows not given back wait for their leases: %w", s.queue, err)
	}
	return nil
}

// Pause stops Receive from handing out messages until Resume, and gives
// back, uncounted, the rows the source claimed and has not handed out, so
// that other sources can take them; it gives them back even when ctx is
// done, on a context of its own bounded to 5s. Deliveries handed out stay
// valid, and their leases are renewed.
func (s *Source) Pause(ctx context.Context) error {
	s.mu.Lock()
	s.paused = true
	buf := s.buf
	s.buf = nil
	s.mu.Unlock()
	// The rows go back even when ctx is done (a stopping runtime): left
	// to their leases they would cost a delivery each. Bounded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), giveBackTimeout)
	defer cancel()
	for _, d := range buf {
		if !d.state.CompareAndSwap(statePending, stateStale) {
			continue
		}
		d.cancel()
		if _, err := s.db.ExecContext(ctx, s.q.release, d.id, d.token); err != nil {
			return fmt.Errorf("sqlqueue: pause: give back row %d (it is delivered again when its lease ends): %w", d.id, err)
		}
	}
	if len(buf) > 0 {
		wakeLocal(s.db, s.table, s.queue)
	}
	return nil
}

// Resume undoes Pause. It never fails.
func (s *Source) Resume(context.Context) error {
	s.mu.Lock()
	s.paused = false
	s.dirty = true
	s.broadcast()
	s.mu.Unlock()
	return nil
}

// Status reports the source connected once a claim or a lease renewal
// succeeded, until one fails (Err says why) or the source is closed. It
// does not block.
func (s *Source) Status() broker.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Backlog implements broker.BacklogReporter: Messages is the number of ready
// rows of the queue (not leased, not waiting out a RequeueAfter delay), one
// COUNT over the queue's index. Consumers is -1: sources of other processes
// are not registered anywhere.
func (s *Source) Backlog(ctx context.Context) (broker.Backlog, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, s.q.backlog, s.queue).Scan(&n); err != nil {
		return broker.Backlog{}, fmt.Errorf("sqlqueue: backlog of %q: %w", s.queue, err)
	}
	return broker.Backlog{Messages: n, Consumers: -1}, nil
}

// local is the registry of the sources of this process, so that a Publisher
// or a requeue wakes them at once (SQLite has no NOTIFY).
var local struct {
	mu sync.Mutex
	m  map[localKey]map[*Source]struct{}
}

type localKey struct {
	db           *sql.DB
	table, queue string
}

func register(s *Source) {
	k := localKey{s.db, s.table, s.queue}
	local.mu.Lock()
	defer local.mu.Unlock()
	if local.m == nil {
		local.m = map[localKey]map[*Source]struct{}{}
	}
	if local.m[k] == nil {
		local.m[k] = map[*Source]struct{}{}
	}
	local.m[k][s] = struct{}{}
}

func unregister(s *Source) {
	k := localKey{s.db, s.table, s.queue}
	local.mu.Lock()
	defer local.mu.Unlock()
	delete(local.m[k], s)
	if len(local.m[k]) == 0 {
		delete(local.m, k)
	}
}

func wakeLocal(db *sql.DB, table, queue string) {
	local.mu.Lock()
	set := local.m[localKey{db, table, queue}]
	ss := make([]*Source, 0, len(set))
	for s := range set {
		ss = append(ss, s)
	}
	local.mu.Unlock()
	for _, s := range ss {
		s.wake()
	}
}
