// Command qkbench runs queuekit's issue-15 benchmarks and prints one table
// of their figures: for each case, queuekit's figure, the baseline's figure
// measured in the same run, the judged ratio (or cost) per round as median,
// min and max, the target and whether it is met.
//
// Run it from anywhere inside the repository (it runs `go test` from the
// directory of go.work, so the workspace's modules are used):
//
//	go run ./bench/cmd/qkbench                       # memory, otel, kafka
//	go run ./bench/cmd/qkbench -only memory -count 5
//	go run ./bench/cmd/qkbench -only rabbitmq        # needs RabbitMQ: see DEVELOPERS.md
//
// Groups (-only, comma-separated; rabbitmq runs only when named, since it
// needs a broker):
//
//   - memory: BenchmarkConsumer in ./consumer (-benchmem, -benchtime
//     300000x, -count); queuekit/c=1 over bare-channel/c=1 (and over
//     bare-channel-fed/c=1 when the benchmark has it) <= 5x,
//     queuekit-chain/c=1 over handwritten-chain/c=1 <= 2x, queuekit-chain
//     allocs/op <= 10.
//   - otel: BenchmarkOTel in ./middleware/otelqueuekit; the noop case's
//     ns/op over bare <= 100 ns and 0 allocs/op.
//   - kafka: BenchmarkConsume/noop in ./broker/kafka (-benchtime <rounds>x,
//     default 3x); x-raw and x-raw-steady >= 1.0 in every round for
//     ByPartition with 1 and 4 workers (QUEUEKIT_BENCH_KAFKA_RECORDS in the
//     environment sets the topic's size).
//   - rabbitmq: TestBenchmarkAgainstRawClient and
//     TestPublishBenchmarkAgainstRawClient in ./broker/rabbitmq
//     (QUEUEKIT_BENCH=1; -rounds sets QUEUEKIT_BENCH_ROUNDS, -messages
//     QUEUEKIT_BENCH_MESSAGES); throughput, client and broker CPU ratios to
//     raw amqp091-go.
//
// Rounds: the memory and otel figures of the i-th -count round of two
// sub-benchmarks are paired (the same process, seconds apart); Kafka and
// RabbitMQ interleave their rounds themselves.
//
// Exit status: 2 if a benchmark failed or a figure could not be found or
// parsed (the table says which: MISSING); 1 if a target is missed and
// -strict is set; else 0.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
)

// options are the command's flags.
type options struct {
	only       []string
	count      int
	rounds     int
	benchtime  string
	messages   int
	rabbitCase string
	verbose    bool
	strict     bool
	from       string
}

var allGroups = []string{"memory", "otel", "kafka", "kafka-publish", "rabbitmq"}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("qkbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	only := fs.String("only", "memory,otel,kafka,kafka-publish", "comma-separated groups to run: memory, otel, kafka, kafka-publish, rabbitmq (rabbitmq needs a broker and runs only when named)")
	fs.IntVar(&o.count, "count", 3, "go test -count for memory, otel and kafka (each round pairs queuekit with its baseline)")
	fs.IntVar(&o.rounds, "rounds", 0, "interleaved rounds inside one run: kafka -benchtime <rounds>x (default 3), RabbitMQ QUEUEKIT_BENCH_ROUNDS (default 4)")
	fs.StringVar(&o.benchtime, "benchtime", "300000x", "go test -benchtime for memory")
	fs.IntVar(&o.messages, "messages", 0, "RabbitMQ: QUEUEKIT_BENCH_MESSAGES (messages per side and case; default the tests' 20,000)")
	fs.StringVar(&o.rabbitCase, "rabbitmq-case", "", "RabbitMQ: run only this consuming case (QUEUEKIT_BENCH_CASE), e.g. prefetch64-workers8-noop")
	fs.BoolVar(&o.verbose, "v", false, "echo the benchmarks' output to stderr as they run")
	fs.BoolVar(&o.strict, "strict", false, "exit with status 1 when a target is missed")
	fs.StringVar(&o.from, "from", "", "read each group's output from DIR/<group>.txt instead of running it (a run's output is written there with -save)")
	save := fs.String("save", "", "write each group's output to DIR/<group>.txt")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	for _, g := range strings.Split(*only, ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		if !contains(allGroups, g) {
			return o, fmt.Errorf("-only: unknown group %q (groups: %s)", g, strings.Join(allGroups, ", "))
		}
		o.only = append(o.only, g)
	}
	switch {
	case len(o.only) == 0:
		return o, errors.New("-only names no group")
	case o.count < 1:
		return o, fmt.Errorf("-count must be at least 1, not %d", o.count)
	case o.rounds < 0 || o.messages < 0:
		return o, errors.New("-rounds and -messages cannot be negative")
	}
	saveDir = *save
	return o, nil
}

