package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// deadLetters is what a command works on: an adapter's dead letters, which
// hold a connection until closed.
type deadLetters interface {
	broker.DeadLetters
	Close(ctx context.Context) error
}

// app is one run of the command, with its outputs and environment (so that
// tests can run it in-process on a broker of their own).
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	// open connects to the dead letters the target names (openTarget).
	open func(t target) (deadLetters, error)
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: getenv, now: time.Now, open: openTarget}
}

const usageText = `queuekit: see why messages were dead-lettered, send them back, or delete them.

Usage:
  queuekit dlq list    [target] [filters] [--limit N] [--cursor C] [--json]
  queuekit dlq show    [target] [--raw] [--json] ID
  queuekit dlq count   [target] [filters] [--json]
  queuekit dlq redrive [target] selection [--dry-run] [--max-redrives N] [--to DEST] [--json]
  queuekit dlq purge   [target] selection [--dry-run] [--json]
  queuekit version
  queuekit help | --help

Target (one broker):
  --amqp-url URL        RabbitMQ URL (env AMQP_URL), with --queue NAME [--dlq NAME]
                        (the dead-letter queue defaults to NAME.dlq)
  --kafka-brokers LIST  Kafka bootstrap brokers host:port,... (env KAFKA_BROKERS),
                        with --topic NAME [--dlt NAME] (default NAME.dlt)
  --timeout D           bound on the whole command, connecting included (default 30s)

Filters (combine with AND):
  --id ID               this dead letter (repeatable, or a comma-separated list),
                        written as the table prints it: \\ for a backslash,
                        \x1b, \u202e, …; a comma in an id is \x2c
  --reason TEXT         error text contains TEXT (case-insensitive)
  --source NAME         dead-lettered from this queue or topic
  --older-than D        dead-lettered more than D ago (e.g. 1h, 30m)
  --newer-than D        dead-lettered less than D ago

Selection (redrive, purge): filters, or --all for every dead letter; --max N stops
after N (oldest first). A redrive or purge without one is refused.

Passwords in URLs are never printed. Message text is escaped for the terminal
(control characters as \x1b, \n, \u202e, …); show --raw writes the body as it is.
--json escapes control and format characters as \uXXXX; a string that is not
UTF-8 has its bad bytes replaced by U+FFFD there: use the table's escaped id.

` + exitCodesDoc

// run runs the command line args and returns the exit code.
func (a *app) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(a.stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(a.stdout, usageText)
		return exitOK
	case "version", "-version", "--version":
		fmt.Fprintln(a.stdout, "queuekit", version())
		return exitOK
	case "dlq":
		if len(args) < 2 {
			return a.fail(&usageError{"dlq: missing command (list, show, count, redrive, purge)"}, "")
		}
		switch args[1] {
		case "help", "-h", "-help", "--help":
			fmt.Fprint(a.stdout, usageText)
			return exitOK
		}
		return a.dlq(ctx, args[1], args[2:])
	default:
		return a.fail(&usageError{fmt.Sprintf("unknown command \"%s\" (want dlq, version or help)", args[0])}, "")
	}
}

// version is the module version the binary was built from ("(devel)" in a
// checkout), with its VCS revision when the build recorded one.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && v == "(devel)" {
			v += " " + s.Value
		}
	}
	return v + " " + bi.GoVersion
}

// fail prints err (its password removed: amqpURL is the URL it may quote)
// and returns its exit code.
func (a *app) fail(err error, amqpURL string) int {
	code := exitCode(err)
	text := redact(err, amqpURL)
	if isVhostRefused(err) {
		text += " (vhost not found or not allowed: check the URL's path and the user's permissions)"
	}
	a.printErr(text)
	if code == exitUsage {
		fmt.Fprintln(a.stderr, "Run 'queuekit help' for usage.")
	}
	return code
}

// guardGrace is how long a command waits, after its --timeout, for the
// operation to return on its own.
const guardGrace = 3 * time.Second

// closeBound bounds the closing of the connection after the command.
const closeBound = 2 * time.Second

// printErr prints an error's text, escaped, after the command's name.
func (a *app) printErr(text string) {
	text = strings.TrimPrefix(text, "queuekit: ") // broker.ErrInvalidConfig's own prefix
	fmt.Fprintf(a.stderr, "queuekit: %s\n", escapeErr(text))
}

// options are the parsed flags of a dlq command.
type options struct {
	target
	filter     broker.DeadLetterFilter
	ids        stringList
	olderThan  time.Duration
	newerThan  time.Duration
	all        bool
	max        int
	limit      int
	cursor     string
	json       bool
	raw        bool
	dryRun     bool
	maxRedrive int
	to         string
	args       []string
}

