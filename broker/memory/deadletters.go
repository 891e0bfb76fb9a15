package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// dlqSuffix ends the name of every dead-letter queue (see DeadLetterQueue).
const dlqSuffix = ".dlq"

func isDeadLetterQueue(name string) bool {
	return len(name) > len(dlqSuffix) && strings.HasSuffix(name, dlqSuffix)
}

// deadRecord is one dead letter of a dead-letter queue. Its fields but
// removed are set when it is recorded and never written again, so they are
// read without the lock; removed, and the record list holding it, are
// guarded by Broker.mu.
type deadRecord struct {
	seq       uint64 // orders the records; the List cursor is the last seq of a page
	id        string // "<dlq>-<seq>": DeadLetter.ID
	msg       broker.Message
	reason    broker.Reason
	hasReason bool
	// e is the message in the dead-letter queue itself, taken out of it
	// with the record if it is still waiting there.
	e *entry
	// removed is set, under Broker.mu, when the record is redriven or
	// purged; the record leaves the list at the next compaction (see
	// queue.compactDead).
	removed bool
}

// recordDead records m, whose message in q is e, as a dead letter of q.
// The caller holds b.mu.
func (q *queue) recordDead(e *entry, m broker.Message) {
	q.deadSeq++
	r := &deadRecord{seq: q.deadSeq, id: q.name + "-" + strconv.FormatUint(q.deadSeq, 10), msg: m, e: e}
	r.reason, r.hasReason = broker.ParseReason(m.Header)
	q.dead = append(q.dead, r)
}

// view returns the dead letter as List shows it, its body cut to bodyLimit.
func (r *deadRecord) view(bodyLimit int) broker.DeadLetter {
	d := broker.DeadLetter{
		ID:        r.id,
		Message:   r.msg, // shallow: cut first, then copied below
		Reason:    r.reason,
		HasReason: r.hasReason,
		Partition: -1,
		Offset:    -1,
		Redriven:  broker.Redriven(r.msg.Header),
	}
	broker.CutBody(&d, bodyLimit)
	d.Message = copyMessage(&d.Message)
	return d
}

// DeadLettersOf returns the dead letters of queue: the records of its
// dead-letter queue DeadLetterQueue(queue), to browse, redrive and purge (see
// broker.DeadLetters and Broker.DeadLetters). It is what Source.DeadLetters
// returns for the source's queue. It creates no queue; a queue that never had
// a dead letter has none.
//
// Each dead letter gets an id when it enters the dead-letter queue, by
// Delivery.DeadLetter or by a Publish to DeadLetterQueue(queue) directly (a
// dead letter written by someone else, which may have no reason headers):
// "<queue>.dlq-<n>", n counting from 1 per dead-letter queue and never reused.
//
// List pages through them oldest first; its cursor is opaque. Partition and
// Offset are -1. Listing and counting change nothing, and work after
// Broker.Close too.
//
// Redrive publishes a copy of each selected dead letter to queue (or to
// RedriveOptions.Destination), with the headers of broker.RedriveHeader and
// a fresh delivery budget: its next delivery has Attempt 1. The copy keeps
// the message's ID, Key and Body; its Time is the time of the redrive. Only
// then is the dead letter removed from the record and, if it is still
// waiting there, from the dead-letter queue; a copy being consumed from the
// dead-letter queue at that moment is not taken back from its consumer.
// Headers do not choose where a redrive writes: without a Destination, a
// dead letter is skipped, and stays, with an error wrapping
// broker.ErrNoSource when its reason names another queue than queue, or
// none (it has no reason headers), or when queue does not exist (it was
// never published to, consumed from or dead-lettered from: memory queues
// are created on first use and never deleted). It is skipped with an error
// wrapping broker.ErrRedriveLimit when its broker.HeaderRedriven count
// reached the limit. A Destination that does not exist is refused with an
// error wrapping broker.ErrNoSource, and DeadLetterQueue(queue) with one
// wrapping broker.ErrInvalidConfig, before anything is sent (dry run or
// not): a redrive creates no queue.
//
// List, Count, Redrive and Purge walk the record a chunk at a time, holding
// the broker's lock (which every Publish and Receive waits for) for one
// chunk only, and check ctx between chunks: when it ends they return its
// error, Redrive and Purge with what they did before. A long id list costs
// O(ids) once per call (broker.DeadLetterFilter.Matcher). Each dead letter
// is redriven or purged under the lock, so concurrent calls never handle
// one dead letter twice: one selected by id that another call took first is
// in Missing.
//
// Purge removes the selected dead letters from the record and, if they are
// still waiting there, from the dead-letter queue. RedriveOptions.DryRun and
// Purge's dryRun report what would be done and change nothing.
//
// Ids that are not dead letters of the queue are in the result's Missing, and
// the error wraps broker.ErrDeadLetterNotFound; the other selected ids are
// handled all the same. A selection that selects nothing by intent returns an
// error wrapping broker.ErrEmptySelection. Redrive and Purge return
// ErrBrokerClosed after Broker.Close (or, when it closes during the call,
// with what they did before). No method blocks.
//
// An empty queue name gives a DeadLetters whose methods return an error
// wrapping broker.ErrInvalidConfig.
func (b *Broker) DeadLettersOf(queue string) broker.DeadLetters {
	return &deadLetters{b: b, queue: queue}
}

