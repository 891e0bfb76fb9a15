package kafka

import (
	"slices"
	"testing"
)

// TestReadyQueueKeepsOrder checks the ready queue against a plain slice
// through a sequence of pushes, pops, front pushes and filters that wraps
// its backing array many times.
func TestReadyQueueKeepsOrder(t *testing.T) {
	var q readyQueue
	var want []*record
	recs := make([]record, 10_000)
	next := 0
	check := func(step int) {
		t.Helper()
		if got := q.items(); !slices.Equal(got, want) || q.len() != len(want) {
			t.Fatalf("step %d: queue holds %d records, len() %d; want %d in the same order", step, len(got), q.len(), len(want))
		}
	}
	for step := range 20_000 {
		switch {
		case step%97 == 0:
			q.keep(func(r *record) bool { return r.attempt%3 != 0 })
			want = slices.DeleteFunc(want, func(r *record) bool { return r.attempt%3 == 0 })
		case step%13 == 0 && next < len(recs):
			r := &recs[next]
			r.attempt = next
			next++
			q.pushFront(r)
			want = slices.Insert(want, 0, r)
		case step%3 == 2 && len(want) > 0:
			if got := q.pop(); got != want[0] {
				t.Fatalf("step %d: pop() = record %d; want record %d", step, got.attempt, want[0].attempt)
			}
			want = want[1:]
		case next < len(recs):
			r := &recs[next]
			r.attempt = next
			next++
			q.push(r)
			want = append(want, r)
		}
		check(step)
	}
	for len(want) > 0 {
		if got := q.pop(); got != want[0] {
			t.Fatalf("draining: pop() = record %d; want record %d", got.attempt, want[0].attempt)
		}
		want = want[1:]
	}
	check(-1)
}
