package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/retry"
)

// readDeadLetters lists up to max dead letters of the dead-letter queue with
// the library's dead-letter API, without removing them (List gives every
// message back, in order), and returns them with the number the queue held.
func readDeadLetters(ctx context.Context, dls broker.DeadLetters, max int) ([]deadLetter, int, error) {
	var out []deadLetter
	var queued int
	err := retry.Do(ctx, retry.Exponential(100*time.Millisecond, time.Second), func(ctx context.Context) error {
		out = nil
		page, err := dls.List(ctx, broker.DeadLetterQuery{Limit: max})
		if err != nil {
			return permanentIfFatal(err)
		}
		for _, d := range page.Items {
			out = append(out, toDeadLetter(d))
		}
		queued, err = dls.Count(ctx, broker.DeadLetterFilter{})
		return permanentIfFatal(err)
	})
	slices.SortFunc(out, func(a, b deadLetter) int { return strings.Compare(a.ID, b.ID) })
	return out, queued, err
}

// toDeadLetter keeps what the summary shows of a dead letter: the order's
// message ID and the reason the runtime wrote in its headers.
func toDeadLetter(d broker.DeadLetter) deadLetter {
	return deadLetter{
		ID:        d.Message.ID,
		Attempts:  d.Reason.Attempts,
		Permanent: d.Reason.Permanent,
		Error:     d.Reason.Err,
		Redriven:  d.Redriven,
	}
}

// redriveAfterFix is the operator's part of a -redrive run, while the
// worker still runs: see why the orders failed, fix the cause, send back
// the dead letters of that cause, and wait until the worker handled them.
// The bug (a currency missing from the rates table, a nil pointer) is fixed
// by a switch in the running worker (fixed); in real life, by a new release.
// An order whose body does not decode stays: no fix of the worker changes
// that, and redriving it would dead-letter it again.
func redriveAfterFix(ctx context.Context, dls broker.DeadLetters, queue string, fix func(), settled *settlements, sum *summary, out *printer) error {
	// 1. See why.
	page, err := dls.List(ctx, broker.DeadLetterQuery{Limit: maxShown})
	if err != nil {
		return fmt.Errorf("list the dead letters: %w", err)
	}
	out.printf("dead letters in %s.dlq, listed with rabbitmq.NewDeadLetters(…).List (nothing consumed): %d\n", queue, len(page.Items))
	for _, d := range page.Items {
		out.printf("    %s\n", toDeadLetter(d))
	}

	// 2. Fix the cause of the panic.
	fix()
	out.printf("fix: the currency conversion knows CHF now, and an unknown currency is an error instead of a panic\n")

	// 3. Redrive what the fix fixes, selected by its reason: a dry run
	// first, as an operator would. The copy goes back to the queue with
	// its attempt count reset and x-queuekit-redriven: 1; its dead letter
	// is removed only once the broker confirmed the copy.
	sel := broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "nil pointer dereference"}}
	dry, err := dls.Redrive(ctx, sel, broker.RedriveOptions{DryRun: true})
	if err != nil {
		return fmt.Errorf("redrive (dry run): %w", err)
	}
	ids := orderIDs(page.Items, dry.Done)
	out.printf("redrive --dry-run --reason %q: would send %s back to %s\n", sel.Reason, names(ids), queue)
	var waits []<-chan struct{}
	for _, id := range ids {
		waits = append(waits, settled.expectAck(id)) // before the copy can arrive
	}
	res, err := dls.Redrive(ctx, sel, broker.RedriveOptions{})
	if err != nil {
		return fmt.Errorf("redrive: %w (%d redriven before)", err, len(res.Done))
	}
	sum.Redriven = orderIDs(page.Items, res.Done)
	out.printf("redrive --reason %q: %s sent back to %s (the worker may have it before Redrive returns: a dead letter is removed only once the broker confirmed its copy)\n",
		sel.Reason, names(sum.Redriven), queue)

	// 4. The worker handles them.
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the redriven orders: %w", ctx.Err())
		}
	}
	// What stays is data no fix of the worker can read.
	for _, d := range page.Items {
		if d.Reason.Permanent && !slices.Contains(res.Done, d.ID) {
			out.printf("%s stays a dead letter: its data is wrong, so a redrive would only dead-letter it again (and Redrive refuses it after %d); purge it once the producer is fixed\n",
				d.Message.ID, broker.DefaultMaxRedrives)
		}
	}
	return nil
}

// orderIDs returns the message IDs of the dead letters ids names.
func orderIDs(listed []broker.DeadLetter, ids []string) []string {
	var out []string
	for _, id := range ids {
		name := id
		for _, d := range listed {
			if d.ID == id {
				name = d.Message.ID
			}
		}
		out = append(out, name)
	}
	return out
}

// names lists ids for the output.
func names(ids []string) string {
	if len(ids) == 0 {
		return "nothing"
	}
	return strings.Join(ids, ", ")
}

// permanentIfFatal marks errors that retrying cannot fix (wrong
// credentials, no access to the vhost, bad configuration).
func permanentIfFatal(err error) error {
	if err != nil && broker.IsFatal(err) {
		return retry.Permanent(err)
	}
	return err
}
