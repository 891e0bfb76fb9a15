package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/internal/pgnotify"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// RelayConfig configures a Relay. The zero value is valid: every zero field
// means the default its doc names.
type RelayConfig struct {
	// Batch is the number of rows a relay takes per round. Zero means 100;
	// at most 10,000.
	Batch int
	// MaxBatchBytes bounds the bytes (bodies, headers and keys) of the rows
	// a relay takes per round, so that memory is bounded by it rather than
	// by Batch times the largest message. A round takes at least one row,
	// however large. Zero means 16 MiB.
	MaxBatchBytes int64
	// PollInterval is how often an idle relay looks for rows. Zero means 1s
	// on PostgreSQL while the relay LISTENs (a notification wakes it at
	// once; polling only covers a lost notification) and 100ms otherwise
	// (SQLite, DisableListen, or while the LISTEN connection is lost).
	PollInterval time.Duration
	// Retention is how long sent rows are kept before they are deleted, in
	// batches of 1,000. Zero means 1h; a negative Retention deletes each row
	// as soon as it was published instead of marking it sent.
	Retention time.Duration
	// PublishTimeout bounds each Publish call (and, after a failed call of
	// several messages, their one-at-a-time retries together). Zero means
	// 30s. The Publisher must honour its context's deadline: one that does
	// not holds the relay, and Run, until it returns.
	PublishTimeout time.Duration
	// DisableListen turns LISTEN/NOTIFY off on PostgreSQL, so that the relay
	// only polls: for connections through a pooler in transaction mode
	// (PgBouncer), on which LISTEN does not work. A relay whose *sql.DB
	// allows a single open connection never LISTENs: the LISTEN would take
	// that connection for good.
	DisableListen bool
	// Logger receives the relay's warnings (failed rounds, a lost LISTEN
	// connection). Nil means slog.Default().
	Logger *slog.Logger
}

// RelayStats are a relay's counters, for metrics.
type RelayStats struct {
	// Published counts the messages this relay published and marked sent.
	Published uint64
	// Failed counts the messages whose Publish failed (each attempt once).
	// They stay in the outbox and are published again.
	Failed uint64
	// Rounds counts the relay's rounds (take a batch, publish, mark).
	Rounds uint64
	// Deleted counts the sent rows this relay's cleanup deleted.
	Deleted uint64
	// Pending is the number of unsent rows when the relay last counted
	// them (about once a second while it runs).
	Pending int64
	// LagSeconds is the age of the oldest unsent row when the relay last
	// counted: how far behind the relay is. Zero with no unsent row.
	LagSeconds float64
	// Listening is true while the relay LISTENs for notifications
	// (PostgreSQL).
	Listening bool
	// Standby is true while another relay holds the SQLite lease and this
	// one waits to take over.
	Standby bool
	// LastError is the text of the last failure of a round or a publish,
	// and LastErrorAt when it happened; empty if none.
	LastError   string
	LastErrorAt time.Time
}

// A Relay publishes the rows of an Outbox through a broker.Publisher and
// marks them sent once Publish returned nil. It is a consumer.Runner: run
// it under a consumer.Supervisor, which reports its State in Health, or
// call Run yourself.
//
// A Relay is safe for concurrent use: State and Stats may be called from
// any goroutine while Run runs. Run may be called again after it returned
// (a Supervisor restarts it), but not twice at once. Any number of relays,
// in one process or many, may work on the same outbox: see the package doc.
type Relay struct {
	o   *Outbox
	pub broker.Publisher
	cfg RelayConfig
	log *slog.Logger

	running atomic.Bool
	state   atomic.Int32 // consumer.State

	mu    sync.Mutex // guards stats
	stats RelayStats
}

