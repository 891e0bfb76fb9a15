package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// ledger stands in for the service the events are applied to. An account
// must be open there; one is not, until the operator opens it (the fix).
type ledger struct {
	mu     sync.Mutex
	closed map[string]bool
}

func newLedger(closed ...string) *ledger {
	l := &ledger{closed: map[string]bool{}}
	for _, a := range closed {
		l.closed[a] = true
	}
	return l
}

// check returns an error when account is not open.
func (l *ledger) check(account string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed[account] {
		return fmt.Errorf("ledger: account %s is not open", account)
	}
	return nil
}

func (l *ledger) open(account string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.closed, account)
}

// shown is how many dead letters the run prints one by one.
const shown = 3

// operator does what an operator does about dead letters, with the
// dead-letter API on the topic's dead-letter topic (as `queuekit dlq` does
// from the command line): list them with their reasons, fix the cause,
// redrive them, and check that none is left once the group handled them.
type operator struct {
	cl      client
	brokers []string
	topic   string
	books   *ledger
	tr      *tracker
	rep     *report
	out     *printer
	logger  *slog.Logger
	timeout <-chan time.Time // the run's
	stopped <-chan struct{}  // closed when the group stopped
}

func (o *operator) run(ctx context.Context, total int) error {
	// NewDeadLetters needs no Source and joins no group: it reads the
	// dead-letter topic by offset, and keeps the progress of Redrive in
	// Kafka (see broker/kafka's "Dead letters").
	dls, err := o.cl.newDLs(o.brokers, o.topic, o.logger)
	if err != nil {
		return err
	}
	defer dls.Close(context.Background())
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	// 1. See why: List reads without consuming (the runtime confirmed each
	// dead letter written before it settled the event, so all are there).
	all, err := listAll(cctx, dls)
	if err != nil {
		return fmt.Errorf("list the dead letters: %w", err)
	}
	o.rep.DeadLetters = all
	o.out.printf("dead letters in %s.dlt, listed with %s.NewDeadLetters(…).List (nothing consumed): %d\n", o.topic, o.cl.pkg, len(all))
	for i, d := range all {
		if i == shown {
			o.out.printf("    … and %d more %s\n", len(all)-shown, sameAs(all[0], all[shown:]))
			break
		}
		o.out.printf("    %s\n", describeDeadLetter(d))
	}

	// 2. Fix the cause. Here it is data: the account is opened in the
	// ledger. (A bug would be fixed by deploying; a message that can never
	// succeed would be purged instead.)
	o.books.open(o.rep.Unopened)
	o.out.printf("fix: account %s opened in the ledger\n", o.rep.Unopened)

	// 3. Redrive the dead letters of that cause: first a dry run, then for
	// real. Each copy goes back to the topic with its key, to the partition
	// it came from, so the account's events stay in order; its dead letter
	// is marked done only once the brokers confirmed the copy.
	sel := broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "is not open"}}
	dry, err := dls.Redrive(cctx, sel, broker.RedriveOptions{DryRun: true})
	if err != nil {
		return fmt.Errorf("redrive (dry run): %w", err)
	}
	o.rep.WouldRedrive = len(dry.Done)
	o.out.printf("redrive --dry-run --reason %q: would send %d back to %s\n", sel.Reason, len(dry.Done), o.topic)
	start := time.Now()
	res, err := dls.Redrive(cctx, sel, broker.RedriveOptions{})
	o.rep.Redriven = len(res.Done)
	if err != nil {
		return fmt.Errorf("redrive: %w (%d redriven before)", err, len(res.Done))
	}
	o.out.printf("redrive --reason %q: %d sent back to %s, each confirmed before its dead letter was marked done\n", sel.Reason, len(res.Done), o.topic)

	// 4. The group handles them as new records.
	select {
	case <-o.tr.waitFor(total, 0):
		o.out.printf("the %d redriven events handled in %v\n", len(res.Done), time.Since(start).Round(time.Millisecond))
	case <-ctx.Done():
		return ctx.Err()
	case <-o.stopped:
		return fmt.Errorf("the group stopped before it handled the redriven events")
	case <-o.timeout:
		h, _ := o.tr.counts()
		return fmt.Errorf("only %d of %d events handled after the redrive", h, total)
	}
	o.rep.DeadLettersLeft, err = dls.Count(cctx, broker.DeadLetterFilter{})
	if err != nil {
		return fmt.Errorf("count the dead letters: %w", err)
	}
	o.out.printf("dead letters left: %d\n", o.rep.DeadLettersLeft)
	return nil
}

// listAll pages through every dead letter.
func listAll(ctx context.Context, dls broker.DeadLetters) ([]broker.DeadLetter, error) {
	var all []broker.DeadLetter
	q := broker.DeadLetterQuery{Limit: 100}
	for {
		page, err := dls.List(ctx, q)
		if err != nil {
			return all, err
		}
		all = append(all, page.Items...)
		if page.Next == "" {
			return all, nil
		}
		q.Cursor = page.Next
	}
}

// describeDeadLetter prints a dead letter as an operator reads it: its id,
// what it was, where it came from, and why it failed.
func describeDeadLetter(d broker.DeadLetter) string {
	what := "key " + string(d.Message.Key)
	var e Event
	if json.Unmarshal(d.Message.Body, &e) == nil && e.Account != "" {
		what = fmt.Sprintf("%s seq %d", e.Account, e.Seq)
	}
	if !d.HasReason {
		return fmt.Sprintf("%-4s %s: no reason headers (not written by queuekit)", d.ID, what)
	}
	kind := "budget spent"
	if d.Reason.Permanent {
		kind = "permanent"
	}
	attempts := "1 attempt"
	if d.Reason.Attempts != 1 {
		attempts = strconv.Itoa(d.Reason.Attempts) + " attempts"
	}
	return fmt.Sprintf("%-4s %s (partition %d offset %d) after %s, %s: %s", d.ID, what, d.Partition, d.Offset, attempts, kind, d.Reason.Err)
}

// sameAs says whether the dead letters rest have the key and reason of
// first.
func sameAs(first broker.DeadLetter, rest []broker.DeadLetter) string {
	for _, d := range rest {
		if string(d.Message.Key) != string(first.Message.Key) || d.Reason.Err != first.Reason.Err {
			return "(other keys or reasons)"
		}
	}
	return fmt.Sprintf("of %s, the same reason", first.Message.Key)
}
