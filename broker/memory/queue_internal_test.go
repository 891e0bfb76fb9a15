package memory

import (
	"slices"
	"testing"
)

// The deque against a slice model, through wraps at both ends, growth while
// wrapped and removeSet (indices wrap with a mask: see deque).
func TestDequeMatchesASlice(t *testing.T) {
	var d deque
	var model []*entry
	es := make([]*entry, 400) // more than are pushed: each entry once
	for i := range es {
		es[i] = &entry{deliveries: i}
	}
	check := func(step string) {
		t.Helper()
		if d.len() != len(model) {
			t.Fatalf("%s: len() = %d; want %d", step, d.len(), len(model))
		}
		for i, want := range model {
			if got := *d.at(d.head + i); got != want {
				t.Fatalf("%s: element %d = entry %d; want entry %d", step, i, got.deliveries, want.deliveries)
			}
		}
	}
	next := 0
	for round := range 6 {
		// Push at the front first, so that head wraps below zero.
		for range 5 + round*7 {
			d.pushFront(es[next%len(es)])
			model = slices.Insert(model, 0, es[next%len(es)])
			next++
		}
		check("pushFront")
		for range 9 + round*5 {
			d.pushBack(es[next%len(es)])
			model = append(model, es[next%len(es)])
			next++
		}
		check("pushBack")
		for range 3 + round {
			if got := d.popFront(); got != model[0] {
				t.Fatalf("popFront() = entry %d; want entry %d", got.deliveries, model[0].deliveries)
			}
			model = model[1:]
		}
		check("popFront")
		set := map[*entry]bool{model[1]: true, model[len(model)-1]: true}
		d.removeSet(set)
		model = slices.Delete(model, len(model)-1, len(model))
		model = slices.Delete(model, 1, 2)
		if len(set) != 0 {
			t.Fatalf("removeSet left %d entries in the set", len(set))
		}
		check("removeSet")
	}
}