// DeadLetters returns the dead letters of the source's queue, as
// Broker.DeadLettersOf does. It implements broker.DeadLetterSource, and
// works after Close too.
func (s *Source) DeadLetters() broker.DeadLetters { return s.b.DeadLettersOf(s.q.name) }

var _ broker.DeadLetterSource = (*Source)(nil)

// deadLetters implements broker.DeadLetters on the dead-letter queue of
// queue. It holds no state of its own: every call reads the broker, under
// its lock a chunk at a time.
type deadLetters struct {
	b     *Broker
	queue string
}

func (d *deadLetters) check(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.queue == "" {
		return fmt.Errorf("memory: dead letters: %s: %w: empty queue name", op, broker.ErrInvalidConfig)
	}
	return nil
}

// scanChunk is how many records a walk of the record looks at per hold of
// the broker's lock; the context is checked between chunks, without the
// lock.
const scanChunk = 256

// dlq returns the dead-letter queue, nil when it was never used. The caller
// holds b.mu.
func (d *deadLetters) dlq() *queue { return d.b.queues[DeadLetterQueue(d.queue)] }

// scan calls fn with each record that is still a dead letter, oldest first,
// until fn returns false. It takes the broker's lock for one chunk of
// records at a time and calls fn without it (fn reads only the fields of a
// record that never change), and returns ctx's error when ctx ends before
// the walk does. Records recorded during the walk are seen; a record removed
// during the walk may still be passed to fn.
func (d *deadLetters) scan(ctx context.Context, fn func(r *deadRecord) bool) error {
	var after uint64
	buf := make([]*deadRecord, 0, scanChunk)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf = buf[:0]
		end := true
		d.b.mu.Lock()
		if q := d.dlq(); q != nil {
			recs := q.dead
			i, _ := slices.BinarySearchFunc(recs, after+1, func(r *deadRecord, seq uint64) int { return cmp.Compare(r.seq, seq) })
			for n := 0; i < len(recs) && n < scanChunk; i, n = i+1, n+1 {
				after = recs[i].seq
				if !recs[i].removed {
					buf = append(buf, recs[i])
				}
			}
			end = i == len(recs)
		}
		d.b.mu.Unlock()
		for _, r := range buf {
			if !fn(r) {
				return nil
			}
		}
		if end {
			return nil
		}
	}
}

// List implements broker.DeadLetters.
func (d *deadLetters) List(ctx context.Context, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	if err := d.check(ctx, "list"); err != nil {
		return broker.DeadLetterPage{}, err
	}
	if err := q.Resolve(); err != nil {
		return broker.DeadLetterPage{}, fmt.Errorf("memory: dead letters of %q: %w", d.queue, err)
	}
	var after uint64
	if q.Cursor != "" {
		n, err := strconv.ParseUint(q.Cursor, 10, 64)
		if err != nil {
			return broker.DeadLetterPage{}, fmt.Errorf("memory: dead letters of %q: %w: cursor %q is not one List returned", d.queue, broker.ErrInvalidConfig, q.Cursor)
		}
		after = n
	}
	page := broker.DeadLetterPage{Items: []broker.DeadLetter{}}
	match := q.Matcher()
	err := d.scan(ctx, func(r *deadRecord) bool {
		if r.seq <= after || !match(r.match()) {
			return true
		}
		if len(page.Items) == q.Limit {
			// One more matches: there is a next page, which starts after
			// the last item of this one.
			page.Next = strconv.FormatUint(after, 10)
			return false
		}
		page.Items = append(page.Items, r.view(q.BodyLimit))
		after = r.seq
		return true
	})
	if err != nil {
		return broker.DeadLetterPage{}, err
	}
	return page, nil
}

