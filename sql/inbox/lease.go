package inbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// settleTimeout bounds the statements that end a reservation (confirm,
// release), which run even when the handler's context is done.
const settleTimeout = 10 * time.Second

// handleLease is the Lease mode: reserve, run the handler with the lease
// renewed, then confirm (success) or release (failure).
func (i *Inbox) handleLease(ctx context.Context, m *broker.Message, next consumer.Handler) error {
	key, err := i.key(m)
	if err != nil {
		return err
	}
	if i.holds(ctx, key) {
		// An enclosing inbox of this table and scope holds the key: its
		// row is not another worker's. It confirms or releases the key.
		return next.Handle(ctx, m)
	}
	if outer, ok, err := i.enclosing(ctx); err != nil {
		return err
	} else if ok {
		// Inside a Transactional inbox's transaction on the same database
		// (the same *sql.DB, or another pool to the same PostgreSQL database):
		// record the key as done in that transaction, as a Transactional
		// inbox would. Its row lock keeps concurrent duplicates out for as
		// long as a lease would, and the key commits with the enclosing
		// one and the handler's effect, or not at all. A reservation of
		// its own would wait for the enclosing transaction on SQLite.
		return i.handleInTx(ctx, outer.tx, key, m, next)
	}
	token := newToken()
	// A Wait-ing duplicate looks again after 5ms, then less and less often,
	// up to pollMin: most holders finish soon.
	poll := 5 * time.Millisecond
	for {
		// The lease is counted from before the statement that sets it, so
		// that this worker never believes its lease longer than it is.
		at := time.Now()
		st, err := i.reserve(ctx, key, token)
		if err != nil {
			return err
		}
		switch {
		case st.reserved:
			return i.runLeased(ctx, m, next, key, token, at)
		case st.done:
			return nil // handled by someone else: ack, run nothing
		case st.left <= 0:
			continue // the lease has just ended, or the row just went: try again
		}
		if i.onBusy != nil {
			i.onBusy()
		}
		if i.cfg.Busy == Requeue {
			return retry.After(fmt.Errorf("%w (key %q)", ErrBusy, key), st.left)
		}
		// Wait: look again soon, at the latest when the lease ends.
		poll = min(poll, i.pollMin)
		if !retry.Sleep(ctx, min(poll, st.left)) {
			return fmt.Errorf("inbox: waiting for key %q held by another worker: %w", key, context.Cause(ctx))
		}
		poll *= 2
	}
}

// reservation is what reserve found.
type reservation struct {
	reserved bool          // the key is now ours
	done     bool          // the key is done
	left     time.Duration // else: how long the other worker's lease lasts
}

// reserve takes key for token: a new row, or the row of an expired lease.
// Each statement commits on its own; the upsert is atomic, so of two workers
// reserving one key at once exactly one gets it.
func (i *Inbox) reserve(ctx context.Context, key, token string) (reservation, error) {
	var got string
	err := i.db.QueryRowContext(ctx, i.q.reserve, i.cfg.Scope, key, token, i.cfg.LeaseTime.Milliseconds()).Scan(&got)
	switch {
	case err == nil:
		return reservation{reserved: got == token}, nil
	case !errors.Is(err, sql.ErrNoRows):
		return reservation{}, fmt.Errorf("inbox: reserve key: %w", err)
	}
	var done bool
	var leftMS int64
	err = i.db.QueryRowContext(ctx, i.q.state, i.cfg.Scope, key).Scan(&done, &leftMS)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return reservation{}, nil // released in between: try again
	case err != nil:
		return reservation{}, fmt.Errorf("inbox: read key: %w", err)
	}
	return reservation{done: done, left: time.Duration(leftMS) * time.Millisecond}, nil
}

