package memory

import (
	"context"
	"fmt"
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

// deadRecord is one dead letter of a dead-letter queue. Its fields are set
// when it is recorded and never written again; the record list holding it
// is guarded by Broker.mu.
type deadRecord struct {
	seq       uint64 // orders the records; the List cursor is the last seq of a page
	id        string // "<dlq>-<seq>": DeadLetter.ID
	msg       broker.Message
	reason    broker.Reason
	hasReason bool
	// e is the message in the dead-letter queue itself, taken out of it
	// with the record if it is still waiting there.
	e *entry
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
// Redrive publishes a copy of each selected dead letter to the queue named by
// its reason's Source (or RedriveOptions.Destination), with the headers of
// broker.RedriveHeader and a fresh delivery budget: its next delivery has
// Attempt 1. The copy keeps the message's ID, Key and Body; its Time is the
// time of the redrive. Only then is the dead letter removed from the record
// and, if it is still waiting there, from the dead-letter queue; a copy being
// consumed from the dead-letter queue at that moment is not taken back from
// its consumer. The memory broker does all of a call's work under its lock,
// so a Redrive or Purge is atomic: concurrent calls never handle one dead
// letter twice. A dead letter is skipped, and stays, with an error wrapping
// broker.ErrRedriveLimit when its broker.HeaderRedriven count reached the
// limit, and with one wrapping broker.ErrNoSource when it has no reason
// headers or its source queue does not exist (it was never published to,
// consumed from or dead-lettered from: memory queues are created on first
// use and never deleted) and no Destination is given.
//
// Purge removes the selected dead letters from the record and, if they are
// still waiting there, from the dead-letter queue. RedriveOptions.DryRun and
// Purge's dryRun report what would be done and change nothing.
//
// Ids that are not dead letters of the queue are in the result's Missing, and
// the error wraps broker.ErrDeadLetterNotFound; the other selected ids are
// handled all the same. A selection that selects nothing by intent returns an
// error wrapping broker.ErrEmptySelection. Redrive and Purge return
// ErrBrokerClosed after Broker.Close. Every method returns ctx's error if ctx
// is done when it is called; none blocks.
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
// queue. It holds no state of its own: every call reads the broker under
// its lock.
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

// records returns the dead-letter queue's records. The caller holds b.mu;
// the slice must not be kept after it is released.
func (d *deadLetters) records() []*deadRecord {
	q := d.b.queues[DeadLetterQueue(d.queue)]
	if q == nil {
		return nil
	}
	return q.dead
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
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	for _, r := range d.records() {
		if r.seq <= after {
			continue
		}
		if !q.Match(r.match()) {
			continue
		}
		if len(page.Items) == q.Limit {
			// One more matches: there is a next page, which starts after
			// the last item of this one.
			page.Next = strconv.FormatUint(after, 10)
			break
		}
		page.Items = append(page.Items, r.view(q.BodyLimit))
		after = r.seq
	}
	return page, nil
}

// Count implements broker.DeadLetters.
func (d *deadLetters) Count(ctx context.Context, f broker.DeadLetterFilter) (int, error) {
	if err := d.check(ctx, "count"); err != nil {
		return 0, err
	}
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	n := 0
	for _, r := range d.records() {
		if f.IsZero() || f.Match(r.match()) {
			n++
		}
	}
	return n, nil
}

// match returns the part of the dead letter that a filter looks at.
func (r *deadRecord) match() *broker.DeadLetter {
	return &broker.DeadLetter{ID: r.id, Reason: r.reason, HasReason: r.hasReason}
}

// selectRecords returns the records sel selects, oldest first, and the ids of
// sel that are not dead letters. The caller holds b.mu.
func (d *deadLetters) selectRecords(sel broker.DeadLetterSelection) (picked []*deadRecord, missing []string) {
	recs := d.records()
	for _, r := range recs {
		if sel.Max > 0 && len(picked) == sel.Max {
			break
		}
		if sel.Match(r.match()) {
			picked = append(picked, r)
		}
	}
	if len(sel.IDs) > 0 {
		known := make(map[string]bool, len(recs))
		for _, r := range recs {
			known[r.id] = true
		}
		seen := make(map[string]bool, len(sel.IDs))
		for _, id := range sel.IDs {
			if !known[id] && !seen[id] {
				missing = append(missing, id)
			}
			seen[id] = true
		}
	}
	return picked, missing
}

// remove takes the records in gone out of the dead-letter queue's record and,
// those still waiting there, out of the queue itself. The caller holds b.mu.
func (d *deadLetters) remove(gone map[*deadRecord]bool) {
	if len(gone) == 0 {
		return
	}
	q := d.b.queues[DeadLetterQueue(d.queue)]
	kept := q.dead[:0]
	for _, r := range q.dead {
		if !gone[r] {
			kept = append(kept, r)
			continue
		}
		if q.ready.remove(r.e) {
			continue
		}
		if _, ok := q.delayed[r.e]; ok {
			r.e.timer.Stop()
			delete(q.delayed, r.e)
		}
	}
	clear(q.dead[len(kept):])
	q.dead = kept
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
	now := time.Now()
	b := d.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return res, ErrBrokerClosed
	}
	picked, missing := d.selectRecords(sel)
	res.Missing = missing
	gone := make(map[*deadRecord]bool, len(picked))
	woken := map[*queue]bool{}
	for _, r := range picked {
		if n := broker.Redriven(r.msg.Header); limit >= 0 && n >= limit {
			res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
				fmt.Errorf("memory: dead letter %s was redriven %d times (limit %d): %w", r.id, n, limit, broker.ErrRedriveLimit)))
			continue
		}
		dest := opts.Destination
		if dest == "" {
			switch {
			case !r.hasReason || r.reason.Source == "":
				res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
					fmt.Errorf("memory: dead letter %s has no %s header: %w", r.id, broker.HeaderSource, broker.ErrNoSource)))
				continue
			case b.queues[r.reason.Source] == nil:
				res.Skipped = append(res.Skipped, broker.NewSkipped(r.id,
					fmt.Errorf("memory: dead letter %s: source queue %q does not exist: %w", r.id, r.reason.Source, broker.ErrNoSource)))
				continue
			}
			dest = r.reason.Source
		}
		res.Done = append(res.Done, r.id)
		if opts.DryRun {
			continue
		}
		// The copy is in its queue before the dead letter is removed (both
		// under b.mu, so no one sees one without the other).
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
		woken[q] = true
		gone[r] = true
	}
	d.remove(gone)
	if len(gone) > 0 {
		b.queues[DeadLetterQueue(d.queue)].stats.Redriven += len(gone)
	}
	for q := range woken {
		q.wake()
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
	b := d.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return res, ErrBrokerClosed
	}
	picked, missing := d.selectRecords(sel)
	res.Missing = missing
	gone := make(map[*deadRecord]bool, len(picked))
	for _, r := range picked {
		res.Done = append(res.Done, r.id)
		gone[r] = true
	}
	if !dryRun {
		d.remove(gone)
		if len(gone) > 0 {
			b.queues[DeadLetterQueue(d.queue)].stats.Purged += len(gone)
		}
	}
	return res, res.Err()
}
