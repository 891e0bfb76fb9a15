package offsets

import (
	"math/rand/v2"
	"testing"
)

func TestCommittableNeverPassesAnUnhandledOffset(t *testing.T) {
	var tr Tracker
	if _, ok := tr.Committable(); ok {
		t.Fatal("Committable() on an empty tracker reported an offset")
	}
	for _, off := range []int64{10, 11, 13, 14} { // 12 missing: compacted away
		if !tr.Add(off) {
			t.Fatalf("Add(%d) = false; want true", off)
		}
	}
	steps := []struct {
		done int64
		want int64
		ok   bool
	}{
		{11, 0, false}, // 10 still running
		{14, 0, false},
		{10, 12, true}, // 10 and 11 done; 12 does not exist, 13 is next
		{13, 15, true},
	}
	for _, s := range steps {
		if !tr.Done(s.done) {
			t.Fatalf("Done(%d) = false; want true", s.done)
		}
		got, ok := tr.Committable()
		if ok != s.ok || (ok && got != s.want) {
			t.Fatalf("after Done(%d): Committable() = %d, %v; want %d, %v", s.done, got, ok, s.want, s.ok)
		}
	}
	if tr.Done(13) {
		t.Fatal("Done(13) twice = true; want false")
	}
	if tr.Add(14) {
		t.Fatal("Add(14) after 14 was committed = true; want false")
	}
}

func TestRandomCompletionOrderMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var tr Tracker
	const n = 5000
	done := make([]bool, n)
	var inflight []int64
	next := int64(0)
	for next < n || len(inflight) > 0 {
		if next < n && (len(inflight) == 0 || rng.IntN(3) > 0) && len(inflight) < 50 {
			tr.Add(next)
			inflight = append(inflight, next)
			next++
			continue
		}
		i := rng.IntN(len(inflight))
		off := inflight[i]
		inflight = append(inflight[:i], inflight[i+1:]...)
		if !tr.Done(off) {
			t.Fatalf("Done(%d) = false", off)
		}
		done[off] = true
		want := int64(0)
		for want < n && done[want] {
			want++
		}
		got, ok := tr.Committable()
		if want == 0 && ok || want > 0 && (!ok || got != want) {
			t.Fatalf("Committable() = %d, %v; want %d (model)", got, ok, want)
		}
	}
	if tr.Pending() != 0 {
		t.Fatalf("Pending() = %d at end; want 0", tr.Pending())
	}
}