// runLeased runs the handler while a renewer goroutine keeps the lease, then
// confirms or releases the reservation.
func (i *Inbox) runLeased(ctx context.Context, m *broker.Message, next consumer.Handler, key, token string, at time.Time) error {
	hctx, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lost error // written by the renewer, read after wg.Wait
	wg.Add(1)
	go func() {
		defer wg.Done()
		lost = i.renew(ctx, key, token, at, stop)
		if lost != nil {
			cancel(lost) // the handler should stop: another worker may take over
		}
	}()
	// end stops the renewer and waits for it, so that nothing renews a lease
	// after it was confirmed or released. It runs on every path, a handler
	// panic (or runtime.Goexit) included: the reservation is then released
	// while the panic goes on.
	ended := false
	end := func() {
		if !ended {
			ended = true
			close(stop)
			wg.Wait()
			cancel(nil)
		}
	}
	// Not recover: the panic keeps its stack for Recover or the runtime.
	returned := false
	defer func() {
		if !returned {
			end()
			i.release(ctx, key, token)
		}
	}()

	herr := next.Handle(i.hold(hctx, key), m)
	returned = true
	end()
	if herr != nil {
		i.release(ctx, key, token)
		if lost != nil && !errors.Is(herr, ErrLeaseLost) {
			return fmt.Errorf("%w: %w", herr, lost)
		}
		return herr
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer scancel()
	res, cerr := i.db.ExecContext(sctx, i.q.confirm, i.cfg.Scope, key, token)
	if cerr != nil {
		// The key stays reserved until the lease ends; the redelivery waits
		// for that and then runs the handler again.
		return fmt.Errorf("inbox: mark key done: %w", cerr)
	}
	if n, cerr := res.RowsAffected(); cerr != nil {
		return fmt.Errorf("inbox: mark key done: %w", cerr)
	} else if n == 0 {
		// Another worker took the key over after our lease ran out. The
		// redelivery is acked once that worker is done.
		return fmt.Errorf("inbox: mark key %q done: %w", key, ErrLeaseLost)
	}
	return nil
}

// renew extends the lease every LeaseTime/3 until stop is closed. The lease
// was last set at last. It returns ErrLeaseLost (wrapped) when the row is no
// longer ours, or when renewals failed so long that the lease would end before
// the next try: the handler's context is then cancelled while the lease still
// holds, so that it can stop before another worker may take the key.
func (i *Inbox) renew(ctx context.Context, key, token string, last time.Time, stop <-chan struct{}) error {
	every := i.cfg.LeaseTime / 3
	t := time.NewTicker(every)
	defer t.Stop()
	bctx := context.WithoutCancel(ctx)
	for {
		select {
		case <-stop:
			return nil
		case <-t.C:
		}
		at := time.Now()
		// A renewal gets until the next tick, and never past
		// LeaseTime-every after the last renewal that succeeded: if it
		// fails, the handler is then told while the lease still holds
		// for about every (LeaseTime/3) more.
		deadline := at.Add(every)
		if d := last.Add(i.cfg.LeaseTime - every); d.Before(deadline) {
			deadline = d
		}
		rctx, cancel := context.WithDeadline(bctx, deadline)
		res, err := i.db.ExecContext(rctx, i.q.renew, i.cfg.LeaseTime.Milliseconds(), i.cfg.Scope, key, token)
		cancel()
		if err != nil && errors.Is(err, context.DeadlineExceeded) && i.db.Stats().MaxOpenConnections == 1 {
			err = fmt.Errorf("%w (the pool has one connection, as sqldb.Open gives SQLite, and something holds it: "+
				"a transaction of the handler's? Put a Transactional inbox outside the Lease one, not inside)", err)
		}
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		switch {
		case err == nil && n == 1:
			last = at
		case err == nil:
			return fmt.Errorf("%w: key %q was taken over", ErrLeaseLost, key)
		case time.Since(last)+every >= i.cfg.LeaseTime:
			return fmt.Errorf("%w: key %q could not be renewed: %w", ErrLeaseLost, key, err)
		}
	}
}

// release deletes our reservation, so that the redelivery can run at once;
// when that fails the key is free when the lease ends anyway.
func (i *Inbox) release(ctx context.Context, key, token string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	_, _ = i.db.ExecContext(rctx, i.q.release, i.cfg.Scope, key, token)
}

// newToken returns a random 128-bit token naming one reservation.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}