// Count implements broker.DeadLetters.
func (d *deadLetters) Count(ctx context.Context, f broker.DeadLetterFilter) (int, error) {
	if err := d.check(ctx, "count"); err != nil {
		return 0, err
	}
	if f.IsZero() {
		d.b.mu.Lock()
		defer d.b.mu.Unlock()
		if q := d.dlq(); q != nil {
			return len(q.dead) - q.deadRemoved, nil
		}
		return 0, nil
	}
	n := 0
	match := f.Matcher()
	err := d.scan(ctx, func(r *deadRecord) bool {
		if match(r.match()) {
			n++
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// match returns the part of the dead letter that a filter looks at.
func (r *deadRecord) match() *broker.DeadLetter {
	return &broker.DeadLetter{ID: r.id, Reason: r.reason, HasReason: r.hasReason}
}

// selectRecords returns the records sel selects, oldest first, and the ids of
// sel that are not dead letters, walking the record with scan. The records
// may be removed by a concurrent call before the caller acts on them: it
// checks under the lock.
func (d *deadLetters) selectRecords(ctx context.Context, sel broker.DeadLetterSelection) (picked []*deadRecord, missing []string, err error) {
	// The ids in a set of their own, which also records which were found;
	// the rest of the filter as every adapter matches it.
	var found map[string]bool
	if len(sel.IDs) > 0 {
		found = make(map[string]bool, len(sel.IDs))
		for _, id := range sel.IDs {
			found[id] = false
		}
	}
	rest := sel.DeadLetterFilter
	rest.IDs = nil
	match := rest.Matcher()
	err = d.scan(ctx, func(r *deadRecord) bool {
		if found != nil {
			if _, ok := found[r.id]; !ok {
				return true
			}
			found[r.id] = true
		}
		if sel.Max > 0 && len(picked) == sel.Max {
			return found != nil // go on only to find the other ids
		}
		if match(r.match()) {
			picked = append(picked, r)
		}
		return true
	})
	if err != nil {
		return nil, nil, err
	}
	for _, id := range sel.IDs {
		if ok, seen := found[id]; seen && !ok {
			missing = append(missing, id)
			found[id] = true // once
		}
	}
	return picked, missing, nil
}

// removeRecords takes rs out of the record of q, their dead-letter queue,
// and, those still waiting there, out of the queue itself (one pass over
// it). The caller holds b.mu.
func (q *queue) removeRecords(rs []*deadRecord) {
	if len(rs) == 0 {
		return
	}
	set := make(map[*entry]bool, len(rs))
	for _, r := range rs {
		r.removed = true
		q.deadRemoved++
		set[r.e] = true
	}
	q.ready.removeSet(set)
	for e := range set { // not ready: handed out, or waiting out a delay
		if _, ok := q.delayed[e]; ok {
			e.timer.Stop()
			delete(q.delayed, e)
		}
	}
}

// compactDead drops removed records from q.dead once they are half of it,
// so that the record costs O(dead letters) whatever was removed. The caller
// holds b.mu.
func (q *queue) compactDead() {
	if q.deadRemoved == 0 || 2*q.deadRemoved < len(q.dead) {
		return
	}
	kept := q.dead[:0]
	for _, r := range q.dead {
		if !r.removed {
			kept = append(kept, r)
		}
	}
	clear(q.dead[len(kept):])
	q.dead = kept
	q.deadRemoved = 0
}

// act calls fn, under the broker's lock, with each of picked that is still a
// dead letter, then removes it; a chunk of them at a time, checking ctx and
// Close between chunks. A picked record removed meanwhile by another call is
// added to res.Missing when the selection named ids (it was selected by its
// id).
func (d *deadLetters) act(ctx context.Context, picked []*deadRecord, byID bool, res *broker.DeadLetterResult, fn func(q *queue, r *deadRecord)) error {
	b := d.b
	for len(picked) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := picked[:min(len(picked), scanChunk)]
		picked = picked[len(chunk):]
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return ErrBrokerClosed
		}
		q := d.dlq()
		done := make([]*deadRecord, 0, len(chunk))
		for _, r := range chunk {
			if r.removed {
				if byID {
					res.Missing = append(res.Missing, r.id)
				}
				continue
			}
			fn(q, r)
			done = append(done, r)
		}
		q.removeRecords(done)
		q.compactDead()
		b.mu.Unlock()
	}
	return nil
}

// Redrive implements broker.DeadLetters.
func (d *deadLetters) Redrive(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	res := broker.DeadLetterResult{Done: []string{}, DryRun: opts.DryRun}
	if err := d.check(ctx, "redrive"); err != nil {
		return res, err
	}
	if err := sel.Check(); err != nil {
		return res, fmt.Errorf("memory: redrive dead letters of %q: %w", d.queue, err)
	}
	limit := opts.Limit()
	b := d.b
	dest := opts.Destination
	b.mu.Lock()
	closed := b.closed
	srcExists := b.queues[d.queue] != nil
	destExists := dest == "" || b.queues[dest] != nil
	b.mu.Unlock()
	switch {
	case closed:
		return res, ErrBrokerClosed
	case dest == DeadLetterQueue(d.queue):
		return res, fmt.Errorf("memory: redrive dead letters of %q: %w: Destination %q is their dead-letter queue", d.queue, broker.ErrInvalidConfig, dest)
	case !destExists:
		return res, fmt.Errorf("memory: redrive dead letters of %q: Destination queue %q does not exist: %w", d.queue, dest, broker.ErrNoSource)
	}
	if dest == "" {
		dest = d.queue
	}
	picked, missing, err := d.selectRecords(ctx, sel)
	if err != nil {
		return res, err
	}
	res.Missing = missing
	// What to do with each is known from the record alone: whether it is
	// skipped, and why, does not depend on the lock.
	var send []*deadRecord
	for _, r := range picked {
		if n := broker.Redriven(r.msg.Header); limit >= 0 && n >= limit {
			res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
				fmt.Errorf("memory: dead letter %s was redriven %d times (limit %d): %w", r.id, n, limit, broker.ErrRedriveLimit)))
			continue
		}
		if opts.Destination == "" {
			switch {
			case !r.hasReason || r.reason.Source == "":
				res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
					fmt.Errorf("memory: dead letter %s has no %s header: %w", r.id, broker.HeaderSource, broker.ErrNoSource)))
				continue
			case r.reason.Source != d.queue:
				// Headers do not choose where a redrive writes.
				res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
					fmt.Errorf("memory: dead letter %s of %q names another source, %q; give a Destination to send it there: %w", r.id, d.queue, r.reason.Source, broker.ErrNoSource)))
				continue
			case !srcExists:
				res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
					fmt.Errorf("memory: dead letter %s: source queue %q does not exist: %w", r.id, d.queue, broker.ErrNoSource)))
				continue
			}
		}
		send = append(send, r)
	}
	if opts.DryRun {
		for _, r := range send {
			res.Done = append(res.Done, r.id)
		}
		return res, res.Err()
	}
	err = d.act(ctx, send, len(sel.IDs) > 0, &res, func(dq *queue, r *deadRecord) {
		// The copy is in its queue before the dead letter is removed (both
		// under b.mu, so no one sees one without the other).
		now := time.Now()
		m := copyMessage(&r.msg)
		m.Topic = dest
		m.Attempt = 0
		m.Time = now
		m.Header = broker.RedriveHeader(r.msg.Header, r.id, now)
		q := b.queue(dest)
		q.stats.Published++
		e := &entry{msg: m}
		q.ready.pushBack(e)
		if isDeadLetterQueue(dest) {
			q.recordDead(e, m)
		}
		q.wake()
		dq.stats.Redriven++
		res.Done = append(res.Done, r.id)
	})
	if err != nil {
		return res, err
	}
	return res, res.Err()
}

// Purge implements broker.DeadLetters.
func (d *deadLetters) Purge(ctx context.Context, sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	res := broker.DeadLetterResult{Done: []string{}, DryRun: dryRun}
	if err := d.check(ctx, "purge"); err != nil {
		return res, err
	}
	if err := sel.Check(); err != nil {
		return res, fmt.Errorf("memory: purge dead letters of %q: %w", d.queue, err)
	}
	d.b.mu.Lock()
	closed := d.b.closed
	d.b.mu.Unlock()
	if closed {
		return res, ErrBrokerClosed
	}
	picked, missing, err := d.selectRecords(ctx, sel)
	if err != nil {
		return res, err
	}
	res.Missing = missing
	if dryRun {
		for _, r := range picked {
			res.Done = append(res.Done, r.id)
		}
		return res, res.Err()
	}
	err = d.act(ctx, picked, len(sel.IDs) > 0, &res, func(dq *queue, r *deadRecord) {
		dq.stats.Purged++
		res.Done = append(res.Done, r.id)
	})
	if err != nil {
		return res, err
	}
	return res, res.Err()
}
