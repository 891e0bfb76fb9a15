package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Column widths of the list table, in runes, after escaping.
const (
	idWidth     = 40
	sourceWidth = 40
	reasonWidth = 48
	bodyWidth   = 40
)

// list prints one page of dead letters.
func (c *command) list(ctx context.Context) error {
	q := broker.DeadLetterQuery{DeadLetterFilter: c.o.filter, Limit: c.o.limit, Cursor: c.o.cursor}
	page, err := c.dl.List(ctx, q)
	if err != nil {
		if c.o.cursor != "" && errors.Is(err, broker.ErrDeadLetterNotFound) {
			// RabbitMQ's cursor names a dead letter, which may have been
			// redriven or purged since: exit 1, as for any missing one.
			return fmt.Errorf("%w (the dead letter the cursor names is gone: list again without --cursor)", err)
		}
		return err
	}
	if c.o.json {
		return c.printJSON(page)
	}
	if len(page.Items) == 0 {
		fmt.Fprintln(c.stdout, "no dead letters")
	} else {
		now := c.now()
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tAGE\tATTEMPTS\tREDRIVEN\tSOURCE\tREASON\tSIZE\tBODY")
		for i := range page.Items {
			d := &page.Items[i]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n",
				cut(d.ID, idWidth), age(d, now), attempts(d), d.Redriven,
				cut(source(d), sourceWidth), cut(reason(d), reasonWidth), d.BodySize, cut(string(d.Message.Body), bodyWidth))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if page.Next != "" {
		fmt.Fprintf(c.stdout, "more: add --cursor %s\n", escape(page.Next))
	}
	return nil
}

// show prints one dead letter whole.
func (c *command) show(ctx context.Context) error {
	id := c.o.args[0]
	q := broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{id}}, Limit: 1, BodyLimit: -1}
	var d *broker.DeadLetter
	for d == nil {
		page, err := c.dl.List(ctx, q)
		if err != nil {
			return err
		}
		for i := range page.Items {
			if page.Items[i].ID == id {
				d = &page.Items[i]
				break
			}
		}
		if d != nil || page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	if d == nil {
		return &partialError{fmt.Errorf("%w: \"%s\"", broker.ErrDeadLetterNotFound, escape(id))}
	}
	if c.o.json {
		return c.printJSON(d)
	}
	now := c.now()
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", escape(d.ID))
	if d.HasReason {
		fmt.Fprintf(tw, "source:\t%s\n", escape(d.Reason.Source))
		fmt.Fprintf(tw, "reason:\t%s\n", escape(d.Reason.Err))
		fmt.Fprintf(tw, "attempts:\t%s\n", attempts(d))
		if !d.Reason.Time.IsZero() {
			fmt.Fprintf(tw, "failed at:\t%s (%s ago)\n", d.Reason.Time.UTC().Format(time.RFC3339Nano), age(d, now))
		}
	} else {
		fmt.Fprintf(tw, "reason:\t(none: not dead-lettered by queuekit)\n")
	}
	fmt.Fprintf(tw, "redriven:\t%d\n", d.Redriven)
	if d.Partition >= 0 {
		fmt.Fprintf(tw, "partition:\t%d\n", d.Partition)
		fmt.Fprintf(tw, "offset:\t%d\n", d.Offset)
	}
	if d.Message.ID != "" {
		fmt.Fprintf(tw, "message id:\t%s\n", escape(d.Message.ID))
	}
	if d.Message.Topic != "" {
		fmt.Fprintf(tw, "topic:\t%s\n", escape(d.Message.Topic))
	}
	if len(d.Message.Key) > 0 {
		fmt.Fprintf(tw, "key:\t%s\n", escape(string(d.Message.Key)))
	}
	if !d.Message.Time.IsZero() {
		fmt.Fprintf(tw, "published:\t%s\n", d.Message.Time.UTC().Format(time.RFC3339Nano))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.Message.Header) > 0 {
		fmt.Fprintln(c.stdout, "headers:")
		tw = tabwriter.NewWriter(c.stdout, 0, 0, 1, ' ', 0)
		for _, k := range slices.Sorted(maps.Keys(d.Message.Header)) {
			fmt.Fprintf(tw, "  %s:\t%s\n", escape(k), escape(d.Message.Header[k]))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	body := d.Message.Body
	cutNote := ""
	if len(body) < d.BodySize {
		cutNote = fmt.Sprintf(", first %d shown", len(body))
	}
	fmt.Fprintf(c.stdout, "body (%d bytes%s):\n", d.BodySize, cutNote)
	if c.o.raw {
		if _, err := c.stdout.Write(body); err != nil {
			return err
		}
	} else {
		fmt.Fprint(c.stdout, escape(string(body)))
	}
	fmt.Fprintln(c.stdout)
	return nil
}

// count prints how many dead letters match the filter.
func (c *command) count(ctx context.Context) error {
	n, err := c.dl.Count(ctx, c.o.filter)
	if err != nil {
		return err
	}
	if c.o.json {
		return c.printJSON(struct {
			Count int `json:"count"`
		}{n})
	}
	fmt.Fprintln(c.stdout, n)
	return nil
}

// selection returns the redrive or purge selection of the options.
func (c *command) selection() broker.DeadLetterSelection {
	return broker.DeadLetterSelection{DeadLetterFilter: c.o.filter, All: c.o.all, Max: c.o.max}
}

// redrive sends the selected dead letters back and prints what it did.
func (c *command) redrive(ctx context.Context) error {
	opts := broker.RedriveOptions{MaxRedrives: c.o.maxRedrive, Destination: c.o.to, DryRun: c.o.dryRun}
	res, err := c.dl.Redrive(ctx, c.selection(), opts)
	return c.report(res, err, "redriven", "would redrive")
}

// purge deletes the selected dead letters and prints what it did.
func (c *command) purge(ctx context.Context) error {
	res, err := c.dl.Purge(ctx, c.selection(), c.o.dryRun)
	return c.report(res, err, "purged", "would purge")
}

// report prints the result of a redrive or purge, and returns the error that
// decides the exit code: a partialError when the operation ran but left some
// selected dead letters (missing or skipped).
func (c *command) report(res broker.DeadLetterResult, err error, did, would string) error {
	if err != nil && len(res.Done)+len(res.Skipped)+len(res.Missing) == 0 && !isPartial(err) {
		return err // nothing happened: the error says why
	}
	if c.o.json {
		if jerr := c.printJSON(res); jerr != nil {
			return jerr
		}
	} else {
		verb := did
		if res.DryRun || c.o.dryRun {
			verb = would
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		for _, id := range res.Done {
			fmt.Fprintf(tw, "%s\t%s\n", verb, escape(id))
		}
		for _, s := range res.Skipped {
			fmt.Fprintf(tw, "skipped\t%s\t%s\n", escape(s.ID), escapeErr(s.Err))
		}
		for _, id := range res.Missing {
			fmt.Fprintf(tw, "missing\t%s\t%s\n", escape(id), "not a dead letter there")
		}
		if ferr := tw.Flush(); ferr != nil {
			return ferr
		}
		dry := ""
		if res.DryRun || c.o.dryRun {
			dry = " (dry run: nothing changed)"
		}
		fmt.Fprintf(c.stdout, "%d %s, %d skipped, %d missing%s\n", len(res.Done), verb, len(res.Skipped), len(res.Missing), dry)
	}
	if err == nil {
		if rerr := res.Err(); rerr != nil {
			return &partialError{rerr}
		}
		return nil
	}
	if isPartial(err) {
		return &partialError{err}
	}
	return err
}

// isPartial reports whether err, from Redrive or Purge, only says that some
// selected dead letters were missing or skipped: the operation itself ran.
func isPartial(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || isConnectError(err) {
		return false
	}
	// Every error errors.Join put together (at any depth) must be a
	// per-dead-letter one: its chain of single wrappings reaches a
	// Skipped, ErrDeadLetterNotFound, ErrRedriveLimit or ErrNoSource
	// before it ends or branches.
	var ok func(error) bool
	ok = func(e error) bool {
		for e != nil {
			if j, isJoin := e.(interface{ Unwrap() []error }); isJoin {
				for _, c := range j.Unwrap() {
					if !ok(c) {
						return false
					}
				}
				return true
			}
			if _, isSkip := e.(broker.Skipped); isSkip || isMoreSkipped(e) ||
				e == broker.ErrDeadLetterNotFound || e == broker.ErrRedriveLimit || e == broker.ErrNoSource {
				return true
			}
			e = errors.Unwrap(e)
		}
		return false
	}
	return ok(err)
}

// isMoreSkipped matches the "and N more skipped" line of DeadLetterResult.Err.
func isMoreSkipped(e error) bool {
	var n int
	_, err := fmt.Sscanf(e.Error(), "and %d more skipped", &n)
	return err == nil
}

// printJSON writes v as indented JSON, with every character a terminal would
// act on escaped (escapeJSON).
func (c *command) printJSON(v any) error {
	js, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = c.stdout.Write(append(escapeJSON(js), '\n'))
	return err
}

// age is how long ago d was dead-lettered, rounded for people ("-" when
// unknown).
func age(d *broker.DeadLetter, now time.Time) string {
	if d.Reason.Time.IsZero() {
		return "-"
	}
	a := d.Age(now)
	switch {
	case a < 0:
		return "0s" // clocks apart
	case a < time.Minute:
		return strconv.Itoa(int(a/time.Second)) + "s"
	case a < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(a/time.Minute), int(a%time.Minute/time.Second))
	case a < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(a/time.Hour), int(a%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%02dh", int(a/(24*time.Hour)), int(a%(24*time.Hour)/time.Hour))
	}
}

func attempts(d *broker.DeadLetter) string {
	if !d.HasReason {
		return "-"
	}
	s := strconv.Itoa(d.Reason.Attempts)
	if d.Reason.Permanent {
		s += " (permanent)"
	}
	return s
}

func source(d *broker.DeadLetter) string {
	if !d.HasReason || d.Reason.Source == "" {
		return "-"
	}
	return d.Reason.Source
}

func reason(d *broker.DeadLetter) string {
	if !d.HasReason {
		return "(no reason headers)"
	}
	return d.Reason.Err
}
