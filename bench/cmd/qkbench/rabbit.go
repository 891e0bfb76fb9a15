package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// table is one figures table that the RabbitMQ comparison tests log
// (broker/rabbitmq bench_test.go, publish_bench_test.go): a title line
// ending in "messages per side):", a header line starting with "side", and
// a row per side.
type table struct {
	title string
	cols  []string // column names from the header; a "ratio" column is named after the column before it: "msg/s ratio"
	rows  map[string]tableRow
	order []string // sides in the order logged
}

// tableRow is one side's row: its figures by column name (durations in
// microseconds), the per-round throughput ratios that follow them and
// their median (in parentheses).
type tableRow struct {
	values    map[string]float64
	perRound  []float64
	median    float64
	hasMedian bool
}

// logPrefix is what t.Logf puts before a line: "    bench_test.go:202: ".
var logPrefix = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: ?`)

// parseTables reads `go test -v` output of the RabbitMQ comparison tests
// and returns their tables and the names of failed or skipped tests (with
// the reason logged for a skip). Columns are found by the header's names,
// not by position.
func parseTables(r io.Reader) (tables []*table, problems []string, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var cur *table
	var lastLog string
	for sc.Scan() {
		raw := sc.Text()
		trimmed := strings.TrimSpace(raw)
		switch {
		case strings.HasPrefix(trimmed, "--- FAIL: "):
			problems = append(problems, trimmed)
		case strings.HasPrefix(trimmed, "--- SKIP: "):
			problems = append(problems, trimmed+" ("+lastLog+")")
		}
		loc := logPrefix.FindStringIndex(raw)
		if loc == nil {
			cur = nil
			continue
		}
		line := raw[loc[1]:]
		lastLog = strings.TrimSpace(line)
		switch {
		case strings.HasSuffix(strings.TrimSpace(line), "messages per side):"):
			title := strings.TrimSpace(line)
			if i := strings.LastIndex(title, " ("); i >= 0 {
				title = title[:i]
			}
			cur = &table{title: title, rows: map[string]tableRow{}}
			tables = append(tables, cur)
		case cur == nil:
		case cur.cols == nil:
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "side" {
				return nil, nil, fmt.Errorf("table %q: header %q does not start with side", cur.title, line)
			}
			cur.cols = headerColumns(f)
		default:
			side, row, ok, err := parseRow(cur.cols, line)
			if err != nil {
				return nil, nil, fmt.Errorf("table %q: %w", cur.title, err)
			}
			if !ok {
				cur = nil // the table ended
				continue
			}
			cur.rows[side] = row
			cur.order = append(cur.order, side)
		}
	}
	return tables, problems, sc.Err()
}

// headerColumns names the columns of a header: the names before
// "per-round", each "ratio" named after the column before it.
func headerColumns(f []string) []string {
	var cols []string
	for _, name := range f {
		if strings.HasPrefix(name, "per-round") {
			break
		}
		if name == "ratio" && len(cols) > 0 {
			name = cols[len(cols)-1] + " ratio"
		}
		cols = append(cols, name)
	}
	return cols
}

// parseRow parses a side's row. ok is false for a line that is not a row
// (what the tests log after a table); an error is a row whose figures do not
// parse.
func parseRow(cols []string, line string) (side string, row tableRow, ok bool, err error) {
	f := strings.Fields(line)
	if len(f) < len(cols) || len(f) < 2 {
		return "", row, false, nil
	}
	if _, perr := figure(f[1]); perr != nil {
		return "", row, false, nil
	}
	side = f[0]
	row.values = map[string]float64{}
	for i, c := range cols[1:] {
		v, err := figure(f[i+1])
		if err != nil {
			return "", row, false, fmt.Errorf("side %s, column %s: %w", side, c, err)
		}
		row.values[c] = v
	}
	for _, s := range f[len(cols):] {
		if m, found := strings.CutPrefix(s, "("); found {
			v, err := strconv.ParseFloat(strings.TrimSuffix(m, ")"), 64)
			if err != nil {
				return "", row, false, fmt.Errorf("side %s: median %q: %w", side, s, err)
			}
			row.median, row.hasMedian = v, true
			continue
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return "", row, false, fmt.Errorf("side %s: per-round ratio %q: %w", side, s, err)
		}
		row.perRound = append(row.perRound, v)
	}
	return side, row, true, nil
}

// figure parses a number or a Go duration (in microseconds).
func figure(s string) (float64, error) {
	if v, err := strconv.ParseFloat(s, 64); err == nil {
		return v, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a number nor a duration", s)
	}
	return float64(d) / float64(time.Microsecond), nil
}

// find returns the table whose title is title, or the first whose title
// contains it.
func findTable(tables []*table, title string) *table {
	for _, t := range tables {
		if t.title == title {
			return t
		}
	}
	for _, t := range tables {
		if strings.Contains(t.title, title) {
			return t
		}
	}
	return nil
}

// value returns a side's figure of column col, or an error naming what is
// missing.
func (t *table) value(side, col string) (float64, error) {
	row, ok := t.rows[side]
	if !ok {
		return 0, fmt.Errorf("%s: no row for side %s (sides: %s)", t.title, side, strings.Join(t.order, " "))
	}
	v, ok := row.values[col]
	if !ok {
		return 0, fmt.Errorf("%s: no column %q (columns: %s)", t.title, col, strings.Join(t.cols, ", "))
	}
	return v, nil
}
