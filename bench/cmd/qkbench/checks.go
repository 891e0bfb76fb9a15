package main

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
)

// target is an issue-15 target for a row's judged figure.
type target struct {
	op         string  // "<=" or ">="; "" for a row without a target
	value      float64 // in the row's unit
	everyRound bool    // every round must meet it, not only the median
}

// text formats the target with the judged figure's unit ("x" for a ratio).
func (t target) text(unit string) string {
	if t.op == "" {
		return "-"
	}
	s := t.op + " " + trimFloat(t.value)
	if unit == "x" {
		s += "x"
	} else {
		s += " " + unit
	}
	if t.everyRound {
		s += " every round"
	}
	return s
}

func (t target) met(v float64) bool {
	switch t.op {
	case "<=":
		return v <= t.value
	case ">=":
		return v >= t.value
	}
	return true
}

// row is one line of the report: what queuekit measured, the baseline
// measured in the same run, and the judged figure (a ratio or an absolute
// cost) per round, against its target.
type row struct {
	group, name string
	qk, base    []float64 // figures per round, in unit
	unit        string    // of qk and base
	judged      []float64 // per round
	floor       []float64 // per round, the lowest of its iterations when the benchmark reports it (Kafka)
	judgedUnit  string    // "x" for a ratio, else the unit of an absolute cost
	target      target
	err         error // a figure could not be found or parsed
}

// verdict is "pass", "FAIL", "-" (no target) or "MISSING".
func (r row) verdict() string {
	switch {
	case r.err != nil:
		return "MISSING"
	case r.target.op == "":
		return "-"
	}
	if r.target.everyRound {
		for _, v := range append(slices.Clone(r.judged), r.floor...) {
			if !r.target.met(v) {
				return "FAIL"
			}
		}
		return "pass"
	}
	if r.target.met(median(r.judged)) {
		return "pass"
	}
	return "FAIL"
}

// lowest is the row's minimum over its rounds, and over their iterations
// where the benchmark reports them.
func (r row) lowest() float64 { return slices.Min(append(slices.Clone(r.judged), r.floor...)) }

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pairwise applies f to the i-th figures of a and b: the same -count round
// of two sub-benchmarks of one run.
func pairwise(a, b []float64, f func(a, b float64) float64) ([]float64, error) {
	if len(a) != len(b) {
		return nil, fmt.Errorf("%d figures against %d: rounds do not pair up", len(a), len(b))
	}
	out := make([]float64, len(a))
	for i := range a {
		out[i] = f(a[i], b[i])
	}
	return out, nil
}

func ratio(a, b float64) float64 { return a / b }

// compare is a row whose judged figure is a per-round ratio qk/base of the
// figure unit of two benchmarks in the same output.
func compare(o *benchOutput, group, name, qkBench, baseBench, unit string, t target) row {
	r := row{group: group, name: name, unit: unit, judgedUnit: "x", target: t}
	if r.qk, r.err = o.values(qkBench, unit); r.err != nil {
		return r
	}
	if r.base, r.err = o.values(baseBench, unit); r.err != nil {
		return r
	}
	if r.judged, r.err = pairwise(r.qk, r.base, ratio); r.err != nil {
		r.err = fmt.Errorf("%s vs %s: %w", qkBench, baseBench, r.err)
	}
	return r
}

const consumerBench = "BenchmarkConsumer/"