const (
	defaultBatch      = 100
	maxBatch          = 10_000
	cleanupBatch      = 1_000
	dbTimeout         = 15 * time.Second // bounds a round's statements after its publish
	countEvery        = time.Second
	backoffMin        = 100 * time.Millisecond
	backoffMax        = 10 * time.Second
	blockedBackoffMin = 5 * time.Millisecond
	retryMax          = 30 * time.Second // the longest wait of a failed row
	defaultBatchBytes = 16 << 20
)

// Relay returns a relay that publishes the outbox's rows through pub. It
// does not start it: call Run. It returns an error wrapping
// broker.ErrInvalidConfig for a nil pub or a negative or too large setting.
// The relay does not close pub.
func (o *Outbox) Relay(pub broker.Publisher, cfg RelayConfig) (*Relay, error) {
	switch {
	case pub == nil:
		return nil, fmt.Errorf("outbox: relay: %w: nil Publisher", broker.ErrInvalidConfig)
	case cfg.Batch < 0 || cfg.Batch > maxBatch:
		return nil, fmt.Errorf("outbox: relay: %w: Batch %d, want 0 (default) to %d", broker.ErrInvalidConfig, cfg.Batch, maxBatch)
	case cfg.PollInterval < 0:
		return nil, fmt.Errorf("outbox: relay: %w: negative PollInterval %v", broker.ErrInvalidConfig, cfg.PollInterval)
	case cfg.MaxBatchBytes < 0:
		return nil, fmt.Errorf("outbox: relay: %w: negative MaxBatchBytes %d", broker.ErrInvalidConfig, cfg.MaxBatchBytes)
	case cfg.PublishTimeout < 0:
		return nil, fmt.Errorf("outbox: relay: %w: negative PublishTimeout %v", broker.ErrInvalidConfig, cfg.PublishTimeout)
	}
	if cfg.Batch == 0 {
		cfg.Batch = defaultBatch
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = defaultBatchBytes
	}
	if cfg.Retention == 0 {
		cfg.Retention = time.Hour
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Relay{
		o: o, pub: pub, cfg: cfg,
		log: log.With("outbox", o.table),
	}
	r.state.Store(int32(consumer.StateStarting))
	return r, nil
}

// State returns the relay's state, for consumer.Supervisor's Health:
// StateStarting before its first round, StateRunning while it works (also
// as a SQLite standby), StateReconnecting while the database fails (it
// retries with backoff), StateStalled while every publish fails (it retries
// with backoff; Stats says why), StateStopped once Run returned.
func (r *Relay) State() consumer.State { return consumer.State(r.state.Load()) }

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() RelayStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *Relay) setState(s consumer.State) { r.state.Store(int32(s)) }

