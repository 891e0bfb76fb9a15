package sqlqueue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Delivery states.
const (
	statePending int32 = iota
	stateSettling
	stateSettled
	stateStale
)

// delivery is one claimed row: its id and the token of the claim that
// leased it. Every settlement acts only on the row with that token, so a
// delivery whose lease another source took over cannot touch the row.
type delivery struct {
	src   *Source
	id    int64
	token string
	msg   broker.Message
	state atomic.Int32
	// lease ends when the delivery goes stale or is settled, or the
	// source closes, or its fence passes.
	lease       context.Context
	cancelCause context.CancelCauseFunc
	// fence is when the lease may end in the database, less a margin, in
	// nanoseconds of the source's monotonic clock (see Source.mono): the
	// start of the last statement that leased or renewed the row, plus
	// Visibility, minus fenceMargin. fenceTimer ends the lease then,
	// whether renewals succeed or not.
	fence      atomic.Int64
	fenceTimer *time.Timer
}

var (
	_ broker.Delivery        = (*delivery)(nil)
	_ broker.Releaser        = (*delivery)(nil)
	_ broker.DelayedRequeuer = (*delivery)(nil)
	_ broker.Leased          = (*delivery)(nil)
)

// newDelivery makes the delivery of a row claimed by the statement that
// started at sent (by s.mono).
func (s *Source) newDelivery(r *stored, token string, sent time.Duration) *delivery {
	d := &delivery{src: s, id: r.id, token: token, msg: r.message(s.queue)}
	d.lease, d.cancelCause = context.WithCancelCause(s.ctx)
	d.fence.Store(int64(sent + s.vis - s.fenceMargin()))
	// Set before it can fire: checkFence uses it.
	d.fenceTimer = time.AfterFunc(time.Hour, d.checkFence)
	d.fenceTimer.Reset(time.Duration(d.fence.Load()) - s.mono())
	return d
}

// live reports whether d is neither stale nor settled and its fence has not
// passed: whether it may be handed out, and its lease renewed. A delivery
// being settled is live: its settlement may fail.
func (d *delivery) live() bool {
	st := d.state.Load()
	return (st == statePending || st == stateSettling) && time.Duration(d.fence.Load()) > d.src.mono()
}

// cancel ends the lease context: the delivery is stale or settled.
func (d *delivery) cancel() {
	d.fenceTimer.Stop()
	d.cancelCause(broker.ErrStaleDelivery)
}

// extend moves the fence to the lease of a renewal sent at sent (by
// s.mono), which the database confirmed.
func (d *delivery) extend(sent time.Duration) {
	f := int64(sent + d.src.vis - d.src.fenceMargin())
	for {
		old := d.fence.Load()
		if f <= old || d.fence.CompareAndSwap(old, f) {
			return
		}
	}
}

// checkFence runs when the fence timer fires: if the fence moved (a
// renewal succeeded meanwhile) it waits for the new one, else the lease
// may have ended in the database and another source may hold the row: the
// delivery is stale, its Lease context ends with cause
// broker.ErrStaleDelivery, and the source stops renewing it.
func (d *delivery) checkFence() {
	if d.lease.Err() != nil {
		return
	}
	s := d.src
	if left := time.Duration(d.fence.Load()) - s.mono(); left > 0 {
		d.fenceTimer.Reset(left)
		return
	}
	if d.state.CompareAndSwap(statePending, stateStale) {
		s.log.Warn("sqlqueue: a delivery's lease ran out before it could be renewed (the database was unreachable or slow): it is stale and its message is delivered again",
			"table", s.table, "queue", s.queue, "id", d.id, "message_id", d.msg.ID)
		s.forget(d)
		return
	}
	// A settlement is under way: it succeeds only if the row is still
	// ours; the handler's work must stop either way.
	d.cancelCause(broker.ErrStaleDelivery)
}

func (d *delivery) Message() *broker.Message { return &d.msg }

// Lease returns a context that ends when the delivery goes stale (its lease
// was lost, or ran out by the local clock before a renewal reached the
// database, or its source closed with it unsettled) or is settled, with
// cause broker.ErrStaleDelivery: the
// runtime then cancels the handler's context with cause
// broker.ErrStaleDelivery.
func (d *delivery) Lease() context.Context { return d.lease }

// Ack deletes the row.
func (d *delivery) Ack(ctx context.Context) error {
	return d.exec(ctx, "ack", d.src.q.ack, d.id, d.token)
}

// Requeue ends the lease: the row is ready again at once, at its place in
// the queue (it keeps the time it became available), and its next delivery
// has Attempt+1.
func (d *delivery) Requeue(ctx context.Context) error {
	err := d.exec(ctx, "requeue", d.src.q.requeue, d.id, d.token)
	if err == nil {
		d.src.wakeAll()
	}
	return err
}