// memoryRows are the targets for the runtime on broker/memory
// (BenchmarkConsumer in ./consumer): no middleware within 5x of a bare
// channel loop, the full chain within 2x of a hand-written chain and at
// most 10 allocations per message.
func memoryRows(o *benchOutput) []row {
	const g = "memory"
	b := func(s string) string { return consumerBench + s }
	rows := []row{compare(o, g, "queuekit/c=1 vs bare-channel/c=1 (ns/op)", b("queuekit/c=1"), b("bare-channel/c=1"), "ns/op", target{op: "<=", value: 5})}
	if o.has(b("bare-channel-fed/c=1")) {
		rows = append(rows, compare(o, g, "queuekit/c=1 vs bare-channel-fed/c=1 (ns/op)", b("queuekit/c=1"), b("bare-channel-fed/c=1"), "ns/op", target{op: "<=", value: 5}))
	}
	rows = append(rows, compare(o, g, "queuekit-chain/c=1 vs handwritten-chain/c=1 (ns/op)", b("queuekit-chain/c=1"), b("handwritten-chain/c=1"), "ns/op", target{op: "<=", value: 2}))
	allocs := row{group: g, name: "queuekit-chain/c=1 allocs/op (base: handwritten-chain)", unit: "allocs/op", judgedUnit: "allocs", target: target{op: "<=", value: 10}}
	if allocs.qk, allocs.err = o.values(b("queuekit-chain/c=1"), "allocs/op"); allocs.err == nil {
		allocs.base, allocs.err = o.values(b("handwritten-chain/c=1"), "allocs/op")
		allocs.judged = allocs.qk
	}
	return append(rows, allocs)
}

// otelRows are the targets for tracing with the no-op provider
// (BenchmarkOTel in ./middleware/otelqueuekit): at most 100 ns over the bare
// handler and no allocation per message, for a message without trace
// context ("noop"), one that carries it ("noop-remote-parent") and a call
// inside a recording span ("noop-outer-span").
func otelRows(o *benchOutput) []row {
	const g = "otel"
	var rows []row
	for _, c := range []string{"noop", "noop-remote-parent", "noop-outer-span"} {
		name := "BenchmarkOTel/" + c
		ns := row{group: g, name: c + ": ns/op over bare", unit: "ns/op", judgedUnit: "ns", target: target{op: "<=", value: 100}}
		if ns.qk, ns.err = o.values(name, "ns/op"); ns.err == nil {
			if ns.base, ns.err = o.values("BenchmarkOTel/bare", "ns/op"); ns.err == nil {
				ns.judged, ns.err = pairwise(ns.qk, ns.base, func(a, b float64) float64 { return a - b })
			}
		}
		allocs := row{group: g, name: c + ": allocs/op", unit: "allocs/op", judgedUnit: "allocs", target: target{op: "<=", value: 0, everyRound: true}}
		if allocs.qk, allocs.err = o.values(name, "allocs/op"); allocs.err == nil {
			allocs.base, allocs.err = o.values("BenchmarkOTel/bare", "allocs/op")
			allocs.judged = allocs.qk
		}
		rows = append(rows, ns, allocs)
	}
	return rows
}

// kafkaCases are BenchmarkConsume's noop sub-benchmarks in ./broker/kafka,
// and whether the issue sets a target for them (ByPartition with 1 and 4
// workers: at least as fast as kafka-go's group Reader in every round).
var kafkaCases = []struct {
	name      string
	hasTarget bool
}{
	{"noop/by-partition-1worker", true},
	{"noop/by-partition-4workers", true},
	{"noop/by-key-16workers", false},
}

// kafkaRows reads x-raw (join to leave) and, when the benchmark reports it,
// x-raw-steady (first record to last, the figure) and
// min-x-raw-steady (the lowest of a line's rounds).
func kafkaRows(o *benchOutput) []row {
	const g = "kafka"
	var rows []row
	for _, c := range kafkaCases {
		bench := "BenchmarkConsume/" + c.name
		t := target{}
		if c.hasTarget {
			t = target{op: ">=", value: 1, everyRound: true}
		}
		r := metricRow(o, g, c.name+" x-raw (join to leave)", bench, "msgs/s", "raw-msgs/s", "x-raw", t)
		rows = append(rows, r)
		if r.err == nil && !o.hasMetric(bench, "x-raw-steady") {
			continue
		}
		s := metricRow(o, g, c.name+" x-raw-steady", bench, "steady-msgs/s", "raw-steady-msgs/s", "x-raw-steady", t)
		if s.err == nil && o.hasMetric(bench, "min-x-raw-steady") {
			s.floor, s.err = o.values(bench, "min-x-raw-steady")
		}
		rows = append(rows, s)
	}
	return rows
}

