package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Regression (review 2026-11-23): a handler still running when its generation's drain budget ends was
// fenced but not cancelled, and the partition's next owner handled the same
// record (and the later records of its key) while it still ran. Now the
// delivery is consumer.Leased and the runtime cancels the handler.
func TestHandlerOutlivingTheDrainBudgetIsCancelledAndDoesNotOverlapTheNewOwner(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "rv-fence")
	e.produce(t, topic, 0, 40, func(i int) string { return "k" })
	cfg := e.config(topic, "g-rv-fence")
	cfg.RebalanceDrainTimeout = 300 * time.Millisecond

	var mu sync.Mutex
	running := map[string]int{} // key -> handlers running now
	overlaps := 0
	var slowID string
	cancelledAtFence := make(chan bool, 1)
	var once sync.Once
	h := func(who string) consumer.HandlerFunc {
		return func(ctx context.Context, m *broker.Message) error {
			mu.Lock()
			running[string(m.Key)]++
			if running[string(m.Key)] > 1 {
				overlaps++
				t.Logf("%s: %s (key %q) started while another handler of that key runs", who, m.ID, m.Key)
			}
			mu.Unlock()
			defer func() { mu.Lock(); running[string(m.Key)]--; mu.Unlock() }()
			slow := false
			once.Do(func() { slow = true; slowID = m.ID })
			if slow {
				select {
				case <-ctx.Done():
					cancelledAtFence <- true
				case <-time.After(3 * time.Second):
					cancelledAtFence <- false
				}
			}
			return nil
		}
	}
	a := startMember(t, newSource(t, cfg), h("A"))
	a.abandons = true
	time.Sleep(500 * time.Millisecond)
	b := startMember(t, newSource(t, cfg), h("B"))
	got := <-cancelledAtFence
	b.stop(t)
	a.stop(t)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("slow record %s: ctx cancelled before 3 s = %v; same-key overlaps = %d", slowID, got, overlaps)
	if !got || overlaps > 0 {
		t.Errorf("work outliving the drain budget was not cancelled (%v) / ran concurrently with the new owner's handling of the same key (%d overlaps)", got, overlaps)
	}
}