// stringList is a repeatable flag whose values may also be comma-separated.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// flags builds the flag set of command cmd into o.
func (a *app) flags(cmd string, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("queuekit dlq "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed by fail, usage on -h by dlq
	fs.StringVar(&o.amqpURL, "amqp-url", "", "RabbitMQ URL (env AMQP_URL)")
	fs.StringVar(&o.queue, "queue", "", "RabbitMQ work queue whose dead letters to use")
	fs.StringVar(&o.dlq, "dlq", "", "RabbitMQ dead-letter queue (default QUEUE.dlq)")
	fs.StringVar(&o.kafkaBrokers, "kafka-brokers", "", "Kafka bootstrap brokers, comma-separated (env KAFKA_BROKERS)")
	fs.StringVar(&o.topic, "topic", "", "Kafka topic whose dead letters to use")
	fs.StringVar(&o.dlt, "dlt", "", "Kafka dead-letter topic (default TOPIC.dlt)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "bound on the whole command, connecting included")
	fs.BoolVar(&o.json, "json", false, "print JSON (the broker package's types) instead of a table")
	if cmd != "show" {
		fs.Var(&o.ids, "id", "dead letter id (repeatable, or comma-separated)")
		fs.StringVar(&o.filter.Reason, "reason", "", "error text contains this (case-insensitive)")
		fs.StringVar(&o.filter.Source, "source", "", "dead-lettered from this queue or topic")
		fs.DurationVar(&o.olderThan, "older-than", 0, "dead-lettered more than this long ago")
		fs.DurationVar(&o.newerThan, "newer-than", 0, "dead-lettered less than this long ago")
	}
	switch cmd {
	case "list":
		fs.IntVar(&o.limit, "limit", 0, fmt.Sprintf("most dead letters on the page (default %d, at most %d)", broker.DefaultListLimit, broker.MaxListLimit))
		fs.StringVar(&o.cursor, "cursor", "", "continue a listing (the cursor the previous page printed)")
	case "show":
		fs.BoolVar(&o.raw, "raw", false, "write the body as it is, unescaped")
	case "redrive", "purge":
		fs.BoolVar(&o.all, "all", false, "select every dead letter (with no filter)")
		fs.IntVar(&o.max, "max", 0, "stop after this many dead letters (oldest first)")
		fs.BoolVar(&o.dryRun, "dry-run", false, "say what would be done, change nothing")
		if cmd == "redrive" {
			fs.IntVar(&o.maxRedrive, "max-redrives", 0, fmt.Sprintf("skip dead letters redriven this many times already (default %d, negative: no limit)", broker.DefaultMaxRedrives))
			fs.StringVar(&o.to, "to", "", "send to this queue or topic instead of each dead letter's source")
		}
	}
	return fs
}

// parse parses args, flags and positional arguments in any order.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// dlq runs "queuekit dlq cmd args".
func (a *app) dlq(ctx context.Context, cmd string, args []string) int {
	switch cmd {
	case "list", "show", "count", "redrive", "purge":
	default:
		return a.fail(&usageError{fmt.Sprintf("dlq: unknown command \"%s\" (want list, show, count, redrive or purge)", cmd)}, "")
	}
	var o options
	fs := a.flags(cmd, &o)
	pos, err := parse(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(a.stdout)
		fmt.Fprintf(a.stdout, "Usage of queuekit dlq %s:\n", cmd)
		fs.PrintDefaults()
		fmt.Fprint(a.stdout, "\n"+exitCodesDoc)
		return exitOK
	}
	if err != nil {
		return a.fail(&usageError{fmt.Sprintf("dlq %s: %v", cmd, err)}, o.amqpURL)
	}
	o.args = pos
	if err := a.resolve(cmd, fs, &o); err != nil {
		return a.fail(err, o.amqpURL)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	dl, err := a.open(o.target)
	if err != nil {
		return a.fail(err, o.amqpURL)
	}
	defer func() {
		// Close gets a bound of its own: the command's may be spent.
		// Closing a healthy connection takes milliseconds; one that is
		// still dialling a silent host is given up on (aborted) at once.
		bound := closeBound
		if ctx.Err() != nil {
			bound = closeBound / 10 // timed out or interrupted: do not linger
		}
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
		defer ccancel()
		_ = dl.Close(cctx)
	}()
	c := command{app: a, o: &o, dl: dl}
	// The adapters honour ctx; the guard is for a dial or a broker that
	// does not let go: the command ends soon after --timeout all the same
	// (main exits; the abandoned goroutine goes with the process).
	done := make(chan error, 1)
	go func() {
		switch cmd {
		case "list":
			done <- c.list(ctx)
		case "show":
			done <- c.show(ctx)
		case "count":
			done <- c.count(ctx)
		case "redrive":
			done <- c.redrive(ctx)
		case "purge":
			done <- c.purge(ctx)
		}
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		select {
		case err = <-done:
		case <-time.After(guardGrace):
			err = fmt.Errorf("dlq %s: the broker did not answer: %w", cmd, ctx.Err())
		}
	}
	if err == nil {
		return exitOK
	}
	var pe *partialError
	if errors.As(err, &pe) {
		a.printErr(redact(pe.err, o.amqpURL))
		return exitPartial
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		err = fmt.Errorf("%w (the --timeout of %v expired)", err, o.timeout)
	}
	return a.fail(err, o.amqpURL)
}

// resolve checks the parsed options of cmd and fills in the environment's.
func (a *app) resolve(cmd string, fs *flag.FlagSet, o *options) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case cmd == "show" && len(o.args) != 1:
		return &usageError{"dlq show: want exactly one dead letter ID"}
	case cmd != "show" && len(o.args) > 0:
		return &usageError{fmt.Sprintf("dlq %s: unexpected argument \"%s\" (filters are flags: --id, --reason, …)", cmd, o.args[0])}
	case o.timeout <= 0:
		return &usageError{"--timeout must be positive"}
	case o.limit < 0:
		return &usageError{"--limit must not be negative"}
	case o.max < 0:
		return &usageError{"--max must not be negative"}
	case o.olderThan < 0 || o.newerThan < 0:
		return &usageError{"--older-than and --newer-than must not be negative"}
	}
	// The target: --queue means RabbitMQ, --topic Kafka; the URL or the
	// brokers come from the flag or else the environment.
	rabbit := o.queue != "" || set["amqp-url"] || set["dlq"]
	kafka := o.topic != "" || set["kafka-brokers"] || set["dlt"]
	switch {
	case rabbit && kafka:
		return &usageError{"give either a RabbitMQ target (--amqp-url, --queue) or a Kafka one (--kafka-brokers, --topic), not both"}
	case !rabbit && !kafka:
		return &usageError{"no target: give --queue (RabbitMQ, with --amqp-url or AMQP_URL) or --topic (Kafka, with --kafka-brokers or KAFKA_BROKERS)"}
	case rabbit:
		if o.amqpURL == "" {
			o.amqpURL = a.getenv("AMQP_URL")
		}
		if o.amqpURL == "" {
			return &usageError{"RabbitMQ: no URL: give --amqp-url or set AMQP_URL"}
		}
		if o.queue == "" {
			return &usageError{"RabbitMQ: give the work queue with --queue (its dead letters are in --dlq, default QUEUE.dlq)"}
		}
	case kafka:
		if o.kafkaBrokers == "" {
			o.kafkaBrokers = a.getenv("KAFKA_BROKERS")
		}
		for _, b := range strings.Split(o.kafkaBrokers, ",") {
			if b = strings.TrimSpace(b); b != "" {
				o.brokers = append(o.brokers, b)
			}
		}
		if len(o.brokers) == 0 {
			return &usageError{"Kafka: no brokers: give --kafka-brokers or set KAFKA_BROKERS"}
		}
		if o.topic == "" {
			return &usageError{"Kafka: give the source topic with --topic (its dead letters are in --dlt, default TOPIC.dlt)"}
		}
	}
	// Ids and cursors are given as the tables print them (escaped).
	for i, id := range o.ids {
		u, err := unescape(id)
		if err != nil {
			return &usageError{fmt.Sprintf("--id \"%s\": %v", id, err)}
		}
		o.ids[i] = u
	}
	if cmd == "show" {
		u, err := unescape(o.args[0])
		if err != nil {
			return &usageError{fmt.Sprintf("dlq show: ID \"%s\": %v", o.args[0], err)}
		}
		o.args[0] = u
	}
	if u, err := unescape(o.cursor); err != nil {
		return &usageError{fmt.Sprintf("--cursor \"%s\": %v", o.cursor, err)}
	} else {
		o.cursor = u
	}
	now := a.now()
	o.filter.IDs = o.ids
	if o.olderThan > 0 {
		o.filter.Before = now.Add(-o.olderThan)
	}
	if o.newerThan > 0 {
		o.filter.After = now.Add(-o.newerThan)
	}
	if (cmd == "redrive" || cmd == "purge") && o.filter.IsZero() && !o.all {
		return &usageError{fmt.Sprintf("dlq %s: select the dead letters: --id, --reason, --source, --older-than, --newer-than, or --all for every one", cmd)}
	}
	if o.all && !o.filter.IsZero() {
		return &usageError{fmt.Sprintf("dlq %s: --all selects every dead letter: leave it out when giving filters", cmd)}
	}
	return nil
}

// partialError is a command that did what it could, but not all that was
// asked: exit code 1.
type partialError struct{ err error }

func (e *partialError) Error() string { return e.err.Error() }
func (e *partialError) Unwrap() error { return e.err }

// command is one dlq command at work.
type command struct {
	*app
	o  *options
	dl deadLetters
}
