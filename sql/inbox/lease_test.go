package inbox_test

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// A worker that reserved a key and crashed (never renewed, confirmed nor
// released it) holds it only until its lease ends: then a redelivery runs.
func TestLeaseExpiryFreesACrashedWorkersKey(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		t.Parallel()
		const lease = inbox.MinLeaseTime
		ctx := ctxT(t)
		for _, busy := range []inbox.Busy{inbox.Requeue, inbox.Wait} {
			t.Run(busy.String(), func(t *testing.T) {
				t.Parallel()
				ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, LeaseTime: lease, Busy: busy, Scope: busy.String()})
				if ok, err := inbox.Reserve(ctx, ib, "order-1", "crashed-worker"); err != nil || !ok {
					t.Fatalf("Reserve = %v, %v; want true, nil", ok, err)
				}
				var runs atomic.Int32
				h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					runs.Add(1)
					return nil
				}))
				for {
					err := h.Handle(ctx, msg("order-1"))
					if err == nil {
						break
					}
					if busy == inbox.Wait || !errors.Is(err, inbox.ErrBusy) {
						t.Fatalf("Handle = %v", err)
					}
					after, ok := retry.RetryAfter(err)
					if !ok || after <= 0 || after > lease {
						t.Fatalf("busy: retry after %v (%v); want a delay in (0, %v]", after, ok, lease)
					}
					if !retry.Sleep(ctx, after) {
						t.Fatal("the crashed worker's key was never freed")
					}
				}
				if got := runs.Load(); got != 1 {
					t.Errorf("runs = %d; want 1", got)
				}
				// Done now: the next duplicate is acked without running.
				if err := h.Handle(ctx, msg("order-1")); err != nil || runs.Load() != 1 {
					t.Errorf("duplicate: Handle = %v, runs = %d; want nil, 1", err, runs.Load())
				}
			})
		}
	})
}

// holder runs a Lease-mode handler that holds key until release is closed,
// and returns when the handler has started and a channel with its result.
func holder(t *testing.T, ib *inbox.Inbox, key string, release <-chan struct{}, hctx *context.Context) <-chan error {
	t.Helper()
	started := make(chan struct{})
	done := make(chan error, 1)
	h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if hctx != nil {
			*hctx = ctx
		}
		close(started)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}))
	go func() { done <- h.Handle(ctxT(t), msg(key)) }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("holder returned before its handler started: %v", err)
	}
	return done
}

// A duplicate that finds the key held waits (Wait) until the holder is done,
// then is acked without running.
func TestLeaseBusyWait(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, Busy: inbox.Wait})
		busy := make(chan struct{}, 100)
		inbox.SetBusyHook(ib, func() { busy <- struct{}{} })
		release := make(chan struct{})
		held := holder(t, ib, "order-1", release, nil)

		var runs atomic.Int32
		dup := make(chan error, 1)
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs.Add(1)
			return nil
		}))
		go func() { dup <- h.Handle(ctxT(t), msg("order-1")) }()
		<-busy // the duplicate found the key held and waits
		select {
		case err := <-dup:
			t.Fatalf("the duplicate returned %v while the key was held; want it to wait", err)
		default:
		}
		close(release)
		if err := <-held; err != nil {
			t.Fatalf("holder: %v", err)
		}
		if err := <-dup; err != nil || runs.Load() != 0 {
			t.Errorf("duplicate: Handle = %v, runs %d; want nil (acked), 0", err, runs.Load())
		}

		// A waiting duplicate gives up with its context.
		release2 := make(chan struct{})
		held2 := holder(t, ib, "order-2", release2, nil)
		wctx, cancel := context.WithCancel(ctxT(t))
		go func() { dup <- h.Handle(wctx, msg("order-2")) }()
		<-busy
		cancel()
		if err := <-dup; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter: Handle = %v; want context.Canceled", err)
		}
		close(release2)
		if err := <-held2; err != nil {
			t.Fatal(err)
		}
	})
}