// Release ends the lease without counting the delivery: the next delivery of
// the row has the same Attempt as this one.
func (d *delivery) Release(ctx context.Context) error {
	err := d.exec(ctx, "release", d.src.q.release, d.id, d.token)
	if err == nil {
		d.src.wakeAll()
	}
	return err
}

// RequeueAfter ends the lease and makes the row available again after delay,
// by the database's clock, behind the rows ready by then. delay <= 0 is
// Requeue.
func (d *delivery) RequeueAfter(ctx context.Context, delay time.Duration) error {
	if delay <= 0 {
		return d.Requeue(ctx)
	}
	err := d.exec(ctx, "requeue after", d.src.q.requeueAfter, delay.Microseconds(), d.id, d.token)
	if err == nil {
		s := d.src
		due := time.Now().Add(delay)
		s.mu.Lock()
		if s.due.IsZero() || due.Before(s.due) {
			s.due = due
		}
		s.broadcast()
		s.mu.Unlock()
	}
	return err
}

// DeadLetter moves the row to the dead-letter table in one transaction,
// with the reason in its headers (broker.Reason.Header, over the headers it
// was published with). A reason without Source gets the queue's name, one
// without Attempts the row's delivery count.
func (d *delivery) DeadLetter(ctx context.Context, reason broker.Reason) error {
	if err := d.begin(); err != nil {
		return err
	}
	err := d.deadLetter(ctx, reason)
	d.end(err)
	if err != nil {
		return fmt.Errorf("sqlqueue: dead-letter %s: %w", d.msg.ID, err)
	}
	return nil
}

func (d *delivery) deadLetter(ctx context.Context, reason broker.Reason) error {
	s := d.src
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var r stored
	err = tx.QueryRowContext(ctx, s.q.takeDead, d.id, d.token).
		Scan(&r.queue, &r.msgID, &r.key, &r.headers, &r.body, &r.created, &r.attempts)
	if errors.Is(err, sql.ErrNoRows) {
		return errStale
	}
	if err != nil {
		return err
	}
	var h map[string]string
	if r.headers != "" && r.headers != "null" {
		_ = json.Unmarshal([]byte(r.headers), &h)
	}
	if reason.Source == "" {
		reason.Source = r.queue
	}
	if reason.Attempts == 0 {
		reason.Attempts = r.attempts
	}
	hj, err := json.Marshal(reason.Header(h))
	if err != nil {
		return err
	}
	if r.body == nil {
		r.body = []byte{}
	}
	if r.msgID == "" {
		r.msgID = d.msg.ID // the id the delivery had, "<queue>-<row id>"
	}
	if _, err := tx.ExecContext(ctx, s.q.insertDead, r.queue, r.msgID, r.key, string(hj), r.body, r.created, r.attempts); err != nil {
		return err
	}
	return tx.Commit()
}

// errStale is what a settlement statement that matched no row returns
// internally: the row is not ours any more.
var errStale = broker.ErrStaleDelivery

// begin moves a pending delivery to settling, or says why it cannot.
func (d *delivery) begin() error {
	if d.state.CompareAndSwap(statePending, stateSettling) {
		return nil
	}
	if d.state.Load() == stateStale {
		// Whoever made it stale, it holds no prefetch slot any more.
		d.src.forget(d)
		return fmt.Errorf("sqlqueue: message %s: %w", d.msg.ID, broker.ErrStaleDelivery)
	}
	return fmt.Errorf("sqlqueue: message %s: %w", d.msg.ID, broker.ErrAlreadySettled)
}

// end finishes a settlement begun with begin: done, stale (the row was not
// ours any more), or failed (pending again, so that it can be retried).
func (d *delivery) end(err error) {
	switch {
	case err == nil:
		d.state.Store(stateSettled)
		d.src.forget(d)
	case errors.Is(err, broker.ErrStaleDelivery):
		d.state.Store(stateStale)
		d.src.forget(d)
	default:
		d.state.Store(statePending)
		// Its fence passed during the settlement (checkFence saw it
		// settling): stale now, no longer held nor renewed.
		if time.Duration(d.fence.Load()) <= d.src.mono() && d.state.CompareAndSwap(statePending, stateStale) {
			d.src.forget(d)
		}
	}
}

// exec runs one settlement statement on the row, which must match it.
func (d *delivery) exec(ctx context.Context, what, query string, args ...any) error {
	if err := d.begin(); err != nil {
		return err
	}
	res, err := d.src.db.ExecContext(ctx, query, args...)
	if err == nil {
		var n int64
		if n, err = res.RowsAffected(); err == nil && n == 0 {
			err = errStale
		}
	}
	d.end(err)
	if err != nil {
		return fmt.Errorf("sqlqueue: %s %s: %w", what, d.msg.ID, err)
	}
	return nil
}
