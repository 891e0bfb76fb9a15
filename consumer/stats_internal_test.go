package consumer

import (
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