// kafkaPublishRows are the targets for publishing on Kafka
// (BenchmarkPublish in ./broker/kafka: 32 goroutines, one record per publish,
// queuekit's Publisher vs kafka-go's Writer with the same settings, rounds
// interleaved): at least 0.9x the Writer's msg/s in every round, and a p99
// per publish within the same bound as on RabbitMQ (<= 1.11x the Writer's).
func kafkaPublishRows(o *benchOutput) []row {
	const g = "kafka-publish"
	const bench = "BenchmarkPublish"
	rate := metricRow(o, g, "32 publishers msg/s x-raw (Writer)", bench, "msgs/s", "raw-msgs/s", "x-raw", target{op: ">=", value: 0.9, everyRound: true})
	if rate.err == nil && o.hasMetric(bench, "min-x-raw") {
		rate.floor, rate.err = o.values(bench, "min-x-raw")
	}
	p99 := row{group: g, name: "32 publishers p99 per publish vs Writer", unit: "p99-ms", judgedUnit: "x", target: target{op: "<=", value: 1.11}}
	if p99.qk, p99.err = o.values(bench, "p99-ms"); p99.err == nil {
		if p99.base, p99.err = o.values(bench, "raw-p99-ms"); p99.err == nil {
			p99.judged, p99.err = pairwise(p99.qk, p99.base, func(a, b float64) float64 { return a / b })
		}
	}
	return []row{rate, p99}
}

// metricRow is a row whose judged figure the benchmark reports itself
// (judged), next to its figures qkUnit and baseUnit.
func metricRow(o *benchOutput, group, name, bench, qkUnit, baseUnit, judged string, t target) row {
	r := row{group: group, name: name, unit: qkUnit, judgedUnit: "x", target: t}
	if r.judged, r.err = o.values(bench, judged); r.err != nil {
		return r
	}
	if r.qk, r.err = o.values(bench, qkUnit); r.err != nil {
		return r
	}
	if o.hasMetric(bench, baseUnit) || baseUnit == "raw-msgs/s" {
		r.base, r.err = o.values(bench, baseUnit)
	}
	return r
}

// rabbitCases are TestBenchmarkAgainstRawClient's cases and the issue's
// throughput target for each: prefetch 64 / 8 workers, no-op: 1.15x raw
// amqp091-go with per-message acks; the others at least 1.0x.
var rabbitCases = []struct {
	name       string
	throughput float64
	cpu        bool // the issue also sets client (<= 1.0x) and broker (<= 0.85x) CPU targets
}{
	{"prefetch64-workers8-noop", 1.15, true},
	{"prefetch64-workers8-1ms", 1.0, false},
	{"prefetch1-workers1-noop", 1.0, false},
	{"prefetch1-workers1-1ms", 1.0, false},
	{"prefetch8-workers8-1to5ms", 1.0, false},
}

// rabbitConsumeRows reads TestBenchmarkAgainstRawClient's tables: for each
// case and each queuekit side, the throughput ratio to raw per round (as
// logged) and, for prefetch 64 / 8 workers, the client and broker CPU per
// message ratios (totals over the rounds). The targets are judged on qk-on,
// the Source's defaults (coalesced acks); the other sides (qk-off: AckBatch
// 1, per-message acks) are shown without one. A case missing from the
// output (an older benchmark without it) is reported missing.
func rabbitConsumeRows(tables []*table, only string) []row {
	const g = "rabbitmq"
	var rows []row
	for _, c := range rabbitCases {
		if only != "" && c.name != only {
			continue
		}
		t := findTable(tables, c.name)
		if t == nil {
			rows = append(rows, row{group: g, name: c.name, err: fmt.Errorf("no table %q in the output", c.name)})
			continue
		}
		for _, side := range t.order {
			if side == "raw" {
				continue
			}
			judge := func(tg target) target {
				if side != "qk-on" {
					return target{}
				}
				return tg
			}
			rows = append(rows, tableRatioRow(g, t, side, "msg/s", judge(target{op: ">=", value: c.throughput})))
			if c.cpu {
				rows = append(rows, tableRatioRow(g, t, side, "client/msg", judge(target{op: "<=", value: 1.0})))
				if b, err := t.value("raw", "broker/msg"); err == nil && b > 0 {
					rows = append(rows, tableRatioRow(g, t, side, "broker/msg", judge(target{op: "<=", value: 0.85})))
				}
			}
		}
	}
	return rows
}