// saveDir is where -save writes each group's output.
var saveDir string

func contains(xs []string, x string) bool {
	for _, s := range xs {
		if s == x {
			return true
		}
	}
	return false
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "qkbench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root, err := workspaceRoot()
	if err != nil && o.from == "" {
		fmt.Fprintln(stderr, "qkbench:", err)
		return 2
	}
	var rows []row
	failed := false
	for _, g := range allGroups {
		if !contains(o.only, g) {
			continue
		}
		rs, err := runGroup(ctx, g, o, root, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "qkbench: %s: %v\n", g, err)
			failed = true
		}
		rows = append(rows, rs...)
	}
	var buf bytes.Buffer
	writeTable(&buf, rows)
	_, _ = stdout.Write(buf.Bytes())
	missed := false
	for _, r := range rows {
		switch r.verdict() {
		case "MISSING":
			failed = true
		case "FAIL":
			missed = true
		}
	}
	switch {
	case failed:
		return 2
	case missed && o.strict:
		return 1
	}
	return 0
}

// workspaceRoot is the directory of the go.work in use.
func workspaceRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOWORK").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOWORK: %w", err)
	}
	w := strings.TrimSpace(string(out))
	if w == "" || w == "off" {
		return "", errors.New("no go.work in use: run qkbench inside the queuekit repository (with GOWORK unset)")
	}
	return filepath.Dir(w), nil
}

// runGroup runs one group's benchmarks (or reads their saved output) and
// returns its rows. An error is a benchmark that failed to run; its rows
// then say MISSING for the figures it did not print.
func runGroup(ctx context.Context, g string, o options, root string, stderr io.Writer) ([]row, error) {
	var outputs [][]byte
	var runErr error
	for i, c := range commands(g, o) {
		var out []byte
		if o.from != "" {
			name := g
			if i > 0 {
				name += "-" + strconv.Itoa(i+1)
			}
			b, err := os.ReadFile(filepath.Join(o.from, name+".txt"))
			if err != nil {
				return nil, err
			}
			out = b
		} else {
			b, err := c.run(ctx, root, o.verbose, stderr)
			out = b
			if err != nil {
				runErr = errors.Join(runErr, fmt.Errorf("%s: %w\n%s", c, err, tail(b, 30)))
			}
			if saveDir != "" {
				name := g
				if i > 0 {
					name += "-" + strconv.Itoa(i+1)
				}
				if err := os.MkdirAll(saveDir, 0o755); err != nil {
					runErr = errors.Join(runErr, err)
				} else if err := os.WriteFile(filepath.Join(saveDir, name+".txt"), b, 0o644); err != nil {
					runErr = errors.Join(runErr, err)
				}
			}
		}
		outputs = append(outputs, out)
	}
	rows, err := groupRows(g, o, outputs)
	return rows, errors.Join(runErr, err)
}

