package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// result is one result line of `go test -bench` output: a benchmark's name
// (as printed, with the -GOMAXPROCS suffix if any), its iteration count and
// its metrics by unit ("ns/op", "allocs/op", "x-raw", ...).
type result struct {
	name    string
	n       int64
	metrics map[string]float64
}

// benchOutput is what parseBench reads from `go test -bench` output: the
// result lines in order, and the names of the benchmarks that failed.
type benchOutput struct {
	results  []result
	failures []string
}

// parseBench reads `go test -bench` output. It finds result lines by their
// shape (a Benchmark name, an iteration count, then value-unit pairs), not by
// column position, so that metrics added, removed or reordered by a
// benchmark do not shift anything. A result whose name line was cut off from
// its figures by output the benchmark printed in between (go test prints the
// name before it runs the benchmark) is joined with the next line that holds
// figures.
func parseBench(r io.Reader) (*benchOutput, error) {
	out := &benchOutput{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	pending := "" // a Benchmark name printed without its figures yet
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(trimmed, "--- FAIL: "); ok {
			out.failures = append(out.failures, strings.Fields(name)[0])
			continue
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if strings.HasPrefix(fields[0], "Benchmark") && strings.HasPrefix(line, "Benchmark") {
			if res, ok := parseFigures(fields[0], fields[1:]); ok {
				out.results = append(out.results, res)
				pending = ""
				continue
			}
			// The figures may follow after lines the benchmark printed;
			// whatever follows the name on this line is such output.
			pending = fields[0]
			if res, ok := figuresAtEnd(pending, fields[1:]); ok {
				out.results = append(out.results, res)
				pending = ""
			}
			continue
		}
		if pending != "" {
			if res, ok := figuresAtEnd(pending, fields); ok {
				out.results = append(out.results, res)
				pending = ""
			}
		}
	}
	return out, sc.Err()
}

// parseFigures parses the fields after a benchmark's name: an iteration
// count, then pairs of a value and its unit.
func parseFigures(name string, fields []string) (result, bool) {
	if len(fields) < 3 || len(fields)%2 != 1 {
		return result{}, false
	}
	n, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil || n <= 0 {
		return result{}, false
	}
	res := result{name: name, n: n, metrics: map[string]float64{}}
	for i := 1; i < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil || !isUnit(fields[i+1]) {
			return result{}, false
		}
		res.metrics[fields[i+1]] = v
	}
	return res, true
}

// figuresAtEnd finds figures at the end of a line that starts with other
// output.
func figuresAtEnd(name string, fields []string) (result, bool) {
	for i := range fields {
		if res, ok := parseFigures(name, fields[i:]); ok {
			return res, true
		}
	}
	return result{}, false
}

// isUnit says whether s can be a benchmark unit: go test units start with a
// letter ("ns/op", "B/op", "x-raw", "msgs/s").
func isUnit(s string) bool {
	if s == "" {
		return false
	}
	c := s[0]
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// sameBenchmark says whether the printed name got is the benchmark want:
// go test appends -GOMAXPROCS to the name when GOMAXPROCS is not 1.
func sameBenchmark(got, want string) bool {
	if got == want {
		return true
	}
	rest, ok := strings.CutPrefix(got, want+"-")
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// has says whether the output holds a result of the benchmark name.
func (o *benchOutput) has(name string) bool {
	for _, r := range o.results {
		if sameBenchmark(r.name, name) {
			return true
		}
	}
	return false
}

// hasMetric says whether some result of the benchmark name reports unit.
func (o *benchOutput) hasMetric(name, unit string) bool {
	for _, r := range o.results {
		if _, ok := r.metrics[unit]; ok && sameBenchmark(r.name, name) {
			return true
		}
	}
	return false
}

// values returns the figure unit of every result of the benchmark name, in
// the order printed (one per -count round). It is an error if the benchmark
// has no result or one of its results lacks the unit: a figure that went
// missing must not pass unnoticed.
func (o *benchOutput) values(name, unit string) ([]float64, error) {
	var vs []float64
	for _, r := range o.results {
		if !sameBenchmark(r.name, name) {
			continue
		}
		v, ok := r.metrics[unit]
		if !ok {
			return nil, fmt.Errorf("%s: no %q figure in %q", name, unit, metricNames(r))
		}
		vs = append(vs, v)
	}
	if len(vs) == 0 {
		for _, f := range o.failures {
			if sameBenchmark(f, name) || strings.HasPrefix(name, f+"/") || strings.HasPrefix(f, name+"/") {
				return nil, fmt.Errorf("%s: failed (--- FAIL: %s)", name, f)
			}
		}
		return nil, fmt.Errorf("%s: no result line in the output", name)
	}
	return vs, nil
}

func metricNames(r result) string {
	var names []string
	for u := range r.metrics {
		names = append(names, u)
	}
	slices.Sort(names)
	return strings.Join(names, " ")
}
