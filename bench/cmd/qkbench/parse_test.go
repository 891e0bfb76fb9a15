package main

import (
	"bytes"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The testdata files are outputs of the real benchmarks, captured with
// `go run ./bench/cmd/qkbench -save DIR` (short runs: the figures mean
// nothing, the format is what is tested). When a benchmark's output
// changes, capture it again and check that these tests still find every
// figure.

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseTestdata(t *testing.T, name string) *benchOutput {
	t.Helper()
	o, err := parseBench(bytes.NewReader(readTestdata(t, name)))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func checkNoErrors(t *testing.T, rows []row, want int) {
	t.Helper()
	if len(rows) != want {
		t.Errorf("%d rows; want %d", len(rows), want)
	}
	for _, r := range rows {
		if r.err != nil {
			t.Errorf("%s %s: %v", r.group, r.name, r.err)
		}
		if len(r.judged) == 0 || len(r.qk) == 0 {
			t.Errorf("%s %s: no figures (judged %v, queuekit %v)", r.group, r.name, r.judged, r.qk)
		}
	}
}

func TestCapturedOutputsGiveEveryRow(t *testing.T) {
	checkNoErrors(t, memoryRows(parseTestdata(t, "memory.txt")), 4)
	checkNoErrors(t, otelRows(parseTestdata(t, "otel.txt")), 6)
	checkNoErrors(t, kafkaRows(parseTestdata(t, "kafka.txt")), 6)
	checkNoErrors(t, kafkaPublishRows(parseTestdata(t, "kafka-publish.txt")), 2)
	rows, err := groupRows("rabbitmq", options{}, [][]byte{readTestdata(t, "rabbitmq.txt"), readTestdata(t, "rabbitmq-2.txt")})
	if err != nil {
		t.Fatal(err)
	}
	// 5 cases x 2 queuekit sides, plus client and broker CPU for the
	// first case; publish: 2 sides x (msg/s, p99).
	checkNoErrors(t, rows, 5*2+2*2+2*2)
}

func TestParseBenchReadsFiguresByUnit(t *testing.T) {
	o := parseTestdata(t, "otel.txt")
	for _, tc := range []struct {
		bench, unit string
		want        []float64
	}{
		{"BenchmarkOTel/bare", "ns/op", []float64{8.890, 10.31}},
		{"BenchmarkOTel/noop", "ns/op", []float64{11.11, 13.58}},
		{"BenchmarkOTel/noop", "x-bare", []float64{1.077, 1.317}},
		{"BenchmarkOTel/noop-remote-parent-propagate", "allocs/op", []float64{2, 2}},
	} {
		got, err := o.values(tc.bench, tc.unit)
		if err != nil {
			t.Errorf("values(%s, %s): %v", tc.bench, tc.unit, err)
			continue
		}
		if !equal(got, tc.want) {
			t.Errorf("values(%s, %s) = %v; want %v", tc.bench, tc.unit, got, tc.want)
		}
	}
	// "noop" must not match "noop-deprecated" or "noop-remote-parent".
	if got, _ := o.values("BenchmarkOTel/noop", "allocs/op"); len(got) != 2 {
		t.Errorf("BenchmarkOTel/noop matched %d results; want its 2", len(got))
	}
}

func TestParseBenchIgnoresColumnOrder(t *testing.T) {
	out := "BenchmarkX/a-8   100   3 allocs/op   12.5 ns/op   0.9 x-raw\n" +
		"BenchmarkX/a-8   100   0.8 x-raw   13.5 ns/op   4 allocs/op   7 B/op\n"
	o, err := parseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := o.values("BenchmarkX/a", "x-raw"); err != nil || !equal(got, []float64{0.9, 0.8}) {
		t.Errorf("x-raw = %v, %v; want [0.9 0.8]", got, err)
	}
	if got, err := o.values("BenchmarkX/a", "allocs/op"); err != nil || !equal(got, []float64{3, 4}) {
		t.Errorf("allocs/op = %v, %v; want [3 4]", got, err)
	}
}

func TestParseBenchJoinsANameCutOffFromItsFigures(t *testing.T) {
	// go test prints the name before running the benchmark; whatever the
	// benchmark prints to stdout lands between the name and the figures.
	out := "BenchmarkX/a-2   \tsome log line 3 of 4\n" +
		"another line\n" +
		"  1000\t  55.5 ns/op\t  2 allocs/op\n" +
		"BenchmarkX/b   1000   12 ns/op\n"
	o, err := parseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := o.values("BenchmarkX/a", "ns/op"); err != nil || !equal(got, []float64{55.5}) {
		t.Errorf("a ns/op = %v, %v; want [55.5]", got, err)
	}
	if got, err := o.values("BenchmarkX/b", "ns/op"); err != nil || !equal(got, []float64{12}) {
		t.Errorf("b ns/op = %v, %v; want [12] (GOMAXPROCS=1: no suffix)", got, err)
	}
}

func TestSameBenchmark(t *testing.T) {
	for _, tc := range []struct {
		got, want string
		same      bool
	}{
		{"BenchmarkConsumer/queuekit/c=1-2", "BenchmarkConsumer/queuekit/c=1", true},
		{"BenchmarkConsumer/queuekit/c=1", "BenchmarkConsumer/queuekit/c=1", true},
		{"BenchmarkConsumer/queuekit/c=10-2", "BenchmarkConsumer/queuekit/c=1", false},
		{"BenchmarkConsumer/queuekit-chain/c=1-2", "BenchmarkConsumer/queuekit", false},
		{"BenchmarkOTel/noop-deprecated-2", "BenchmarkOTel/noop", false},
		{"BenchmarkOTel/noop-", "BenchmarkOTel/noop", false},
	} {
		if got := sameBenchmark(tc.got, tc.want); got != tc.same {
			t.Errorf("sameBenchmark(%q, %q) = %v; want %v", tc.got, tc.want, got, tc.same)
		}
	}
}

// A figure that is not there is reported, never skipped: a renamed
// sub-benchmark, a run without -benchmem, a failed benchmark.
func TestMissingFiguresAreErrors(t *testing.T) {
	mem := string(readTestdata(t, "memory.txt"))
	for _, tc := range []struct {
		name, output, wantErr string
	}{
		{"renamed", strings.ReplaceAll(mem, "queuekit-chain/", "qk-chain/"), "no result line"},
		{"without -benchmem", dropUnit(mem, "allocs/op"), `no "allocs/op" figure`},
		{"failed", strings.ReplaceAll(dropBench(mem, "BenchmarkConsumer/queuekit/c=1"), "PASS", "--- FAIL: BenchmarkConsumer/queuekit/c=1\n    bench_test.go:9: boom"), "failed"},
		{"rounds that do not pair", dropFirst(mem, "BenchmarkConsumer/bare-channel/c=1-2"), "do not pair"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseBench(strings.NewReader(tc.output))
			if err != nil {
				t.Fatal(err)
			}
			var errs []string
			for _, r := range memoryRows(o) {
				if r.err != nil {
					errs = append(errs, r.err.Error())
					if r.verdict() != "MISSING" {
						t.Errorf("%s: verdict %s; want MISSING", r.name, r.verdict())
					}
				}
			}
			if !strings.Contains(strings.Join(errs, "\n"), tc.wantErr) {
				t.Errorf("errors %q; want one containing %q", errs, tc.wantErr)
			}
		})
	}
}

func TestKafkaWithoutSteadyFigures(t *testing.T) {
	// Before x-raw-steady existed the benchmark reported x-raw only: the
	// rows are x-raw alone, without error.
	out := "BenchmarkConsume/noop/by-partition-1worker-2 1 9 ns/op 100 msgs/s 110 raw-msgs/s 0.91 x-raw 120 steady-msgs/s\n" +
		"BenchmarkConsume/noop/by-partition-4workers-2 1 9 ns/op 100 msgs/s 90 raw-msgs/s 1.11 x-raw 120 steady-msgs/s\n" +
		"BenchmarkConsume/noop/by-key-16workers-2 1 9 ns/op 100 msgs/s 90 raw-msgs/s 1.11 x-raw 120 steady-msgs/s\n"
	o, err := parseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	rows := kafkaRows(o)
	checkNoErrors(t, rows, 3)
	if v := rows[0].verdict(); v != "FAIL" {
		t.Errorf("x-raw 0.91 >= 1.0: %s; want FAIL", v)
	}
	if v := rows[1].verdict(); v != "pass" {
		t.Errorf("x-raw 1.11 >= 1.0: %s; want pass", v)
	}
}

func TestEveryRoundTargetsUseTheLowestRound(t *testing.T) {
	r := row{judged: []float64{1.2, 1.1}, floor: []float64{1.05, 0.98}, target: target{op: ">=", value: 1, everyRound: true}}
	if v := r.verdict(); v != "FAIL" {
		t.Errorf("a round at 0.98: %s; want FAIL", v)
	}
	r.target.everyRound = false
	if v := r.verdict(); v != "pass" {
		t.Errorf("median 1.15: %s; want pass", v)
	}
	if got := r.lowest(); got != 0.98 {
		t.Errorf("lowest() = %v; want 0.98", got)
	}
}

func TestRabbitTablesAreReadByColumnName(t *testing.T) {
	// A column added in front of the others moves every figure.
	out := "=== RUN   TestPublishBenchmarkAgainstRawClient\n" +
		"    publish_bench_test.go:98: 32 goroutines publishing persistent 256 B messages, each waiting for its confirm (2 rounds, 800 messages per side):\n" +
		"    publish_bench_test.go:99:   side  p99.9  msg/s  ratio  p50  p99  ratio  per-round throughput ratios (median)\n" +
		"    publish_bench_test.go:117:   raw  9ms  1000  1.000  1ms  4ms  1.000   1.00 1.00 (1.000)\n" +
		"    publish_bench_test.go:117:   qk  8ms  1100  1.100  1ms  5ms  1.250   1.05 1.15 (1.100)\n" +
		"--- PASS: TestPublishBenchmarkAgainstRawClient (1.00s)\n"
	tables, problems, err := parseTables(strings.NewReader(out))
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	rows := rabbitPublishRows(tables)
	checkNoErrors(t, rows, 2)
	if !equal(rows[0].judged, []float64{1.05, 1.15}) || rows[0].qk[0] != 1100 {
		t.Errorf("msg/s row: judged %v, queuekit %v; want [1.05 1.15], [1100]", rows[0].judged, rows[0].qk)
	}
	if !equal(rows[1].judged, []float64{1.25}) || rows[1].qk[0] != 5000 {
		t.Errorf("p99 row: judged %v, queuekit %v µs; want [1.25], [5000]", rows[1].judged, rows[1].qk)
	}
}

func TestRabbitSkipIsAnError(t *testing.T) {
	out := "=== RUN   TestBenchmarkAgainstRawClient\n" +
		"    bench_test.go:68: set QUEUEKIT_BENCH=1 to run the comparison with the raw client\n" +
		"--- SKIP: TestBenchmarkAgainstRawClient (0.00s)\n"
	rows, err := groupRows("rabbitmq", options{}, [][]byte{[]byte(out), []byte(out)})
	if err == nil || !strings.Contains(err.Error(), "QUEUEKIT_BENCH=1") {
		t.Errorf("error %v; want the skip and its reason", err)
	}
	for _, r := range rows {
		if r.verdict() != "MISSING" {
			t.Errorf("%s: %s; want MISSING", r.name, r.verdict())
		}
	}
}

func TestExitStatus(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"memory.txt", "otel.txt", "kafka.txt", "kafka-publish.txt"} {
		b := readTestdata(t, f)
		if f == "otel.txt" {
			b = bytes.ReplaceAll(b, []byte("BenchmarkOTel/noop-2 "), []byte("BenchmarkOTel/nop-2 "))
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		// The captured figures miss targets: 0 unless -strict.
		{[]string{"-from", "testdata", "-only", "memory,kafka"}, 0},
		{[]string{"-from", "testdata", "-only", "memory,kafka", "-strict"}, 1},
		{[]string{"-from", dir, "-only", "otel"}, 2},
		{[]string{"-only", "nosuch"}, 2},
	} {
		var out, errOut bytes.Buffer
		if got := run(tc.args, &out, &errOut); got != tc.want {
			t.Errorf("run(%q) = %d; want %d\n%s%s", tc.args, got, tc.want, out.String(), errOut.String())
		}
	}
	var out bytes.Buffer
	run([]string{"-from", dir, "-only", "otel"}, &out, io.Discard)
	if !strings.Contains(out.String(), "MISSING otel noop: ns/op over bare: BenchmarkOTel/noop: no result line") {
		t.Errorf("output does not say what is missing:\n%s", out.String())
	}
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > 1e-9 {
			return false
		}
	}
	return true
}

// dropUnit removes every "<value> unit" pair from the result lines.
func dropUnit(out, unit string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "Benchmark") {
			var keep []string
			for i := 0; i < len(f); i++ {
				if i+1 < len(f) && f[i+1] == unit {
					i++
					continue
				}
				keep = append(keep, f[i])
			}
			line = strings.Join(keep, " ") + "\n"
		}
		b.WriteString(line)
	}
	return b.String()
}

// dropBench removes the result lines of a benchmark.
func dropBench(out, bench string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && sameBenchmark(f[0], bench) {
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}

// dropFirst removes the first line starting with prefix.
func dropFirst(out, prefix string) string {
	i := strings.Index(out, prefix+" ")
	if i < 0 {
		return out
	}
	j := strings.IndexByte(out[i:], '\n')
	return out[:i] + out[i+j+1:]
}