// rabbitPublishRows reads TestPublishBenchmarkAgainstRawClient's table:
// msg/s at least 0.9x raw deferred confirms, p99 per publish at most 1/0.9
// of raw's.
func rabbitPublishRows(tables []*table) []row {
	const g = "rabbitmq"
	t := findTable(tables, "goroutines publishing")
	if t == nil {
		return []row{{group: g, name: "publish", err: fmt.Errorf("no publish table in the output")}}
	}
	var rows []row
	for _, side := range t.order {
		if side == "raw" {
			continue
		}
		rows = append(rows, tableRatioRow(g, t, side, "msg/s", target{op: ">=", value: 0.9}))
		rows = append(rows, tableRatioRow(g, t, side, "p99", target{op: "<=", value: math.Round(100/0.9) / 100}))
	}
	return rows
}

// tableRatioRow is side's figure col against raw's in table t: the judged
// ratios are the per-round ratios the test logged for throughput (msg/s),
// else the ratio of the totals.
func tableRatioRow(group string, t *table, side, col string, tg target) row {
	name := shortTitle(t.title) + " " + side + " " + col
	r := row{group: group, name: name, unit: unitOf(col), judgedUnit: "x", target: tg}
	q, err := t.value(side, col)
	if err != nil {
		r.err = err
		return r
	}
	b, err := t.value("raw", col)
	if err != nil {
		r.err = err
		return r
	}
	r.qk, r.base = []float64{q}, []float64{b}
	if col == "msg/s" && len(t.rows[side].perRound) > 0 {
		r.judged = t.rows[side].perRound
		return r
	}
	if b == 0 {
		r.err = fmt.Errorf("%s: raw %s is 0", t.title, col)
		return r
	}
	r.judged = []float64{q / b}
	return r
}

func shortTitle(title string) string {
	if strings.Contains(title, "goroutines publishing") {
		return "publish"
	}
	return title
}

func unitOf(col string) string {
	switch col {
	case "msg/s":
		return "msg/s"
	case "client/msg", "broker/msg":
		return "µs/msg"
	}
	return "µs"
}

// trimFloat formats v with up to 3 significant decimals.
func trimFloat(v float64) string {
	switch {
	case math.IsNaN(v):
		return "?"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// figureText formats a median figure with its unit, compactly.
func figureText(vs []float64, unit string) string {
	if len(vs) == 0 {
		return "-"
	}
	v := median(vs)
	if strings.HasSuffix(unit, "/s") && v >= 10000 {
		return fmt.Sprintf("%.0fk %s", v/1000, unit)
	}
	return trimFloat(v) + " " + unit
}

// writeTable prints rows as an aligned table.
func writeTable(w *bytes.Buffer, rows []row) {
	header := []string{"group", "case", "queuekit", "baseline", "median", "min", "max", "n", "target", "result"}
	cells := [][]string{header}
	for _, r := range rows {
		c := []string{r.group, r.name, figureText(r.qk, r.unit), figureText(r.base, r.unit)}
		if r.err != nil || len(r.judged) == 0 {
			c = append(c, "-", "-", "-", "0")
		} else {
			u := r.judgedUnit
			if u != "x" {
				u = " " + u
			}
			c = append(c, trimFloat(median(r.judged))+u, trimFloat(r.lowest())+u, trimFloat(slices.Max(r.judged))+u,
				fmt.Sprint(len(r.judged)))
		}
		c = append(c, r.target.text(r.judgedUnit), r.verdict())
		cells = append(cells, c)
	}
	widths := make([]int, len(header))
	for _, c := range cells {
		for i, s := range c {
			widths[i] = max(widths[i], len([]rune(s)))
		}
	}
	for _, c := range cells {
		for i, s := range c {
			if i == len(c)-1 {
				w.WriteString(s)
				break
			}
			w.WriteString(s + strings.Repeat(" ", widths[i]-len([]rune(s))+2))
		}
		w.WriteString("\n")
	}
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(w, "MISSING %s %s: %v\n", r.group, r.name, r.err)
		}
	}
}
