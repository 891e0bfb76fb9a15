package consumer

import (
	"errors"
	"testing"
	"unsafe"
)

// Each worker's slot, counters included, fills one cache line, so that
// workers counting their messages never write to a line another uses.
func TestSlotIsOneCacheLine(t *testing.T) {
	if got := unsafe.Sizeof(slot{}); got != 64 {
		t.Errorf("unsafe.Sizeof(slot{}) = %d; want 64", got)
	}
}

// BenchmarkSlotCount is what counting adds to each message on the worker's
// path (Stats): set it against BenchmarkConsumer's ns/msg.
func BenchmarkSlotCount(b *testing.B) {
	var s slot
	for i := 0; b.Loop(); i++ {
		if i&3 == 0 {
			s.counts.count(errBench, SettledRequeue, nil)
		} else {
			s.counts.count(nil, SettledAck, nil)
		}
	}
}

var errBench = errors.New("bench")