// groupRows parses a group's outputs (one per command) into rows.
func groupRows(g string, o options, outputs [][]byte) ([]row, error) {
	switch g {
	case "memory", "otel", "kafka", "kafka-publish":
		bo, err := parseBench(bytes.NewReader(outputs[0]))
		if err != nil {
			return nil, err
		}
		switch g {
		case "memory":
			return memoryRows(bo), nil
		case "otel":
			return otelRows(bo), nil
		case "kafka-publish":
			return kafkaPublishRows(bo), nil
		}
		return kafkaRows(bo), nil
	case "rabbitmq":
		var rows []row
		var errs error
		for i, out := range outputs {
			tables, problems, err := parseTables(bytes.NewReader(out))
			if err != nil {
				errs = errors.Join(errs, err)
				continue
			}
			for _, p := range problems {
				errs = errors.Join(errs, errors.New(p))
			}
			if i == 0 {
				rows = append(rows, rabbitConsumeRows(tables, o.rabbitCase)...)
			} else {
				rows = append(rows, rabbitPublishRows(tables)...)
			}
		}
		return rows, errs
	}
	return nil, fmt.Errorf("unknown group %q", g)
}

// command is one `go test` run.
type command struct {
	args []string
	env  []string
}

func (c command) String() string {
	return strings.TrimSpace(strings.Join(c.env, " ") + " go " + strings.Join(c.args, " "))
}

// commands are the go test runs of a group, in the order groupRows reads
// their outputs.
func commands(g string, o options) []command {
	count := strconv.Itoa(o.count)
	switch g {
	case "memory":
		return []command{{args: []string{"test", "-run", "^$", "-bench", "BenchmarkConsumer", "-benchmem", "-benchtime", o.benchtime, "-count", count, "./consumer"}}}
	case "otel":
		return []command{{args: []string{"test", "-run", "^$", "-bench", "BenchmarkOTel", "-benchmem", "-count", count, "./middleware/otelqueuekit"}}}
	case "kafka":
		rounds := 3
		if o.rounds > 0 {
			rounds = o.rounds
		}
		return []command{{args: []string{"test", "-run", "^$", "-bench", "BenchmarkConsume/noop", "-benchtime", strconv.Itoa(rounds) + "x", "-count", count, "-timeout", "60m", "./broker/kafka"}}}
	case "kafka-publish":
		rounds := 3
		if o.rounds > 0 {
			rounds = o.rounds
		}
		return []command{{args: []string{"test", "-run", "^$", "-bench", "BenchmarkPublish", "-benchtime", strconv.Itoa(rounds) + "x", "-count", count, "-timeout", "60m", "./broker/kafka"}}}
	case "rabbitmq":
		env := []string{"QUEUEKIT_BENCH=1"}
		if o.rounds > 0 {
			env = append(env, "QUEUEKIT_BENCH_ROUNDS="+strconv.Itoa(o.rounds))
		}
		if o.messages > 0 {
			env = append(env, "QUEUEKIT_BENCH_MESSAGES="+strconv.Itoa(o.messages))
		}
		consume := slicesConcat(env)
		if o.rabbitCase != "" {
			consume = append(consume, "QUEUEKIT_BENCH_CASE="+o.rabbitCase)
		}
		return []command{
			{args: []string{"test", "-run", "^TestBenchmarkAgainstRawClient$", "-v", "-count", "1", "-timeout", "60m", "./broker/rabbitmq"}, env: consume},
			{args: []string{"test", "-run", "^TestPublishBenchmarkAgainstRawClient$", "-v", "-count", "1", "-timeout", "60m", "./broker/rabbitmq"}, env: env},
		}
	}
	return nil
}

func slicesConcat(xs []string) []string { return append([]string(nil), xs...) }

// run runs the command from root and returns its combined output, echoed
// to stderr as it comes with verbose.
func (c command) run(ctx context.Context, root string, verbose bool, stderr io.Writer) ([]byte, error) {
	fmt.Fprintf(stderr, "qkbench: running %s\n", c)
	cmd := exec.CommandContext(ctx, "go", c.args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), c.env...)
	var buf bytes.Buffer
	var w io.Writer = &buf
	if verbose {
		w = io.MultiWriter(&buf, stderr)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	return buf.Bytes(), err
}

// tail is the last n lines of out, for an error message.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
