package memory

import (
	"strings"
	"testing"
)

func TestMessageID(t *testing.T) {
	long := strings.Repeat("q", 100) // longer than messageID's stack buffer
	for _, c := range []struct {
		queue string
		seq   uint64
		want  string
	}{
		{"orders", 1, "orders-1"},
		{"orders", 18446744073709551615, "orders-18446744073709551615"},
		{long, 42, long + "-42"},
	} {
		if got := messageID(c.queue, c.seq); got != c.want {
			t.Errorf("messageID(%q, %d) = %q; want %q", c.queue, c.seq, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = messageID("orders", 12345) }); n != 1 {
		t.Errorf("messageID allocates %v times; want 1", n)
	}
}
