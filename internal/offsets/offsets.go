package offsets

import "sort"

// A Tracker tracks the handled offsets of one partition.
// It is not safe for concurrent use: its owner serializes calls.
// The zero value is ready to use and has nothing committable.
type Tracker struct {
	pending []entry // fetched offsets not yet popped, in increasing order; pending[head:] is live
	head    int
	next    int64 // committable offset; -1 (via valid=false) until a prefix was handled
	valid   bool
}

type entry struct {
	off  int64
	done bool
}

// Add records that off was fetched. Offsets must be added in increasing
// order; Add reports false (and ignores off) otherwise.
func (t *Tracker) Add(off int64) bool {
	if n := len(t.pending); n > t.head && t.pending[n-1].off >= off {
		return false
	}
	if t.valid && off < t.next {
		return false
	}
	t.pending = append(t.pending, entry{off: off})
	return true
}

// Done records that off was handled. It reports false if off is not a
// pending offset (never added, or already done).
func (t *Tracker) Done(off int64) bool {
	live := t.pending[t.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].off >= off })
	if i == len(live) || live[i].off != off || live[i].done {
		return false
	}
	live[i].done = true
	for t.head < len(t.pending) && t.pending[t.head].done {
		t.next = t.pending[t.head].off + 1
		t.valid = true
		t.head++
	}
	// Compact so the slice does not grow with the partition's length.
	if t.head == len(t.pending) {
		t.pending, t.head = t.pending[:0], 0
	} else if t.head > 64 && t.head > len(t.pending)/2 {
		n := copy(t.pending, t.pending[t.head:])
		t.pending, t.head = t.pending[:n], 0
	}
	return true
}

// Committable returns the offset to commit — one past the last offset of
// the longest handled prefix — and false when no prefix was handled yet.
func (t *Tracker) Committable() (int64, bool) { return t.next, t.valid }

// Pending returns how many added offsets are not yet part of the handled
// prefix (running, waiting, or handled after a gap).
func (t *Tracker) Pending() int { return len(t.pending) - t.head }