// With Requeue, a duplicate that finds the key held returns ErrBusy with
// retry.After the rest of the lease, not permanent.
func TestLeaseBusyRequeue(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		const lease = 10 * time.Second
		ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, Busy: inbox.Requeue, LeaseTime: lease})
		release := make(chan struct{})
		held := holder(t, ib, "order-1", release, nil)
		ran := false
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { ran = true; return nil }))
		err := h.Handle(ctxT(t), msg("order-1"))
		after, ok := retry.RetryAfter(err)
		if !errors.Is(err, inbox.ErrBusy) || retry.IsPermanent(err) || !ok || after <= 0 || after > lease || ran {
			t.Errorf("Handle = %v (retry after %v, %v), ran %v; want ErrBusy after (0, %v], not run", err, after, ok, ran, lease)
		}
		close(release)
		if err := <-held; err != nil {
			t.Fatal(err)
		}
		if err := h.Handle(ctxT(t), msg("order-1")); err != nil || ran {
			t.Errorf("after the holder: Handle = %v, ran %v; want nil, false", err, ran)
		}
	})
}

// A handler that runs for longer than its lease keeps its key: the lease is
// renewed while it runs. The lease is wide (renewals every second, each
// with two seconds to spare) so that a loaded machine does not lose it.
func TestLeaseIsRenewedWhileTheHandlerRuns(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		t.Parallel()
		const lease = 3 * time.Second
		ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, Busy: inbox.Requeue, LeaseTime: lease})
		release := make(chan struct{})
		var hctx context.Context
		start := time.Now()
		held := holder(t, ib, "order-1", release, &hctx)
		ran := false
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { ran = true; return nil }))
		for time.Since(start) < lease+lease/2 {
			err := h.Handle(ctxT(t), msg("order-1"))
			if !errors.Is(err, inbox.ErrBusy) {
				t.Fatalf("after %v (lease %v): Handle = %v; want ErrBusy", time.Since(start).Round(time.Millisecond), lease, err)
			}
			time.Sleep(lease / 4)
		}
		close(release)
		if err := <-held; err != nil {
			t.Fatalf("holder = %v; want nil (lease kept)", err)
		}
		if err := h.Handle(ctxT(t), msg("order-1")); err != nil || ran {
			t.Errorf("after the holder: Handle = %v, ran %v; want nil, false", err, ran)
		}
	})
}

// A holder whose reservation was taken over has its context cancelled with
// ErrLeaseLost, and its success is not recorded as done by it.
func TestLeaseLostCancelsTheHandler(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, LeaseTime: inbox.MinLeaseTime})
		var hctx context.Context
		held := holder(t, ib, "order-1", make(chan struct{}), &hctx)
		// Another worker took the key over (as after a lease that ran out).
		if _, err := db.Exec(`UPDATE queuekit_inbox SET lease_token = 'other-worker' WHERE key = 'order-1'`); err != nil {
			t.Fatal(err)
		}
		err := <-held
		if !errors.Is(err, inbox.ErrLeaseLost) || !errors.Is(context.Cause(hctx), inbox.ErrLeaseLost) {
			t.Errorf("Handle = %v, handler context cause %v; want ErrLeaseLost for both", err, context.Cause(hctx))
		}
		var token sql.NullString
		if err := db.QueryRow(`SELECT lease_token FROM queuekit_inbox WHERE key = 'order-1'`).Scan(&token); err != nil || token.String != "other-worker" {
			t.Errorf("row after the lost lease: token %v, %v; want the other worker's, untouched", token, err)
		}
	})
}

// A failed handler releases its reservation at once: the redelivery runs
// without waiting for the lease.
func TestLeaseFailureReleasesTheKey(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease, Busy: inbox.Requeue, LeaseTime: time.Hour})
		errBoom := errors.New("boom")
		runs := 0
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs++
			if runs == 1 {
				return errBoom
			}
			return nil
		}))
		if err := h.Handle(ctxT(t), msg("order-1")); !errors.Is(err, errBoom) {
			t.Fatalf("Handle = %v; want the handler's error", err)
		}
		if got := inboxRows(t, db); got != 0 {
			t.Errorf("rows after a failure = %d; want 0 (released)", got)
		}
		if err := h.Handle(ctxT(t), msg("order-1")); err != nil || runs != 2 {
			t.Errorf("redelivery: Handle = %v, runs %d; want nil, 2", err, runs)
		}
		var done bool
		if err := db.QueryRow(`SELECT done_at IS NOT NULL FROM queuekit_inbox WHERE key = 'order-1'`).Scan(&done); err != nil || !done {
			t.Errorf("row after success: done %v, %v; want true", done, err)
		}
	})
}