func (r *Relay) update(f func(s *RelayStats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

func (r *Relay) recordError(err error) {
	r.update(func(s *RelayStats) {
		s.LastError = errText(err)
		s.LastErrorAt = time.Now()
	})
}

// Run publishes the outbox's rows until ctx is done, then returns nil. It
// returns an error only when the relay cannot run at all: another Run of the
// same relay is in progress (an error wrapping consumer.ErrAlreadyRunning).
//
// Run does not give up on a failing database or broker: it retries with
// backoff (from 100ms up to 10s), reports it in State and Stats, and logs
// it. When ctx is done during a round, Publish calls in progress are
// cancelled, the messages published so far are marked sent (on a context of
// their own, bounded by 15s), and the rest stay in the outbox for the next
// relay.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return fmt.Errorf("outbox: relay of %s: %w", r.o.table, consumer.ErrAlreadyRunning)
	}
	defer r.running.Store(false)
	r.setState(consumer.StateStarting)
	defer r.setState(consumer.StateStopped)

	ctx, cancel := context.WithCancel(ctx)
	wake := make(chan struct{}, 1)
	var ls *lease
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		if ls != nil {
			r.releaseLease(ls) // after keepLease stopped renewing it
		}
	}()
	switch {
	case r.o.dialect == sqldb.SQLite:
		owner, err := newKey()
		if err != nil {
			return err
		}
		// The process's identity in the owner lets a relay on this machine
		// see that the holder's process died, and take over at once.
		if id, ok := processIdentity(0); ok {
			owner += " " + id
		}
		ls = &lease{owner: owner}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.keepLease(ctx, ls, wake)
		}()
	case r.o.db.Stats().MaxOpenConnections == 1:
		// LISTEN would hold the pool's only connection for good, and
		// every round would wait for it.
		r.log.Warn("outbox relay: the *sql.DB allows one connection, which LISTEN would take; polling instead")
	case !r.cfg.DisableListen:
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.listen(ctx, wake)
		}()
	}

	var fails, blocked int
	var lastCount, lastClean time.Time
	for {
		res, err := r.round(ctx, ls)
		if ctx.Err() != nil {
			return nil
		}
		r.update(func(s *RelayStats) { s.Rounds++ })
		if err != nil {
			fails++
			d := backoff(fails, backoffMin)
			r.recordError(err)
			// Round errors are the database's (a failed publish is a
			// result, not an error): not ready until a round works.
			r.setState(consumer.StateReconnecting)
			r.log.Warn("outbox relay: round failed; retrying", "err", err, "retry_in", d.Round(time.Millisecond))
			if !sleep(ctx, d, nil) {
				return nil
			}
			continue
		}
		// A round that published nothing and only failed says the broker
		// (or every destination it tried) fails: stalled, until a round
		// publishes. A round with nothing due (the failed rows wait out
		// their backoff) does not change that.
		switch {
		case res.failed > 0 && res.published == 0:
			r.setState(consumer.StateStalled)
		case res.published > 0 || r.State() != consumer.StateStalled:
			r.setState(consumer.StateRunning)
		}

		now := time.Now()
		if !res.standby && now.Sub(lastCount) >= countEvery {
			lastCount = now
			r.count(ctx)
		}
		if !res.standby && now.Sub(lastClean) >= r.cleanEvery() {
			lastClean = now
			r.cleanup(ctx)
		}

		switch {
		case res.failed > 0 && res.published == 0 && res.more:
			// Every publish failed, and more rows may be due behind this
			// batch: go on to them (the failed rows wait out their own
			// backoff, and the next round reads past them, so that a
			// failing destination does not stall the others), after a
			// pause that keeps a relay from hammering a broker that is down.
			fails++
			blocked = 0
			if !sleep(ctx, backoffMin, nil) {
				return nil
			}
		case res.failed > 0 && res.published == 0:
			// Every row due failed: they wait out their backoff; look
			// again at the poll interval, or sooner when woken.
			fails++
			blocked = 0
			if !sleep(ctx, min(backoff(fails, backoffMin), r.poll()), wake) {
				return nil
			}
		case res.more && (res.published > 0 || res.failed > 0):
			fails, blocked = 0, 0 // more rows are waiting
		case res.blocked > 0:
			// Another relay holds earlier rows of keys we took: look again
			// soon, as it will not notify us when it is done; sooner after a
			// round that got something through.
			fails = 0
			blocked++
			if res.published > 0 {
				blocked = 1
			}
			if !sleep(ctx, min(backoff(blocked, blockedBackoffMin), r.poll()), wake) {
				return nil
			}
		default:
			fails, blocked = 0, 0
			if !sleep(ctx, r.poll(), wake) {
				return nil
			}
		}
	}
}

// poll is the interval at which an idle relay looks for rows.
func (r *Relay) poll() time.Duration {
	if r.cfg.PollInterval > 0 {
		return r.cfg.PollInterval
	}
	if r.Stats().Listening {
		return time.Second
	}
	return 100 * time.Millisecond
}

func (r *Relay) cleanEvery() time.Duration {
	if r.cfg.Retention < 0 {
		return 24 * time.Hour // rows are deleted when sent; nothing to clean
	}
	return min(max(r.cfg.Retention/2, 100*time.Millisecond), time.Minute)
}

// backoff is the n-th delay (n ≥ 1) of exponential steps from base up to
// backoffMax, with equal jitter: between half the step and the step.
func backoff(n int, base time.Duration) time.Duration {
	step := base
	for i := 1; i < n && step < backoffMax; i++ {
		step *= 2
	}
	step = min(step, backoffMax)
	return step/2 + rand.N(step/2+1)
}

// sleep waits d, or until wake has a value, and reports whether ctx is
// still live.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
	case <-ctx.Done():
		return false
	}
	return true
}

// poke wakes the relay's loop without blocking.
func poke(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// listen keeps a LISTEN on the outbox's channel and pokes wake on every
// notification. It runs in its own goroutine until ctx is done. While it has
// no connection, the relay polls at the shorter interval.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	ch := channel(r.o.table)
	fails := 0
	for ctx.Err() == nil {
		l, err := pgnotify.Listen(ctx, r.o.db, ch)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fails++
			d := backoff(fails, backoffMin)
			if fails == 1 {
				r.log.Warn("outbox relay: cannot LISTEN; polling meanwhile", "err", err, "retry_in", d.Round(time.Millisecond))
			}
			sleep(ctx, d, nil)
			continue
		}
		fails = 0
		r.update(func(s *RelayStats) { s.Listening = true })
		poke(wake) // rows written while nobody listened
		for {
			if err = l.Wait(ctx); err != nil {
				break
			}
			poke(wake)
		}
		l.Close()
		r.update(func(s *RelayStats) { s.Listening = false })
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("outbox relay: lost the LISTEN connection; polling meanwhile", "err", err)
		poke(wake)
	}
}

// count records the number and age of the unsent rows in the stats.
func (r *Relay) count(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	var n int64
	var lag float64
	var err error
	t := r.o.table
	if r.o.dialect == sqldb.Postgres {
		err = r.o.db.QueryRowContext(ctx, `SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 FROM `+t+` WHERE sent_at IS NULL`).Scan(&n, &lag)
	} else {
		var oldest int64
		err = r.o.db.QueryRowContext(ctx, `SELECT count(*), COALESCE(min(created_at), 0) FROM `+t+` WHERE sent_at IS NULL`).Scan(&n, &oldest)
		if n > 0 {
			lag = max(float64(time.Now().UnixMilli()-oldest)/1000, 0)
		}
	}
	if err != nil {
		return // the next round reports a database that fails
	}
	r.update(func(s *RelayStats) {
		s.Pending = n
		s.LagSeconds = lag
	})
}

// cleanup deletes sent rows older than Retention, cleanupBatch at a time,
// at most 100 batches per call.
func (r *Relay) cleanup(ctx context.Context) {
	if r.cfg.Retention < 0 {
		return
	}
	t := r.o.table
	for range 100 {
		var res sql.Result
		var err error
		cctx, cancel := context.WithTimeout(ctx, dbTimeout)
		if r.o.dialect == sqldb.Postgres {
			res, err = r.o.db.ExecContext(cctx, `DELETE FROM `+t+` WHERE id IN (SELECT id FROM `+t+
				` WHERE sent_at < now() - $1::float8 * interval '1 second' ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)`,
				r.cfg.Retention.Seconds(), cleanupBatch)
		} else {
			cutoff := time.Now().Add(-r.cfg.Retention).UnixMilli()
			res, err = r.o.db.ExecContext(cctx, `DELETE FROM `+t+` WHERE id IN (SELECT id FROM `+t+
				` WHERE sent_at < $1 ORDER BY sent_at LIMIT $2)`, cutoff, cleanupBatch)
		}
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("outbox relay: cleanup failed", "err", err)
			}
			return
		}
		n, _ := res.RowsAffected()
		r.update(func(s *RelayStats) { s.Deleted += uint64(n) })
		if n < cleanupBatch {
			return
		}
	}
}
